"""Evaluate an InstructSAM checkpoint on a dataset split: metrics JSON, a markdown table and plots.

    python -m instructsam_tools.evaluation.evaluate --checkpoint DIR --data synthetic:test[:N] --out DIR
    python -m instructsam_tools.evaluation.evaluate --checkpoint DIR --data inst2seg:ROOT:val --out DIR [--batch-size 4]

Each (image, instruction) is one sample. Per batch of images: `encode_image` once, `segment` all their instructions
(prefix reuse), `postprocess` to the original resolution with score threshold 0 (so AP ranks every surviving slot),
then InstanceSetEvaluator applies the model's score threshold for the set metrics (gIoU, cIoU, N-acc, T-acc, P@x,
mIoU, oIoU, duplicate rate). Writes OUT/metrics.json, metrics.md, per_family.png, overlays.png and
per_sample.jsonl. Deterministic: the same checkpoint and data give the same files.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from instructsam_tools.data.format import InstructionSample
from instructsam.outputs import Prediction
from instructsam_tools.data.batching import build_dataset, collate_groups, image_groups
from instructsam_tools.evaluation.instance_set import InstanceSetEvaluator
from instructsam_tools.evaluation.report import OverlayItem, write_report


def limit_groups(groups: list[list[int]], max_samples: int | None) -> list[list[int]]:
    """The leading image groups holding at most max_samples samples (the last group is cut if needed)."""
    if max_samples is None:
        return groups
    out, n = [], 0
    for g in groups:
        if n >= max_samples:
            break
        out.append(g[: max_samples - n])
        n += len(out[-1])
    return out


@torch.no_grad()
def predict_groups(model, dataset, groups: list[list[int]], images_per_batch: int = 4,
                   score_threshold: float = 0.0) -> Iterator[tuple[InstructionSample, Prediction]]:
    """(sample, prediction) for every sample of `groups`, batching `images_per_batch` images at a time."""
    model.eval()
    for start in range(0, len(groups), images_per_batch):
        batch = collate_groups(dataset, groups[start:start + images_per_batch])
        features = model.encode_image(batch.images, tracker=False)
        output = model.segment(features, batch.instructions, image_index=batch.image_index, task=batch.tasks)
        predictions = model.postprocess(output, features.original_sizes, score_threshold=score_threshold)
        yield from zip(batch.samples, predictions)


def overlay_positions(num_samples: int, num_overlays: int) -> set[int]:
    if num_overlays <= 0 or num_samples == 0:
        return set()
    return {int(i) for i in np.linspace(0, num_samples - 1, min(num_overlays, num_samples))}


def score_predictions(pairs, num_samples: int, score_threshold: float, num_overlays: int = 16,
                      per_sample: list | None = None) -> tuple[dict, list[OverlayItem]]:
    """Feed (sample, prediction) pairs to InstanceSetEvaluator; returns the summary (overall + per family) and
    overlay panels for `num_overlays` evenly spaced samples of the `num_samples`. `per_sample`, if given, receives
    one dict per sample (id, family, IoU, predictions kept, top score)."""
    wanted = overlay_positions(num_samples, num_overlays)
    evaluator = InstanceSetEvaluator(score_threshold=score_threshold)
    overlays: list[OverlayItem] = []
    start = time.perf_counter()
    for i, (sample, pred) in enumerate(pairs):
        result = evaluator.add(sample.instruction_id, sample.masks, pred, family=sample.family)
        if per_sample is not None:
            per_sample.append({"id": sample.instruction_id, "image_id": sample.image_id, "family": sample.family,
                               "text": sample.text, "num_targets": len(sample.masks), "iou": result.iou,
                               "num_kept": result.num_kept, "pred_empty": result.pred_empty,
                               "top_score": float(pred.scores.max()) if len(pred) else 0.0})
        if i in wanted:
            kept = pred.masks[pred.scores >= score_threshold]
            overlays.append(OverlayItem(image=sample.image, gt_masks=sample.masks, pred_masks=kept,
                                        title=f"[{sample.family}] {sample.text}"[:60]))
    seconds = time.perf_counter() - start
    summary = evaluator.summarize()
    summary["timing"] = {"seconds": seconds, "samples_per_s": len(evaluator.results) / max(seconds, 1e-9)}
    return summary, overlays


TARGET_SUBSETS = ("all", "single", "multi")


def evaluate_model(model, dataset, max_samples: int | None = None, images_per_batch: int = 4,
                   score_threshold: float | None = None, num_overlays: int = 16,
                   per_sample: list | None = None, targets: str = "all") -> tuple[dict, list[OverlayItem]]:
    """Run the model over (the first max_samples of) the dataset and score it (see score_predictions). The set
    metrics use `score_threshold` (default: the model config's). targets: "single" scores only the samples with
    exactly one target (the referring setting DIT's P@x / oIoU / mIoU come from), "multi" the others (none or
    several: the instance-set setting), "all" every sample."""
    if targets not in TARGET_SUBSETS:
        raise ValueError(f"targets must be one of {TARGET_SUBSETS}, got {targets!r}")
    threshold = model.config.score_threshold if score_threshold is None else score_threshold
    groups = limit_groups(image_groups(dataset), max_samples)
    pairs = predict_groups(model, dataset, groups, images_per_batch)
    if targets != "all":
        pairs = ((s, p) for s, p in pairs if (len(s.masks) == 1) == (targets == "single"))
    return score_predictions(pairs, sum(len(g) for g in groups), threshold, num_overlays, per_sample)


def load_model(path: str | Path, device: str = "cpu"):
    """An InstructSAM directory, or a training step checkpoint (rebuilt with its run's base model)."""
    from instructsam_tools.training.step_checkpoints import is_step_checkpoint

    if is_step_checkpoint(path):
        from instructsam_tools.training.model_build import load_step_model

        return load_step_model(path, device)
    from instructsam.loading import load_model as load

    return load(path, device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.evaluation.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="InstructSAM directory (InstructSAMModel.from_pretrained), or a training step checkpoint "
                             "(OUTPUT/checkpoints/step_N)")
    parser.add_argument("--data", required=True, help="synthetic:SPLIT[:N] or inst2seg:DIR[:SPLIT]")
    parser.add_argument("--out", required=True, help="output directory for metrics.json/.md and plots")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (each with all its instructions)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="score threshold for the set metrics (default: the model config's)")
    parser.add_argument("--image-size", type=int, default=128, help="synthetic image size (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed (default 0)")
    parser.add_argument("--num-overlays", type=int, default=16, help="panels in overlays.png (0 = none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--title", default=None, help="title of the markdown report")
    parser.add_argument("--targets", choices=TARGET_SUBSETS, default="all",
                        help="score only samples with exactly one target (single), the others (multi), or all")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = build_dataset(args.data, image_size=args.image_size, seed=args.seed)
    model = load_model(args.checkpoint, args.device)
    per_sample: list[dict] = []
    summary, overlays = evaluate_model(model, dataset, args.max_samples, args.batch_size, args.score_threshold,
                                       args.num_overlays, per_sample, args.targets)
    summary["run"] = {"checkpoint": str(args.checkpoint), "data": args.data, "batch_size": args.batch_size,
                      "max_samples": args.max_samples, "targets": args.targets}
    out = Path(args.out)
    paths = write_report(out, summary, overlays, title=args.title or f"{Path(args.checkpoint).name} on {args.data}")
    with open(out / "per_sample.jsonl", "w") as f:
        for row in per_sample:
            f.write(json.dumps(row) + "\n")
    paths["per_sample"] = out / "per_sample.jsonl"
    headline = {k: summary.get(k) for k in ("mAP", "AP50", "AP75", "gIoU", "cIoU", "N-acc", "T-acc")}
    print(json.dumps({"metrics": headline, "files": {k: str(v) for k, v in paths.items()}}))
    return summary


if __name__ == "__main__":
    main()
