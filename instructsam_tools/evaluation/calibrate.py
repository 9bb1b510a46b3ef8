"""Choose a checkpoint's post-process defaults on a validation split and write them into its config.

    python -m instructsam_tools.evaluation.calibrate --checkpoint DIR --data synthetic:val:200 [--write]

Sweeps the score threshold (and cropping masks to their boxes), scores each setting with the same metrics as
`instructsam_tools.evaluation.evaluate`, and picks the highest gIoU (ties: mAP). Selection uses the validation split
only; report test metrics from a separate `evaluate` run afterwards.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from instructsam_tools.data.batching import build_dataset, image_groups
from instructsam_tools.evaluation.evaluate import limit_groups, load_model, predict_groups, score_predictions

THRESHOLDS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def calibrate(model, dataset, max_samples: int | None = None, thresholds=THRESHOLDS) -> tuple[dict, list[dict]]:
    """Returns (best setting, table of every setting with its gIoU / mAP / N-acc / T-acc)."""
    groups = limit_groups(image_groups(dataset), max_samples)
    num = sum(len(g) for g in groups)
    table = []
    for crop in (False, True):
        model.config.crop_masks_to_boxes = crop
        pairs = list(predict_groups(model, dataset, groups))  # score threshold 0: the evaluator applies each one
        for t in thresholds:
            summary, _ = score_predictions(pairs, num, t, num_overlays=0)
            table.append({"score_threshold": t, "crop_masks_to_boxes": crop,
                          **{k: summary[k] for k in ("gIoU", "mAP", "N-acc", "T-acc")}})
    best = max(table, key=lambda r: (r["gIoU"] or 0.0, r["mAP"] or 0.0))
    return best, table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="InstructSAM directory")
    parser.add_argument("--data", required=True, help="validation data: synthetic:val[:N] or inst2seg:DIR[:SPLIT]")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="save the chosen defaults into the checkpoint config")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint).eval()
    best, table = calibrate(model, build_dataset(args.data), args.max_samples)
    for row in table:
        print(json.dumps(row))
    print("chosen:", json.dumps(best))
    if args.write:
        model.config.score_threshold = best["score_threshold"]
        model.config.crop_masks_to_boxes = best["crop_masks_to_boxes"]
        model.config.save_pretrained(Path(args.checkpoint))
    return best


if __name__ == "__main__":
    main()
