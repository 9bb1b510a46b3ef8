"""Convert the published InstructSAM-2B checkpoint (+ a facebook/sam3 directory) into one InstructSAM directory in
reference mode, which the node, bag_eval and evaluate load like any other (`checkpoint:=OUT`).

    python -m instructsam_tools.convert_official --official DIR [--sam3 DIR] --out DIR [--dtype bfloat16]

Converting is optional: `checkpoint:=` pointed at the official directory itself loads it the same way (the layout
is recognised), reading facebook/sam3 from `sam3_checkpoint` or the path its config names. The official tokenizer
(with its chat template), generation config and image-processor config are kept beside the weights.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from instructsam.errors import CheckpointError
from instructsam.official_checkpoint import load_official

KEPT_FILES = ("generation_config.json", "preprocessor_config.json", "chat_template.json", "chat_template.jinja")


def convert(official: str | Path, out: str | Path, sam3: str | Path | None = None,
            dtype: torch.dtype = torch.float32) -> Path:
    model = load_official(official, sam3, dtype)
    out = Path(out)
    model.save_pretrained(out)
    for name in KEPT_FILES:
        if (Path(official) / name).is_file():
            shutil.copy2(Path(official) / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.convert_official",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="the InstructSAM-2B directory (CircleRadon/InstructSAM-2B)")
    parser.add_argument("--sam3", help="a facebook/sam3 directory (default: the one the official config names)")
    parser.add_argument("--out", required=True, help="the InstructSAM directory to write")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    try:
        print(convert(args.official, args.out, args.sam3, getattr(torch, args.dtype)))
    except (CheckpointError, FileNotFoundError) as err:
        print(f"convert_official: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
