"""Evaluate many bags: one after another in this process, or in parallel worker processes (ProcessPoolExecutor,
spawn context; each worker loads the model once and runs torch with the same thread count as a sequential run).
Workers die with the process that started them (a killed run leaves no orphan writing into its output directory),
and each bag's records are handed to `on_done` as soon as that bag finishes, so an interrupted run keeps them.
Each bag is replayed with its own fresh FramePipeline, so a bag's records do not depend on which process ran it or
what ran before; metrics are computed once, afterwards, from all records (scoring.score), so parallel == sequential.
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from instructsam.pipeline.frame_pipeline import PipelineSettings
from instructsam_tools.bag_eval.groundtruth import attach, load_ground_truth
from instructsam_ros.bags.records import BagRecords
from instructsam_ros.bags.replay import ReplayOptions, replay_bag
from instructsam_ros.bags.schedule import InstructionSchedule


@dataclass
class ModelSpec:
    checkpoint: str
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1  # torch CPU threads (per worker); the same in every mode, so results are bit-identical
    sam3: str | None = None  # facebook/sam3 directory, for a checkpoint in the published layout


@dataclass
class BagJob:
    bag: str
    name: str
    schedule: InstructionSchedule | None = None
    ground_truth: str | None = None
    output_bag: str | None = None


def load_model(spec: ModelSpec):
    from instructsam.loading import load_model as load

    return load(spec.checkpoint, spec.device, spec.dtype, spec.threads, sam3=spec.sam3)


def run_job(job: BagJob, model, settings: PipelineSettings, options: ReplayOptions) -> BagRecords:
    gt = load_ground_truth(job.ground_truth) if job.ground_truth else None
    opts = replace(options, schedule=job.schedule if job.schedule is not None else options.schedule,
                   output_bag=job.output_bag)
    records = replay_bag(job.bag, model, settings, opts, name=job.name)
    if gt is not None:
        attach(records, gt)
    return records


# ---- worker processes ----------------------------------------------------------------------------------------
_WORKER: dict = {}


PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` is gone: the kernel's parent-death signal on Linux (immediate), and a
    watchdog thread everywhere (polls the parent id: an orphan is re-parented)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(spec: ModelSpec, ticks, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    _WORKER["model"] = load_model(spec)
    _WORKER["ticks"] = ticks


def _run_in_worker(job: BagJob, settings: PipelineSettings, options: ReplayOptions) -> BagRecords:
    ticks = _WORKER["ticks"]
    opts = replace(options, progress=False, on_frame=(lambda n: ticks.put(n)) if ticks is not None else None)
    return run_job(job, _WORKER["model"], settings, opts)


def evaluate_bags(jobs: list[BagJob], spec: ModelSpec, settings: PipelineSettings, options: ReplayOptions,
                  workers: int = 1, model=None,
                  on_done: Callable[[BagRecords], None] | None = None) -> list[BagRecords]:
    """Replay every job; returns the records in job order, and hands each to `on_done` as soon as its bag
    finishes. workers <= 1: in this process (`model`, if given, is used instead of loading spec.checkpoint).
    Errors (an unreadable bag, a bad ground-truth file) propagate."""
    done_hook = on_done or (lambda records: None)
    if workers <= 1 or len(jobs) <= 1:
        model = model if model is not None else load_model(spec)
        results = []
        for job in jobs:
            results.append(run_job(job, model, settings, options))
            done_hook(results[-1])
        return results
    ctx = multiprocessing.get_context("spawn")
    ticks = ctx.Queue() if options.progress else None  # a plain queue: no manager process to outlive us
    total = _count_frames(jobs, options) if options.progress else None
    results = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(spec, ticks, os.getpid())) as pool, \
            tqdm(total=total, unit="frame", desc=f"{len(jobs)} bags, {workers} workers",
                 disable=not options.progress) as bar:
        futures = {pool.submit(_run_in_worker, job, settings, replace(options, on_frame=None)): i
                   for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise f.exception()
                results[futures[f]] = f.result()
                done_hook(results[futures[f]])
            _drain(ticks, bar)
        _drain(ticks, bar)
    return [results[i] for i in range(len(jobs))]


def _drain(ticks, bar) -> None:
    if ticks is None:
        return
    while True:
        try:
            bar.update(ticks.get_nowait())
        except queue_module.Empty:
            return


def _count_frames(jobs: list[BagJob], options: ReplayOptions) -> int | None:
    from instructsam_ros.bags.reader import BagSource

    try:
        total = 0
        for job in jobs:
            with BagSource(job.bag, options.topics, options.instruction_topic) as source:
                total += source.image_count
        return total
    except Exception:  # the worker reports a bad bag properly; the bar just has no total
        return None


def default_job(bag: str | Path, out_dir: Path | None = None, write_bag: bool = False,
                schedule: InstructionSchedule | None = None, ground_truth: str | None = None,
                schedule_sidecar: bool = True, gt_sidecar: bool = True) -> BagJob:
    """A job for `bag`; without an explicit schedule / ground truth, <bag>.instructions.yaml / <bag>.gt.json next
    to the bag are used when they exist."""
    bag = Path(bag)
    if schedule is None and schedule_sidecar:
        sidecar = bag.with_name(bag.name + ".instructions.yaml")
        if sidecar.is_file():
            schedule = InstructionSchedule.load(sidecar)
    if ground_truth is None and gt_sidecar:
        sidecar = bag.with_name(bag.name + ".gt.json")
        if sidecar.is_file():
            ground_truth = str(sidecar)
    output = str(out_dir / "bags" / f"{bag.name}_instances") if (write_bag and out_dir is not None) else None
    return BagJob(bag=str(bag), name=bag.name, schedule=schedule, ground_truth=ground_truth, output_bag=output)


__all__ = ["ModelSpec", "BagJob", "load_model", "run_job", "evaluate_bags", "default_job", "die_with_parent"]
