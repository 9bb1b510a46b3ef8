"""The benchmark command: every path's cost in one run, each figure beside its target with PASS/FAIL.

    python -m instructsam_tools.benchmarks [--config tiny|mid|both] [--repeats 5] [--stream-frames 10000]
                                     [--full-size | --no-full-size] [--out DIR] [--markdown BENCHMARKS.md]
                                     [--threads N]
                                     [--sections paths,batching,node,scaling,stream,full_size,dit,alternatives,
                                                 cameras,levers]

Sections (one module each): 1 paths, 2 batching (paths.py), 3 node overhead (node_section.py: the ROS layer's message
building and publishing), 4 scaling, 5 stream, 6 full_size, 7 dit (DIT's per-instruction encoder cost beside
InstructSAM's: dit_section.py), 8 alternatives (the default beside a full pass per frame, SAM3 alone, a SAM3-agent
pipeline and the published model's mode: alternatives.py), 9 cameras (several cameras through one batched pass vs one
after another: cameras.py), 10 levers (a tracked frame's cost levers, cost and tracking quality side by side:
levers.py). Writes
DIR/benchmarks.json and the plots; --markdown writes the report (table, plots, commands).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from instructsam_tools.benchmarks.common import ModelStore, Target, set_threads
from instructsam_tools.benchmarks.writeup import format_table, make_plots, markdown

SECTIONS = ("paths", "batching", "node", "scaling", "stream", "full_size", "dit", "alternatives", "cameras",
            "levers")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m instructsam_tools.benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["tiny", "mid", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (medians; default 5)")
    ap.add_argument("--stream-frames", type=int, default=10_000, help="frames of the memory stream (section 5)")
    ap.add_argument("--stream-size", default="240x320", help="HxW of the stream's frames (default 240x320)")
    ap.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True,
                    help="section 6: the full-size composition on paper (default on; ~2 min)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (default 1: predictable on a shared machine; "
                         "ratios barely depend on it)")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"),
                    help="directory for benchmarks.json and the plots (default docs/benchmarks)")
    ap.add_argument("--models", type=Path, default=Path("outputs/benchmark_models"),
                    help="work directory: the random benchmark checkpoints (built once, reused) and the stream's "
                         "log (default outputs/benchmark_models)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the report here (e.g. BENCHMARKS.md)")
    ap.add_argument("--notes", type=Path, default=None, help="markdown appended to the report (analysis)")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rebuild the plots and --markdown from OUT/benchmarks.json")
    args = ap.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if not args.full_size and "full_size" in args.sections:
        args.sections.remove("full_size")
    try:
        h, w = (int(v) for v in args.stream_size.lower().split("x"))
    except ValueError:
        ap.error(f"--stream-size must be HxW, e.g. 240x320, got {args.stream_size!r}")
    args.stream_size = (h, w)
    if args.repeats < 1 or args.stream_frames < 1:
        ap.error("--repeats and --stream-frames must be >= 1")
    return args


def log(text: str) -> None:
    print(text, flush=True)


class StreamProcess:
    """Section 5 in its own process (python -m instructsam_tools.benchmarks.stream), so the RSS it follows is the
    pipeline's alone; it runs beside sections 1-4 on another core when there are enough cores."""

    def __init__(self, checkpoint: Path, args: argparse.Namespace, threads: int):
        import subprocess

        self.json = args.models / "stream.json"
        self.json.unlink(missing_ok=True)
        self.logfile = open(args.models / "stream.log", "w")
        h, w = args.stream_size
        cmd = [sys.executable, "-m", "instructsam_tools.benchmarks.stream", "--checkpoint", str(checkpoint),
               "--frames", str(args.stream_frames), "--size", f"{h}x{w}", "--threads", str(threads),
               "--out", str(self.json)]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT)
        self.result = None
        log(f"[stream] started {args.stream_frames:,} frames in process {self.proc.pid} (log: {self.logfile.name})")

    def wait(self) -> tuple[dict, list[Target]]:
        if self.result is None:
            code = self.proc.wait()
            self.logfile.close()
            if code != 0 or not self.json.is_file():
                raise RuntimeError(f"the stream section failed (exit {code}); see {self.logfile.name}")
            data = json.loads(self.json.read_text())
            self.result = (data["result"], [target_from_dict(t) for t in data["targets"]])
            log(f"[stream] done in {time.perf_counter() - self.started:.1f} s")
        return self.result


def target_from_dict(t: dict) -> Target:
    return Target(**{k: t[k] for k in ("section", "name", "config", "value", "limit", "unit", "absolute", "note")})


def render(args: argparse.Namespace, results: dict, targets: list[Target]) -> None:
    plots = make_plots(results, args.out)
    log("")
    log(format_table(targets))
    log("")
    log(f"wrote {args.out / 'benchmarks.json'}" + (f" and {len(plots)} plots" if plots else "")
        + f"; total {results['meta']['runtime_s'] / 60:.1f} min")
    if args.markdown:
        notes = args.notes.read_text() if args.notes else ""
        args.markdown.write_text(markdown(results, targets, plots, args.markdown, notes))
        log(f"wrote {args.markdown}")


