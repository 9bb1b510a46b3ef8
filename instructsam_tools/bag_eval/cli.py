"""bag_eval: replay rosbag2 recordings through the node's frame pipeline, write the results, score them.

    python -m instructsam_tools.bag_eval run BAG [BAG ...] --checkpoint DIR --out DIR [options]
    python -m instructsam_tools.bag_eval merge RECORDS [RECORDS ...] --out DIR
    python -m instructsam_tools.bag_eval make-synthetic --out DIR [--storage sqlite3|mcap] [--compressed] ...

No rclpy needed: bags are read and written with rosbags, the message definitions come from msg/.
Exit status: 0 when the run completed, also when messages were skipped (the summary says "completed, N skipped";
with --strict, 1 when anything was skipped); 2 when it could not complete (unreadable bag, bad ground truth or
schedule, missing checkpoint): the error names the file. See docs/bag_evaluation.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import yaml

EXIT_OK, EXIT_SKIPPED_STRICT, EXIT_ERROR = 0, 1, 2


def _pipeline_fields() -> dict:
    from instructsam.pipeline.frame_pipeline import PipelineSettings
    return {f.name: f for f in dataclasses.fields(PipelineSettings)}


def node_params(path: str) -> dict:
    """The ros__parameters of a node parameter file (config/instructsam.yaml layout), nested keys flattened."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"parameter file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    params = None
    for value in (data.values() if isinstance(data, dict) else []):
        if isinstance(value, dict) and "ros__parameters" in value:
            params = value["ros__parameters"]
            break
    if params is None:
        raise ValueError(f"{p}: no 'ros__parameters' section (expected the node's parameter file layout)")

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    return dict(flat(params))


def parse_set(items: list[str]) -> dict:
    fields = _pipeline_fields()
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        out[key] = yaml.safe_load(value)
    return out


def parse_topics(items: list[str] | None):
    if not items:
        return None
    topics = {}
    for item in items:
        topic, _, camera = item.partition("=")
        topics[topic] = camera
    return topics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bag_eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="replay bags through the frame pipeline, write results and a report")
    run.add_argument("bags", nargs="+", help="rosbag2 directories (sqlite3 or mcap)")
    run.add_argument("--out", required=True, help="report directory (metrics.json/.md, plots, records/, bags/)")
    run.add_argument("--checkpoint", help="InstructSAM checkpoint directory (default: the --params file's)")
    run.add_argument("--params", help="node parameter file (config/instructsam.yaml): pipeline settings and "
                                      "checkpoint, exactly as the node would use them")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override a pipeline setting (keyframe_interval, score_threshold, ...)")
    run.add_argument("--topic", action="append", metavar="TOPIC[=CAMERA]",
                     help="camera topic to replay (repeatable; default: every Image/CompressedImage topic)")
    ins = run.add_argument_group("instructions (default: <bag>.instructions.yaml next to each bag)")
    ins.add_argument("--instructions", help="timed instruction schedule (YAML) for every bag")
    ins.add_argument("--instruction", help="one instruction for every camera from the first frame")
    ins.add_argument("--task", default="", help="task template for --instruction")
    ins.add_argument("--instruction-topic", help="apply the instructsam_ros/Instruction (or std_msgs/String) "
                                                 "messages recorded on this topic")
    run.add_argument("--gt", help="ground-truth JSON (one bag only; default: <bag>.gt.json next to each bag)")
    run.add_argument("--no-gt", action="store_true", help="do not score, even if <bag>.gt.json exists")
    run.add_argument("--timing", choices=("fast", "recorded"), default="fast",
                     help="fast: process every frame; recorded: honour recorded gaps, drop frames like the node")
    run.add_argument("--rate", type=float, default=1.0, help="recorded timing: playback speed factor")
    run.add_argument("--write-bags", action="store_true", help="write OUT/bags/<bag>_instances (InstanceMaskArray)")
    run.add_argument("--overlay", action="store_true", help="also write /<camera>/overlay images into them")
    run.add_argument("--output-storage", choices=("sqlite3", "mcap"), help="default: the input bag's")
    run.add_argument("--workers", type=int, default=1, help="parallel worker processes (one bag per task)")
    run.add_argument("--threads", type=int, default=1, help="torch threads per process (same in every mode)")
    ray = run.add_argument_group("a Ray cluster (pip install ray; docs/bag_evaluation.md)")
    ray.add_argument("--ray", metavar="ADDRESS|auto",
                     help="run one task per bag on the Ray cluster at ADDRESS (host:port of its head, or 'auto'), "
                          "each worker loading the model once; records come back here")
    ray.add_argument("--ray-workers", type=int, default=0,
                     help="worker actors (default: the cluster's CPUs / --threads)")
    ray.add_argument("--retries", type=int, default=2,
                     help="times a bag is retried when its worker or node dies (default 2)")
    ray.add_argument("--skip-failed", action="store_true",
                     help="report a bag whose task failed and go on (default: stop the run naming it)")
    run.add_argument("--sam3", help="facebook/sam3 directory, for a checkpoint in the published InstructSAM-2B "
                                    "layout (default: the --params file's sam3_checkpoint, else its config's)")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    run.add_argument("--max-image-pixels", type=int, help="refuse larger images (default: the node's)")
    run.add_argument("--shard", metavar="K/N|env",
                     help="evaluate only shard K of N of the bags (sorted by name): K/N, or 'env' for torchrun's "
                          "RANK/WORLD_SIZE; with --records-only, then `merge` the shards' records")
    run.add_argument("--records-only", action="store_true",
                     help="write OUT/records/<bag>.records.json only (shards; `merge` makes the report)")
    run.add_argument("--overwrite", action="store_true",
                     help="recompute every bag (default: a re-run into the same --out reuses the records of bags "
                          "that finished with the same settings, and refuses records from other settings)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--strict", action="store_true", help="exit 1 when any message was skipped")

    merge = sub.add_parser("merge", help="one report from records files (e.g. shards from several machines)")
    merge.add_argument("records", nargs="+", help="*.records.json files, or directories holding them")
    merge.add_argument("--out", required=True)
    merge.add_argument("--strict", action="store_true")

    syn = sub.add_parser("make-synthetic", help="write synthetic bags with ground truth and instruction schedules")
    syn.add_argument("--out", required=True)
    syn.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    syn.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage instead of Image")
    syn.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="compressed image format")
    syn.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8", help="raw image encoding")
    syn.add_argument("--videos", type=int, default=1, help="number of bags (one synthetic video per camera each)")
    syn.add_argument("--cameras", type=int, default=1, help="cameras (videos) per bag")
    syn.add_argument("--frames", type=int, default=12)
    syn.add_argument("--size", type=int, default=64, help="image size (square)")
    syn.add_argument("--max-objects", type=int, default=4)
    syn.add_argument("--fps", type=float, default=10.0)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--instruction-topic", help="also record the instructions on this topic")
    return parser


