"""Turn a training step checkpoint (OUTPUT/checkpoints/step_N: trainable weights only) into a complete InstructSAM
directory that the node, `evaluate` and `calibrate` load like any other checkpoint.

    python -m instructsam_tools.training.export OUTPUT/checkpoints/step_0001500 OUT_DIR
"""
from __future__ import annotations

import argparse

from instructsam_tools.training.model_build import load_step_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step_checkpoint", help="OUTPUT/checkpoints/step_N of a training run")
    parser.add_argument("out_dir", help="where to write the InstructSAM directory (weights, config, tokenizer)")
    args = parser.parse_args(argv)
    load_step_model(args.step_checkpoint).save_pretrained(args.out_dir)
    print(args.out_dir)


if __name__ == "__main__":
    main()
