"""Score bag records and write the report. Metrics are computed once, from the records alone, in a fixed order
(bags sorted by name, frames in recorded order), so one bag after another, parallel workers, and shards merged from
other machines give the same numbers.

Per processed frame with ground truth, one sample (bag, camera, frame, instruction):
    InstanceSetEvaluator   mAP/AP50/AP75, gIoU, cIoU, N-acc, T-acc, P@x, mIoU, oIoU, per instruction family. Every
                           instance the pipeline reported with a mask on that frame counts as a prediction (the
                           pipeline already applied its score threshold; tracked scores may be lower), so the
                           set metrics use score threshold 0; AP ranks them by score.
Per sequence (bag, camera, instruction id):
    VideoEvaluator         DAVIS J&F (region and contour accuracy); HOTA, IDF1 and CLEAR-MOT from TrackEval.
Track ids are renamed per sequence in order of first appearance before scoring, so metrics never depend on how
ids are spelled (the live node and a replay may number them differently). Lost instances (no mask) are not
predictions. Latency and processing time: over every processed frame (with or without ground truth); they are the
only numbers that differ between two runs of the same evaluation (see TIMING_KEYS).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instructsam_tools.evaluation.instance_set import InstanceSetEvaluator
from instructsam_tools.evaluation.report import markdown_table, plot_family_bars, plot_timeline, write_json
from instructsam_tools.evaluation.video import VideoEvaluator, latency_stats, summarize_sequences
from instructsam.outputs import Prediction
from instructsam_ros.bags.records import DROPPED, FAILED, NO_INSTRUCTION, PROCESSED, BagRecords, decode_rle

TIMING_KEYS = ("latency_ms", "processing_ms", "wall_seconds")  # measured, so they differ between runs
TIMELINE_PLOT_KEYS = ("iou", "J", "F", "num_gt", "num_pred", "id_switches_cum", "latency_ms")
VIDEO_KEYS = ("J", "F", "J&F", "HOTA", "DetA", "AssA", "LocA", "IDF1", "MOTA", "MOTP", "id_switches", "num_gt",
              "matches", "misses", "false_positives")


def order_bags(bags: list[BagRecords]) -> list[BagRecords]:
    names = [b.name for b in bags]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two bags share the name(s) {dupes}; bag names (directory names) must be unique in one "
                         f"report: {[b.bag for b in bags if b.name in dupes]}")
    differ = [b.name for b in bags if b.settings != bags[0].settings]
    if differ:  # e.g. shards run with different parameters: one report would mix two systems
        raise ValueError(f"bags {differ} were evaluated with other pipeline settings than {bags[0].name!r}; one "
                         f"report needs one set of settings")
    return sorted(bags, key=lambda b: b.name)


def status_line(skipped: int) -> str:
    return f"completed, {skipped} skipped"


def score(bags: list[BagRecords]) -> tuple[dict, list[dict]]:
    """(summary, timeline) for the records of one or more bags."""
    bags = order_bags(bags)
    instance_eval = InstanceSetEvaluator(score_threshold=0.0)
    videos: dict[str, VideoEvaluator] = {}
    renames: dict[str, dict[str, str]] = {}
    timeline: list[dict] = []
    video_rows: list[tuple[int, str, int]] = []  # (timeline row, sequence, frame in sequence)
    latencies, processing = [], []
    for bag in bags:
        for f in bag.frames:
            if f.status != PROCESSED:
                continue
            latencies.append(f.latency_ms)
            processing.append(f.processing_ms)
            visible = f.visible()
            row = {"frame": len(timeline), "bag": bag.name, "camera": f.camera, "stamp_ns": f.stamp_ns,
                   "instruction_id": f.instruction_id, "keyframe": f.keyframe, "num_pred": len(visible),
                   "latency_ms": f.latency_ms, "processing_ms": f.processing_ms}
            timeline.append(row)
            if f.gt is None:
                continue
            h, w = f.height, f.width
            pred = (np.stack([decode_rle(i.rle, h, w) for i in visible]) if visible
                    else np.zeros((0, h, w), dtype=bool))
            gt = (np.stack([decode_rle(t.rle, h, w) for t in f.gt.targets]) if f.gt.targets
                  else np.zeros((0, h, w), dtype=bool))
            scores = np.array([i.score for i in visible], dtype=np.float64)
            sample = f"{bag.name}|{f.camera}|{f.stamp_ns}|{f.instruction_id}|{f.seq}"
            result = instance_eval.add(sample, gt, Prediction(pred, scores, np.zeros((len(visible), 4))),
                                       family=f.gt.family)
            row.update(iou=result.iou, num_gt=len(gt))
            key = f"{bag.name}/{f.camera}/{f.instruction_id}"
            video = videos.setdefault(key, VideoEvaluator())
            names = renames.setdefault(key, {})
            for i in visible:
                names.setdefault(i.id, f"t{len(names) + 1}")
            entry = video.add_frame({t.object_id: m for t, m in zip(f.gt.targets, gt)},
                                    {names[i.id]: m for i, m in zip(visible, pred)}, f.latency_ms)
            video_rows.append((row["frame"], key, entry["frame"]))

    summary: dict = {}
    if instance_eval.results:
        summary.update(instance_eval.summarize())
    if videos:
        seq = summarize_sequences(videos)
        for key, s in seq["per_sequence"].items():  # show the tracks under their reported ids
            back = {v: k for k, v in renames[key].items()}
            for obj in s["per_object"].values():
                obj["track"] = back.get(obj["track"], obj["track"])
            s.pop("latency_ms", None)
        summary.update({k: seq[k] for k in VIDEO_KEYS})
        summary["per_sequence"] = seq["per_sequence"]
        timelines = {key: v.timeline() for key, v in videos.items()}
        for row, key, i in video_rows:
            entry = timelines[key][i]
            timeline[row].update(J=entry["J"], F=entry["F"], id_switches=entry["id_switches"],
                                 mean_matched_iou=entry["mean_matched_iou"])
        cumulative = 0
        for row in timeline:
            cumulative += row.get("id_switches", 0)
            row["id_switches_cum"] = cumulative
    skipped = [s for b in bags for s in b.skipped]
    counts = {k: sum(b.counts()[k] for b in bags) for k in ("frames", PROCESSED, DROPPED, NO_INSTRUCTION, FAILED)}
    summary.update(
        status=status_line(len(skipped)), num_bags=len(bags), num_frames=counts[PROCESSED],
        frames=counts, scored_frames=len(instance_eval.results), skipped=len(skipped),
        keyframes=sum(1 for row in timeline if row["keyframe"]),
        latency_ms=latency_stats(latencies), processing_ms=latency_stats(processing),
        wall_seconds=float(sum(b.wall_seconds for b in bags)),
        per_bag={b.name: {"bag": b.bag, "storage": b.storage, "cameras": b.cameras, "timing": b.timing,
                          "instructions": b.instructions_from, "ground_truth": b.ground_truth,
                          "output_bag": b.output_bag, "ignored_topics": len(b.ignored_topics), **b.counts(),
                          "wall_seconds": b.wall_seconds} for b in bags},
        skipped_messages=[{"bag": s.bag, "topic": s.topic, "log_time_ns": s.log_time_ns, "stamp_ns": s.stamp_ns,
                           "reason": s.reason} for s in skipped],
        settings=bags[0].settings if bags else {})
    return summary, timeline


def strip_timing(obj):
    """The summary (or timeline) without measured times: what must be equal between two runs of the same
    evaluation (sequential vs parallel, here vs merged shards)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def _ms(stats: dict) -> str:
    if not stats or not stats.get("n"):
        return "–"
    return (f"p50 {stats['p50']:.1f} ms, p95 {stats['p95']:.1f} ms, mean {stats['mean']:.1f} ms, "
            f"max {stats['max']:.1f} ms")


