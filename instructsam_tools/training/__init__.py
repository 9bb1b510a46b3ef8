"""Training: the same InstructSAMModel the node runs, trained with Hungarian set matching (or, objective: tracking,
SAM3's tracker on synthetic clips), DDP-ready, with exact resume.

    python -m instructsam_tools.training.train --config config/train_tiny.yaml [--resume PATH|latest] [key=value ...]

    train.py / trainer.py     the command and the loop (train, train_one_epoch)
    train_config.py           the YAML config (load_config, key=value overrides)
    matcher.py, criterion.py  HungarianMatcher and SetCriterion; denoising.py: the DN queries' targets
    tracker_objective.py      the tracking objective
    model_build.py            building the model to train, loading step checkpoints, distributed helpers
    step_checkpoints.py       step checkpoints (save_checkpoint / load_checkpoint), state_file.py: no pickle
    export.py                 a step checkpoint -> an InstructSAM directory the node loads
"""