def _settings_and_checkpoint(args):
    from instructsam.loading import resolve_checkpoint
    from instructsam.pipeline.frame_pipeline import PipelineSettings
    from instructsam.pipeline.image_decode import DEFAULT_MAX_PIXELS

    fields = _pipeline_fields()
    values, checkpoint, max_pixels = {}, args.checkpoint, args.max_image_pixels
    if args.params:
        params = node_params(args.params)
        values = {k: v for k, v in params.items() if k in fields}
        checkpoint = checkpoint or params.get("checkpoint")
        max_pixels = max_pixels or params.get("max_image_pixels")
        args.sam3 = args.sam3 or params.get("sam3_checkpoint") or None
    values.update(parse_set(args.set))
    if not checkpoint:
        raise ValueError("no checkpoint: give --checkpoint DIR (or --params FILE with a 'checkpoint' parameter)")
    return PipelineSettings(**values), str(resolve_checkpoint(checkpoint)), int(max_pixels or DEFAULT_MAX_PIXELS)


def cmd_run(args) -> int:
    from instructsam_ros.bags.replay import ReplayOptions
    from instructsam_tools.bag_eval.runner import ModelSpec, default_job, evaluate_bags
    from instructsam_ros.bags.schedule import InstructionSchedule

    if args.gt and len(args.bags) > 1:
        raise ValueError("--gt names one ground-truth file, but several bags were given: put <bag>.gt.json next to "
                         "each bag instead")
    if args.instructions and args.instruction:
        raise ValueError("give either --instructions FILE or --instruction TEXT, not both")
    settings, checkpoint, max_pixels = _settings_and_checkpoint(args)
    out = Path(args.out)
    schedule = (InstructionSchedule.load(args.instructions) if args.instructions else
                InstructionSchedule.constant(args.instruction, task=args.task) if args.instruction else None)
    explicit = schedule is not None or args.instruction_topic is not None
    jobs = [default_job(bag, out, args.write_bags, schedule=schedule, ground_truth=args.gt,
                        schedule_sidecar=not explicit, gt_sidecar=not args.no_gt) for bag in args.bags]
    for job in jobs:
        if job.schedule is None and args.instruction_topic is None:
            raise ValueError(f"no instructions for bag {job.bag}: give --instructions FILE, --instruction TEXT or "
                             f"--instruction-topic TOPIC, or put {Path(job.bag).name}.instructions.yaml next to it")
        if args.no_gt:
            job.ground_truth = None
    unique_names(jobs, out if args.write_bags else None)
    if args.shard:
        jobs = select_shard(jobs, args.shard)
        if not jobs:
            print(f"bag_eval: shard {args.shard} has no bags (fewer bags than shards)")
            return EXIT_OK
    options = ReplayOptions(topics=parse_topics(args.topic), instruction_topic=args.instruction_topic,
                            timing=args.timing, rate=args.rate, max_pixels=max_pixels,
                            output_storage=args.output_storage, overlay=args.overlay, progress=not args.no_progress)
    from instructsam.checkpoint import weights_fingerprint

    weights = weights_fingerprint(checkpoint)  # once per run: without recorded hashes it reads every weight byte
    keys = {job.name: run_key(job, args, settings, checkpoint, weights, max_pixels) for job in jobs}
    reused = reusable_records(jobs, out, keys, args.overwrite, args.write_bags)
    todo = [job for job in jobs if job.name not in reused]
    preflight(todo, options)
    spec = ModelSpec(checkpoint=checkpoint, device=args.device, dtype=args.dtype, threads=args.threads,
                     sam3=args.sam3)

    def save(records) -> None:  # as each bag finishes: an interrupted run keeps what it finished
        records.run_key = keys[records.name]
        records.save(records_path(out, records.name))

    failures: list[str] = []
    if args.ray:
        from instructsam_tools.bag_eval.ray_runner import evaluate_bags_ray
        done, failures = evaluate_bags_ray(todo, spec, settings, options, args.ray, actors=args.ray_workers,
                                           retries=args.retries, skip_failed=args.skip_failed, on_done=save) \
            if todo else ([], [])
    else:
        done = evaluate_bags(todo, spec, settings, options, workers=args.workers, on_done=save)
    fresh = {r.name: r for r in done}
    for message in failures:
        print(f"bag_eval: skipped: {message}", file=sys.stderr)
    if reused:
        print(f"bag_eval: {len(reused)} of {len(jobs)} bag(s) reused from {out / 'records'} (finished earlier with "
              f"the same settings; --overwrite recomputes them)")
    found = {**fresh, **reused}  # a bag skipped after failing has neither
    records = [found[job.name] for job in jobs if job.name in found]
    code = report(records, out, args.strict, write=not args.records_only, reused=len(reused),
                  failed=len(failures))
    return EXIT_SKIPPED_STRICT if failures and args.strict else code