def markdown_report(summary: dict, title: str = "Bag evaluation") -> str:
    frames = summary["frames"]
    lines = [f"# {title}", "", f"**{summary['status']}** — {summary['num_bags']} bag(s), {frames['frames']} image "
             f"frames: {frames[PROCESSED]} processed, {frames[DROPPED]} dropped, {frames[NO_INSTRUCTION]} without "
             f"instruction, {frames[FAILED]} failed; {summary['scored_frames']} scored against ground truth; "
             f"{summary['keyframes']} keyframes.", "",
             f"Latency (receipt to result): {_ms(summary['latency_ms'])}.  ",
             f"Processing (model work per frame): {_ms(summary['processing_ms'])}.", ""]
    if summary["scored_frames"]:
        table = {k: v for k, v in summary.items() if k != "latency_ms"}  # latency is reported above
        lines.append(markdown_table(table, "Metrics (per frame: instance set; per sequence: J&F, IDs)"))
        seqs = summary.get("per_sequence") or {}
        if seqs:
            lines += ["### Per sequence (bag/camera/instruction)", "",
                      "J, F: DAVIS; HOTA (DetA, AssA, LocA), IDF1, MOTA: TrackEval on mask IoU.", "",
                      "| sequence | frames | J | F | J&F | HOTA | DetA | AssA | LocA | IDF1 | MOTA | ID sw. |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for key, s in seqs.items():
                cells = " | ".join("–" if s[k] is None else f"{100 * s[k]:.1f}"
                                   for k in ("J", "F", "J&F", "HOTA", "DetA", "AssA", "LocA", "IDF1", "MOTA"))
                lines.append(f"| {key} | {s['num_frames']} | {cells} | {s['id_switches']} |")
            lines.append("")
    else:
        lines += ["No frame had ground truth: only counts and timing are reported.", ""]
    lines += ["## Bags", "",
              "| bag | storage | cameras | frames | processed | dropped | no instr. | failed | skipped |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, b in summary["per_bag"].items():
        cams = ", ".join(f"{c} ({t})" for c, t in b["cameras"].items())
        lines.append(f"| {name} | {b['storage']} | {cams} | {b['frames']} | {b[PROCESSED]} | {b[DROPPED]} | "
                     f"{b[NO_INSTRUCTION]} | {b[FAILED]} | {b['skipped']} |")
    lines.append("")
    if summary["skipped_messages"]:
        lines += ["## Skipped messages", "", "| bag | topic | log time (ns) | header stamp (ns) | reason |",
                  "|---|---|---|---|---|"]
        for s in summary["skipped_messages"]:
            reason = s["reason"].replace("|", "\\|")
            stamp = "?" if s["stamp_ns"] is None else s["stamp_ns"]
            lines.append(f"| {s['bag']} | {s['topic']} | {s['log_time_ns']} | {stamp} | {reason} |")
        lines.append("")
    return "\n".join(lines)


def write_bag_report(out_dir, summary: dict, timeline: list[dict], title: str = "Bag evaluation") -> dict:
    """metrics.json, metrics.md, timeline.json and the plots (timeline.png: metrics over time; per_family.png)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(summary, out / "metrics.json")}
    paths["markdown"] = out / "metrics.md"
    paths["markdown"].write_text(markdown_report(summary, title))
    paths["timeline_json"] = out / "timeline.json"
    paths["timeline_json"].write_text(json.dumps(timeline, indent=1, allow_nan=False))
    if timeline and any(row.get(k) is not None for row in timeline for k in TIMELINE_PLOT_KEYS):
        paths["timeline"] = plot_timeline(timeline, out / "timeline.png", keys=TIMELINE_PLOT_KEYS)
    if summary.get("per_family"):
        paths["per_family"] = plot_family_bars(summary, out / "per_family.png")
    return paths


__all__ = ["TIMING_KEYS", "score", "strip_timing", "status_line", "markdown_report", "write_bag_report",
           "order_bags"]
