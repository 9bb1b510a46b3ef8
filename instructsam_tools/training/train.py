"""Train InstructSAM: one command, single process or DDP.

    python -m instructsam_tools.training.train --config config/train_tiny.yaml [--resume PATH|latest] [key.sub=value ...]
    torchrun --nproc_per_node 8 -m instructsam_tools.training.train --config config/train_full.yaml

Overrides use the YAML's keys, e.g. `train.max_steps=200 data.images_per_batch=2 output_dir=runs/try`.
Outputs in `output_dir`: metrics.jsonl (losses, LR, grad norm, samples/s, evaluations), checkpoints/step_*/
(exact-resume checkpoints), final/ (the trained model, loadable with InstructSAMModel.from_pretrained),
train_config.yaml (the resolved config).
"""
from __future__ import annotations

import argparse
import json
import sys

from instructsam.errors import CheckpointError
from instructsam_tools.training.train_config import load_config
from instructsam_tools.training.model_build import cleanup_distributed
from instructsam_tools.training.trainer import train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training YAML, e.g. config/train_tiny.yaml")
    parser.add_argument("--resume", default=None,
                        help="a checkpoint directory (OUTPUT/checkpoints/step_N) or 'latest' (fresh start if none)")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (with a checkpoint) after this many steps, without changing the LR schedule")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    try:
        result = train(config, resume=args.resume, stop_at_step=args.stop_at_step)
    finally:
        cleanup_distributed()
    print(json.dumps(result))
    return result


def cli() -> int:
    """main() for the shell: a bad config or checkpoint is one line naming it (exit 2), not a traceback."""
    try:
        main()
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