def records_path(out: Path, name: str) -> Path:
    return out / "records" / f"{name}.records.json"


def run_key(job, args, settings, checkpoint: str, weights: dict, max_pixels: int) -> dict:
    """Everything that decides a bag's records (`weights`: checkpoint.weights_fingerprint); a re-run reuses records
    only when this is equal (as JSON)."""
    import json

    key = {
        "bag": str(Path(job.bag).resolve()), "checkpoint": str(Path(checkpoint).resolve()),
        "weights": weights, "settings": dataclasses.asdict(settings),
        "schedule": [dataclasses.asdict(e) for e in job.schedule.entries] if job.schedule is not None else None,
        "ground_truth": str(Path(job.ground_truth).resolve()) if job.ground_truth else None,
        "topics": args.topic, "instruction_topic": args.instruction_topic, "timing": args.timing,
        "rate": args.rate, "max_pixels": max_pixels, "device": args.device, "dtype": args.dtype,
        "output_bag": job.output_bag is not None, "overlay": args.overlay, "output_storage": args.output_storage,
    }
    return json.loads(json.dumps(key))


def reusable_records(jobs: list, out: Path, keys: dict, overwrite: bool, write_bags: bool) -> dict:
    """Records of bags an earlier run into `out` finished with the same run key (name -> BagRecords). What an
    interrupted run left unfinished (an output bag without its records) is removed so it can be written again;
    records from a different configuration are refused unless `overwrite`."""
    import shutil

    from instructsam_ros.bags.records import BagRecords

    reused = {}
    for job in jobs:
        path = records_path(out, job.name)
        output = Path(job.output_bag) if job.output_bag else None
        if overwrite:
            path.unlink(missing_ok=True)
        elif path.is_file():
            try:
                earlier = BagRecords.load(path)
            except (ValueError, TypeError, KeyError) as err:
                raise FileExistsError(f"{path}: not a records file this command can reuse ({err}); give "
                                      f"--overwrite to recompute, or another --out") from err
            if earlier.run_key != keys[job.name]:
                differ = sorted(k for k in keys[job.name] if earlier.run_key.get(k) != keys[job.name][k])
                raise FileExistsError(f"{path}: bag {job.name} was evaluated into this --out with other settings "
                                      f"(differing: {', '.join(differ) or 'all'}); give --overwrite to recompute, "
                                      f"or another --out")
            if output is None or output.exists() or not write_bags:
                reused[job.name] = earlier
                continue
        if output is not None and output.exists():  # an interrupted run finished the bag but not its records
            shutil.rmtree(output)
    return reused