def main(argv: list[str] | None = None, prog: str = "python -m instructsam_tools.benchmarks") -> int:
    args = parse_args(argv)
    if args.render_only:
        results = json.loads((args.out / "benchmarks.json").read_text())
        render(args, results, [target_from_dict(t) for t in results["targets"]])
        return 0
    started = time.time()
    loadavg_start = os.getloadavg()
    threads = set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = ModelStore(args.models)
    configs = ["tiny", "mid"] if args.config == "both" else [args.config]
    sections: dict[str, dict] = {}
    targets: list[Target] = []
    log(f"InstructSAM benchmarks: configs {configs}, sections {args.sections}, {threads} threads, repeats "
        f"{args.repeats}; load average {loadavg_start[0]:.2f}")

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
        return out

    stream = None
    if "stream" in args.sections:
        stream = StreamProcess(store.checkpoint("tiny"), args, threads)
        if (os.cpu_count() or 1) < 2 * threads:
            stream.wait()  # not enough cores to run it beside the other sections without disturbing them

    for config in configs:
        if not {"paths", "batching", "scaling", "dit", "alternatives", "cameras", "levers"} & set(args.sections):
            break
        t0 = time.perf_counter()
        model = store.load(config)
        log(f"[{config}] model ready in {time.perf_counter() - t0:.1f} s ({store.checkpoint(config)})")
        if "paths" in args.sections:
            from instructsam_tools.benchmarks.paths import run_paths

            result, found = timed(f"{config} paths", lambda: run_paths(model, config, args.repeats))
            sections.setdefault("paths", {})[config] = result
            targets += found
        if "batching" in args.sections:
            from instructsam_tools.benchmarks.paths import run_batching

            result, found = timed(f"{config} batching", lambda: run_batching(model, config, args.repeats))
            sections.setdefault("batching", {})[config] = result
            targets += found
        if "levers" in args.sections:
            from instructsam_tools.benchmarks.levers import tracked_cost

            sections.setdefault("levers", {}).setdefault("cost", {})[config] = timed(
                f"{config} levers", lambda: tracked_cost(model, args.repeats))
        if "cameras" in args.sections:
            from instructsam_tools.benchmarks.cameras import run_cameras

            result, found = timed(f"{config} cameras", lambda: run_cameras(model, config, args.repeats))
            sections.setdefault("cameras", {})[config] = result
            targets += found
        del model
        if "scaling" in args.sections:
            from instructsam_tools.benchmarks.scaling import run_scaling

            sections.setdefault("scaling", {})[config] = timed(
                f"{config} scaling", lambda: run_scaling(store, config, args.repeats))
        if "dit" in args.sections:
            from instructsam_tools.benchmarks.dit_section import run_dit

            sections.setdefault("dit", {})[config] = timed(f"{config} dit",
                                                           lambda: run_dit(store, config, args.repeats))
        if "alternatives" in args.sections:
            from instructsam_tools.benchmarks.alternatives import run_alternatives

            result, found = timed(f"{config} alternatives", lambda: run_alternatives(store, config, args.repeats))
            sections.setdefault("alternatives", {})[config] = result
            targets += found

    if "levers" in args.sections:
        from instructsam import resources
        from instructsam_tools.benchmarks.levers import quality_targets, tracker_quality

        sections.setdefault("levers", {})["quality"] = timed("levers quality", lambda: tracker_quality(
            resources.find("checkpoints/instructsam-tiny", "the shipped checkpoint")))
        targets += quality_targets(sections["levers"]["quality"])

    if "node" in args.sections:
        from instructsam_tools.benchmarks.node_section import run_node

        result, found = timed("node", lambda: run_node(store.checkpoint("tiny"), args.repeats))
        sections["node"] = result
        targets += found

    if stream is not None:
        result, found = stream.wait()
        sections["stream"] = result
        targets += found

    if "full_size" in args.sections:
        from instructsam_tools.benchmarks.full_size import full_size_targets, run_full_size

        sections["full_size"] = timed("full size", lambda: run_full_size(log=log))
        targets += full_size_targets(sections["full_size"])

    command = f"{prog} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import torch
    import transformers

    results = {
        "meta": {
            "commands": ["bash scripts/bench.sh" + (" " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
                                                     if (argv or sys.argv[1:]) else ""),
                         "# equivalently, after `bash scripts/setup.sh && source scripts/env.sh`:", command.strip()],
            "when": time.strftime("%Y-%m-%d %H:%M %Z"), "platform": f"{platform.machine()} {platform.system()}",
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": threads,
            "cpus": os.cpu_count(), "loadavg_start": [round(v, 2) for v in loadavg_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()], "configs": configs, "repeats": args.repeats,
            "sections_run": args.sections, "runtime_s": time.time() - started,
        },
        "sections": sections,
        "targets": [t.as_dict() for t in targets],
    }
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1, default=float))
    render(args, results, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
