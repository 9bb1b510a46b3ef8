"""Write evaluation results: JSON, a markdown table, and matplotlib (Agg) plots.

    write_report(out_dir, summary, overlays=[OverlayItem(...)], timeline=video_eval.timeline())
writes metrics.json, metrics.md, per_family.png, overlays.png, timeline.png (the last two only when
given) and returns their paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: robots and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TABLE_METRICS = ("mAP", "AP50", "AP75", "gIoU", "cIoU", "N-acc", "T-acc", "P@0.5", "P@0.7",
                 "P@0.9", "mIoU", "oIoU", "duplicate_rate", "pred_overlap",
                 "J", "F", "J&F", "HOTA", "IDF1", "MOTA", "id_switches")  # the last seven: VideoEvaluator
BAR_METRICS = ("gIoU", "cIoU", "mAP", "T-acc", "N-acc")
TIMELINE_KEYS = ("J", "F", "mean_matched_iou", "num_gt", "num_pred", "id_switches_cum",
                 "latency_ms")


@dataclass
class OverlayItem:
    """One panel of the overlay grid."""

    image: np.ndarray  # (H, W, 3) uint8
    gt_masks: np.ndarray  # (N, H, W) bool
    pred_masks: np.ndarray  # (M, H, W) bool (already score-thresholded)
    title: str = ""


def write_json(summary: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False, allow_nan=False))
    return path


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def markdown_table(summary: dict, title: str = "Evaluation") -> str:
    """Overall metrics and the per-family breakdown as markdown tables (metric values in %)."""
    metrics = [m for m in TABLE_METRICS if m in summary]
    if "num_samples" in summary:
        what = (f"{summary['num_samples']} samples, {summary.get('num_no_target', '?')} without "
                f"target, score threshold {summary.get('score_threshold', '?')}.")
    else:
        what = f"{summary.get('num_frames', '?')} frames."
    lines = [f"## {title}", "", what + " Ratios in %; – = undefined.", "",
             "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
             "| " + " | ".join(_fmt(summary[m]) for m in metrics) + " |"]
    lat = summary.get("latency_ms")
    if lat and lat.get("n"):
        lines += ["", f"Latency over {lat['n']} frames: p50 {lat['p50']:.1f} ms, p95 "
                      f"{lat['p95']:.1f} ms, mean {lat['mean']:.1f} ms, max {lat['max']:.1f} ms."]
    families = summary.get("per_family") or {}
    if families:
        lines += ["", "### Per instruction family", "",
                  "| family | n | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for name, fam in families.items():
            lines.append(f"| {name or '(unset)'} | {fam['num_samples']} | "
                         + " | ".join(_fmt(fam.get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def plot_family_bars(summary: dict, path, metrics=BAR_METRICS, title="Metrics per instruction family") -> Path:
    """Grouped bars: one group per instruction family (or per entry of any {name: metrics} given as
    per_family, e.g. one per ablation run), one bar per metric (undefined = absent)."""
    families = summary.get("per_family") or {"all": summary}
    names = [n or "(unset)" for n in families]
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * len(metrics) / 3), 4))
    for i, m in enumerate(metrics):
        vals = [np.nan if fam.get(m) is None else 100 * fam[m] for fam in families.values()]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(metrics))
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _colours(n: int) -> np.ndarray:
    return (np.asarray(plt.get_cmap("tab10")(np.arange(n) % 10))[:, :3] * 255).astype(np.float32)


def overlay(image: np.ndarray, pred_masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image with each predicted mask blended in its own colour."""
    out = image.astype(np.float32).copy()
    for mask, colour in zip(pred_masks, _colours(len(pred_masks))):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def plot_overlays(items: list[OverlayItem], path, ncols: int = 4) -> Path:
    """Grid of samples: image, predicted masks coloured, gt outlined in white."""
    if not items:
        raise ValueError("plot_overlays: no items to draw")
    ncols = min(ncols, len(items))
    nrows = (len(items) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(overlay(item.image, np.asarray(item.pred_masks, bool)))
        for gt in np.asarray(item.gt_masks, bool):
            if gt.any():
                ax.contour(gt, levels=[0.5], colors="white", linewidths=1.2)
        ax.set_title(f"{item.title}\n{len(item.gt_masks)} gt / {len(item.pred_masks)} pred",
                     fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_timeline(frames: list[dict], path, keys=TIMELINE_KEYS) -> Path:
    """One line plot per key over frame index (VideoEvaluator.timeline() or any list of dicts)."""
    keys = [k for k in keys if any(f.get(k) is not None for f in frames)]
    if not keys:
        raise ValueError("plot_timeline: no plottable values in frames")
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.8 * len(keys)), sharex=True,
                             squeeze=False)
    x = [f.get("frame", i) for i, f in enumerate(frames)]
    for ax, k in zip(axes[:, 0], keys):
        ax.plot(x, [np.nan if f.get(k) is None else f[k] for f in frames], marker=".", lw=1)
        ax.set_ylabel(k, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    return _save(fig, path)


def write_report(out_dir, summary: dict, overlays: list[OverlayItem] | None = None,
                 timeline: list[dict] | None = None, title: str = "Evaluation") -> dict:
    """Write everything that applies into out_dir; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(summary, out / "metrics.json")}
    paths["markdown"] = out / "metrics.md"
    paths["markdown"].write_text(markdown_table(summary, title))
    if "per_family" in summary:
        paths["per_family"] = plot_family_bars(summary, out / "per_family.png")
    if overlays:
        paths["overlays"] = plot_overlays(overlays, out / "overlays.png")
    if timeline:
        paths["timeline"] = plot_timeline(timeline, out / "timeline.png")
    return paths


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