def select_shard(jobs: list, spec: str, env=None) -> list:
    """Shard K of N of the jobs (sorted by name: every machine given the same bag list picks the same shards).
    spec "K/N", or "env": RANK and WORLD_SIZE from the environment (torchrun sets them for every process)."""
    env = os.environ if env is None else env
    if spec == "env":
        if "RANK" not in env or "WORLD_SIZE" not in env:
            raise ValueError("--shard env needs RANK and WORLD_SIZE in the environment (torchrun sets them)")
        k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
    else:
        try:
            k, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"--shard {spec!r}: expected K/N (e.g. 0/4) or 'env'") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= K < N, got K={k}, N={n}")
    return sorted(jobs, key=lambda j: j.name)[k::n]


def preflight(jobs: list, options) -> None:
    """Open every bag, check the topics and schedule against it, and parse every ground-truth file before the
    model is loaded: a run that cannot complete fails in seconds, naming the file."""
    from instructsam_tools.bag_eval.groundtruth import load_ground_truth
    from instructsam_ros.bags.reader import BagSource

    for job in jobs:
        with BagSource(job.bag, options.topics, options.instruction_topic) as source:
            source.require_cameras()
            schedule = job.schedule if job.schedule is not None else options.schedule
            if schedule is not None:
                schedule.cursor(source.cameras, source.start_time_ns)
        if job.ground_truth:
            load_ground_truth(job.ground_truth)


def unique_names(jobs: list, out: Path | None) -> None:
    """Bags are named by their directory; bags whose names clash are named <parent>_<name> instead."""
    names = [j.name for j in jobs]
    for job in jobs:
        if names.count(job.name) > 1:
            job.name = f"{Path(job.bag).resolve().parent.name}_{job.name}"
            if out is not None:
                job.output_bag = str(out / "bags" / f"{job.name}_instances")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"bag names must be unique in one run (they name records and reports); these clash even "
                         f"with their parent directory: {[j.bag for j in jobs if names.count(j.name) > 1]}")


def load_records(items: list[str]) -> list:
    from instructsam_ros.bags.records import BagRecords

    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.records.json"))
            if not found:
                raise FileNotFoundError(f"no *.records.json files in {p}")
            paths += found
        else:
            paths.append(p)
    return [BagRecords.load(p) for p in paths]


def cmd_merge(args) -> int:
    return report(load_records(args.records), Path(args.out), args.strict)


def report(records: list, out: Path, strict: bool, write: bool = True, reused: int = 0, failed: int = 0) -> int:
    from instructsam_tools.bag_eval.scoring import score, write_bag_report

    summary, timeline = score(records)
    for s in summary["skipped_messages"]:
        stamp = "?" if s["stamp_ns"] is None else s["stamp_ns"]
        print(f"skipped: {s['bag']} {s['topic']} log_time={s['log_time_ns']} stamp={stamp}: {s['reason']}",
              file=sys.stderr)
    if write:
        paths = write_bag_report(out, summary, timeline)
        print(f"report: {paths['markdown']}")
    else:
        print(f"records: {out / 'records'}")
    f = summary["frames"]
    print(f"bag_eval: {summary['status']} ({summary['num_bags']} bag(s), {f['processed']} frames processed, "
          f"{f['dropped']} dropped, {summary['scored_frames']} scored{f', {reused} reused' if reused else ''}"
          f"{f', {failed} bag(s) failed' if failed else ''})")
    return EXIT_SKIPPED_STRICT if strict and summary["skipped"] else EXIT_OK


def cmd_make_synthetic(args) -> int:
    from instructsam_tools.bag_eval.synthetic_bags import make_synthetic_bags

    made = make_synthetic_bags(args.out, videos=args.videos, frames=args.frames, size=args.size,
                               cameras=args.cameras, max_objects=args.max_objects, seed=args.seed,
                               storage=args.storage, compressed=args.compressed, image_format=args.format,
                               encoding=args.encoding, fps=args.fps, instruction_topic=args.instruction_topic)
    for m in made:
        print(f"{m.bag}  ground truth {m.ground_truth.name}  instructions {m.schedule.name}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from instructsam.errors import CheckpointError
    from instructsam_tools.bag_eval.ray_runner import BagTaskError
    from instructsam_ros.bags.reader import BagError

    args = build_parser().parse_args(argv)
    command = {"run": cmd_run, "merge": cmd_merge, "make-synthetic": cmd_make_synthetic}[args.command]
    try:
        return command(args)
    except (BagError, BagTaskError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"bag_eval: error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
