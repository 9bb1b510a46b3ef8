"""Stage 3's starting point in the pretrained-stages recipe (docs/pretraining.md): the VLM of stage 2 (trained on
scene language) with the SAM3 of stage 1 (trained on concept phrases), as the published model starts from a
pretrained Qwen3-VL and a pretrained SAM3.

    python -m instructsam_tools.stack_stages --vlm-from runs/vlm/final --sam3-from runs/pcs/final \\
        --out runs/instructsam/init

Both are InstructSAM directories of one tiny geometry (stage 1's may be a DIT directory of variant none). The
output is the VLM directory's model and configuration (one-pass mode) with every `sam3.*` weight, detector and
tracker, replaced by the SAM3 directory's; the query bank and projector stay as the VLM directory has them (stage
2 does not train them). The two SAM3s must have the same parameters and shapes; a mismatch is named.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from instructsam.errors import CheckpointError
from instructsam.modeling import InstructSAMModel


def stack_stages(vlm_from: str | Path, sam3_from: str | Path, out: str | Path) -> Path:
    model = InstructSAMModel.from_pretrained(str(vlm_from))
    donor = InstructSAMModel.from_pretrained(str(sam3_from))
    mine, theirs = model.sam3.state_dict(), donor.sam3.state_dict()
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    shapes = sorted(k for k in set(mine) & set(theirs) if mine[k].shape != theirs[k].shape)
    if missing or extra or shapes:
        detail = "; ".join(f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})" for label, keys in
                           (("missing", missing), ("unexpected", extra), ("other shape", shapes)) if keys)
        raise CheckpointError(f"the SAM3 of {str(sam3_from)!r} does not fit the model of {str(vlm_from)!r} (build "
                              f"both stages from one tiny yaml): {detail}")
    model.sam3.load_state_dict(theirs)
    out = Path(out)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm-from", required=True, help="InstructSAM directory whose VLM (and config) is kept")
    parser.add_argument("--sam3-from", required=True, help="InstructSAM directory whose SAM3 weights are taken")
    parser.add_argument("--out", required=True, help="output InstructSAM directory")
    args = parser.parse_args(argv)
    print(stack_stages(args.vlm_from, args.sam3_from, args.out))


if __name__ == "__main__":
    main()
