"""Training: Hungarian matcher, set criterion, data batching, exact-resume checkpoints and the DDP-ready loop.

    python -m instructsam_tools.training.train --config config/train_tiny.yaml [--resume PATH|latest] [key=value ...]

matcher.HungarianMatcher, criterion.SetCriterion, trainer.train / train_one_epoch, config.load_config,
data.build_dataset / image_groups / epoch_batches, checkpointing.save_checkpoint / load_checkpoint.
"""
