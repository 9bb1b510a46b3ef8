"""Many bags on a Ray cluster: one task per bag, run by worker actors that each load the model once (the same
`run_job` as a local run, so a bag's records do not depend on where it ran). Records come back to the driver,
which hands each to `on_done` as it arrives (bag_eval writes it at once, so an interrupted driver keeps them).

Failures: when a worker's process or node dies, a new worker is started (Ray places it on a node with resources
left; it loads the model again) and the bag is given out again, up to `retries` times; a task that raises (a bag
that cannot be read, bad ground truth) is not retried: with `skip_failed` the bag is reported and left out, else
the run stops naming it. Ray is optional (`pip install ray`); a robot never needs it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

from tqdm import tqdm

from instructsam.pipeline.frame_pipeline import PipelineSettings
from instructsam_ros.bags.records import BagRecords
from instructsam_ros.bags.replay import ReplayOptions
from instructsam_tools.bag_eval.runner import BagJob, ModelSpec, load_model, run_job


class BagTaskError(RuntimeError):
    """A bag whose task failed on the cluster; the message names the bag."""


def _ray():
    try:
        import ray
    except ImportError as err:
        raise BagTaskError("--ray needs Ray: pip install 'ray==2.60.0' (docs/bag_evaluation.md: Ray)") \
            from err
    return ray


class _Worker:
    """A worker actor: the model, loaded once, and the bags given to it."""

    def __init__(self, spec: ModelSpec):
        self.model = load_model(spec)

    def run(self, job: BagJob, settings: PipelineSettings, options: ReplayOptions) -> dict:
        return run_job(job, self.model, settings, options).to_json()


def evaluate_bags_ray(jobs: list[BagJob], spec: ModelSpec, settings: PipelineSettings, options: ReplayOptions,
                      address: str, actors: int = 0, retries: int = 2, skip_failed: bool = False,
                      on_done: Callable[[BagRecords], None] | None = None) -> tuple[list[BagRecords], list[str]]:
    """Evaluate `jobs` on the Ray cluster at `address` ("auto": the one this machine belongs to); returns
    (records in job order, failure messages of skipped bags). `actors` <= 0: one per CPU the cluster has for
    `spec.threads` threads each."""
    ray = _ray()
    from ray.exceptions import RayActorError, RayTaskError

    host = address.rsplit(":", 1)[0]
    # A cluster on a loopback address (one machine, the tests): the driver joins it there too. Ray replaces
    # 127.0.0.1 and localhost by the host's interface address, so such a cluster runs on e.g. 127.0.0.2.
    local = {"_node_ip_address": host} if host.startswith("127.") else {}
    ray.init(address=address, log_to_driver=False, ignore_reinit_error=True, **local)
    try:
        threads = max(1, spec.threads)
        count = actors if actors > 0 else max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        count = min(count, len(jobs))
        worker = ray.remote(num_cpus=threads, max_restarts=0)(_Worker)
        quiet = replace(options, progress=False, on_frame=None)
        results: dict[int, BagRecords] = {}
        failures: list[str] = []
        attempts = [0] * len(jobs)
        queue = list(range(len(jobs)))
        idle = [worker.remote(spec) for _ in range(count)]
        alive = count
        pending = {}  # object ref -> (job index, actor)
        deaths = 0
        with tqdm(total=len(jobs), unit="bag", desc=f"{len(jobs)} bags on Ray ({count} workers)",
                  disable=not options.progress) as bar:
            while queue or pending:
                while queue and idle:
                    i, actor = queue.pop(0), idle.pop()
                    attempts[i] += 1
                    pending[actor.run.remote(jobs[i], settings, quiet)] = (i, actor)
                [ref], _ = ray.wait(list(pending), num_returns=1)
                i, actor = pending.pop(ref)
                try:
                    records = BagRecords.from_json(ray.get(ref), f"records of {jobs[i].bag}")
                except RayActorError as err:  # the worker's process or node died: the bag to another worker
                    deaths, alive = deaths + 1, alive - 1
                    if deaths > retries * len(jobs) + count:
                        raise BagTaskError(f"workers keep dying ({deaths} so far), last on bag {jobs[i].name}: "
                                           f"{_cause(err)}") from err
                    if alive == 0:  # a new one only when none is left: a live worker holds its CPUs, so a
                        idle.append(worker.remote(spec))  # replacement could wait for them forever
                        alive = 1
                    if attempts[i] <= retries:
                        print(f"bag_eval: bag {jobs[i].name}: its worker died ({_cause(err)}); retrying "
                              f"({attempts[i]} of {retries})", file=sys.stderr)
                        queue.insert(0, i)
                        continue
                    message = f"bag {jobs[i].name} ({jobs[i].bag}): its worker died {attempts[i]} time(s): " \
                              f"{_cause(err)}"
                    if not skip_failed:
                        raise BagTaskError(message) from err
                    failures.append(message)
                except RayTaskError as err:  # the bag itself failed: retrying would fail again
                    idle.append(actor)
                    message = f"bag {jobs[i].name} ({jobs[i].bag}) failed: {_cause(err)}"
                    if not skip_failed:
                        raise BagTaskError(message) from err
                    failures.append(message)
                else:
                    idle.append(actor)
                    results[i] = records
                    if on_done is not None:
                        on_done(records)
                bar.update(1)
        return [results[i] for i in sorted(results)], failures
    finally:
        ray.shutdown()


def _cause(err: Exception) -> str:
    """The task's own exception where Ray wraps one, else Ray's message (a worker or node that died)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


__all__ = ["evaluate_bags_ray", "BagTaskError"]
