"""The training loop (DETR's engine.py style: plain functions) and what it needs: model, optimizer, schedule, DDP.

    train(config, resume=None)   one run: build/load the model, train `config.train.max_steps` optimizer steps,
                                 checkpoint, evaluate, save the final model with save_pretrained
    train_one_epoch(...)         the inner loop over one epoch's batches (gradient accumulation, clipping,
                                 logging, checkpoints)

Distributed: started by `torchrun`, every process reads WORLD_SIZE / RANK / LOCAL_RANK from the environment and
joins a process group (gloo on CPU, nccl on CUDA); the model is wrapped in DistributedDataParallel and each rank
trains on its own deterministic shard of every epoch. Without WORLD_SIZE > 1 it is a plain single-process run.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from instructsam.modeling import InstructSAMModel
from instructsam_tools.data.batching import build_dataset, epoch_batches, image_groups, make_loader
from instructsam_tools.training.step_checkpoints import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from instructsam_tools.training.train_config import TrainConfig
from instructsam_tools.training.criterion import SetCriterion
from instructsam_tools.training.denoising import noised_reference_boxes
from instructsam_tools.training.language_objective import LanguageCriterion, LanguageStep, evaluate_answers
from instructsam_tools.training.matcher import HungarianMatcher
from instructsam_tools.training.model_build import (  # noqa: F401  (build_model, load_step_model, DistInfo: the trainer's API too)
    DistInfo, barrier, build_model, load_step_model, seed_everything, setup_distributed,
)
from instructsam_tools.training.tracker_objective import TrackingCriterion, TrackingStep

# ---------------------------------------------------------------------------------------------------------------
# optimizer, schedule


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only. Parameter groups by name prefix (optim.param_groups, first
    match wins) set their own LR; 1-D parameters (biases, norms) get no weight decay."""
    o = cfg.optim
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = next((i for i, spec in enumerate(o.param_groups) if any(name.startswith(x) for x in spec["prefixes"])),
                 None)
        spec = o.param_groups[g] if g is not None else {}
        decay = p.ndim >= 2
        key = (g, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": float(spec.get("lr", o.lr)),
                           "weight_decay": float(spec.get("weight_decay", o.weight_decay)) if decay else 0.0,
                           "name": f"{spec.get('name', 'group%d' % g if g is not None else 'default')}"
                                   f"{'' if decay else '/no_decay'}"}
        groups[key]["params"].append(p)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (k[0] is None, k[0] or 0, not k[1]))]
    return torch.optim.AdamW(ordered, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to min_lr_ratio at max_steps."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    o, t = cfg.optim, cfg.train

    def schedule(step: int) -> float:
        return warmup_cosine(step, o.warmup_steps, t.max_steps, o.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """The objective's loss: SetCriterion (instances), TrackingCriterion (tracking) or LanguageCriterion."""
    mc, lc = cfg.matcher, cfg.loss
    if cfg.objective == "tracking":
        return TrackingCriterion(lc.weights)
    if cfg.objective == "language":
        return LanguageCriterion()
    matcher = HungarianMatcher(cost_class=mc.cost_class, cost_mask=mc.cost_mask, cost_dice=mc.cost_dice,
                               cost_bbox=mc.cost_bbox, cost_giou=mc.cost_giou, mask_cost_size=mc.mask_cost_size,
                               focal_alpha=lc.focal_alpha, focal_gamma=lc.focal_gamma)
    return SetCriterion(matcher, weights=lc.weights, class_loss=lc.class_loss, focal_alpha=lc.focal_alpha,
                        focal_gamma=lc.focal_gamma, aux_loss=lc.aux_loss, detect_all=lc.detect_all)


class SegmentationStep(nn.Module):
    """encode images once + segment all their instructions, as one module call: what DDP wraps (DDP needs the
    whole computation inside one forward to set up its gradient synchronisation)."""

    def __init__(self, model: InstructSAMModel):
        super().__init__()
        self.model = model

    def forward(self, images, instructions: list[str], image_index: list[int], tasks: list[str],
                denoise_boxes: torch.Tensor | None = None):
        features = self.model.encode_image(images, tracker=False)  # no tracker here
        return self.model.segment(features, instructions, image_index=image_index, task=tasks, reuse_prefix=False,
                                  denoise_boxes=denoise_boxes)


def autocast_context(cfg: TrainConfig, device: torch.device):
    """bf16/fp16 autocast on CUDA; CPU runs in float32 (CPU autocast is slower than fp32 for these sizes)."""
    if device.type != "cuda" or cfg.train.mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# logging


class MetricsLog:
    """JSON-lines metrics file (rank 0 only): one object per logged step or evaluation."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")


@dataclass
class RunState:
    """Data position + counters; `position()` is what a checkpoint stores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (a multiple of grad_accum_steps)
    samples_seen: int = 0  # instructions, summed over ranks

    def position(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "samples_seen": self.samples_seen}


@dataclass
class Run:
    """Everything the loop functions share."""

    cfg: TrainConfig
    info: DistInfo
    model: InstructSAMModel
    step_module: nn.Module  # SegmentationStep, TrackingStep or LanguageStep, DDP-wrapped when distributed
    criterion: nn.Module  # SetCriterion, TrackingCriterion or LanguageCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    log: MetricsLog
    state: RunState
    val_dataset: object | None = None
    progress: tqdm | None = None
    stop_at_step: int | None = None
    window: dict = field(default_factory=dict)
    window_start: float = field(default_factory=time.perf_counter)
    start_time: float = field(default_factory=time.perf_counter)
    last_eval: dict | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    def finished(self) -> bool:
        return self.state.step >= self.cfg.train.max_steps or (
            self.stop_at_step is not None and self.state.step >= self.stop_at_step)


def reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world_size).tolist()))


# ---------------------------------------------------------------------------------------------------------------
# the loop


def optimizer_step(run: Run) -> float:
    """Clip, step optimizer + scheduler, clear gradients; returns the global gradient norm (before clipping)."""
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    clip = run.cfg.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def log_step(run: Run, losses: dict[str, float], grad_norm: float, num_samples: int, num_images: int) -> None:
    w = run.window
    for k, v in losses.items():
        w.setdefault(k, []).append(v)
    w.setdefault("grad_norm", []).append(grad_norm)
    w["samples"] = w.get("samples", 0) + num_samples
    w["images"] = w.get("images", 0) + num_images
    if run.progress is not None:
        run.progress.update(1)
        run.progress.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
    if run.state.step % run.cfg.train.log_every and not run.finished():
        return
    means = reduce_mean({k: float(np.mean(v)) for k, v in w.items() if isinstance(v, list)}, run.info)
    elapsed = time.perf_counter() - run.window_start
    record = {"step": run.state.step, "epoch": run.state.epoch, "lr": run.scheduler.get_last_lr()[0], **means,
              "samples_per_s": w["samples"] * run.info.world_size / max(elapsed, 1e-9),
              "images_per_s": w["images"] * run.info.world_size / max(elapsed, 1e-9),
              "samples_seen": run.state.samples_seen, "elapsed_s": time.perf_counter() - run.start_time}
    run.log.write(record)
    run.window, run.window_start = {}, time.perf_counter()


def checkpoint(run: Run) -> Path:
    path = run.output_dir / "checkpoints" / f"step_{run.state.step:07d}"
    save_checkpoint(path, run.model, run.optimizer, run.scheduler, run.scaler, run.state.position(),
                    run.cfg.to_dict(), run.info.rank, run.info.world_size)
    if run.info.is_main:
        prune_checkpoints(run.output_dir, run.cfg.train.keep_checkpoints)
    barrier()
    return path


def evaluate_during_training(run: Run, final: bool = False) -> dict | None:
    """Metrics on the first `eval_samples` of data.val (videos for the tracking objective; rank 0, the other
    ranks wait)."""
    if run.val_dataset is None:
        return None
    summary = None
    if run.info.is_main:
        if run.cfg.objective == "tracking":
            from instructsam_tools.evaluation.tracker import evaluate_tracker

            summary = evaluate_tracker(run.model, run.val_dataset, max_videos=run.cfg.train.eval_samples,
                                       progress=False)
            keys = ("J&F", "J", "F", "objects")
        elif run.cfg.objective == "language":
            summary = evaluate_answers(run.model, run.val_dataset, max_samples=run.cfg.train.eval_samples,
                                       images_per_batch=max(1, run.cfg.data.images_per_batch))
            keys = tuple(summary)
        else:
            from instructsam_tools.evaluation.evaluate import evaluate_model

            summary, _ = evaluate_model(run.model, run.val_dataset, max_samples=run.cfg.train.eval_samples,
                                        images_per_batch=max(1, run.cfg.data.images_per_batch), num_overlays=0)
            keys = ("mAP", "AP50", "AP75", "gIoU", "cIoU", "N-acc", "T-acc", "mIoU", "duplicate_rate", "pred_overlap")
        run.log.write({"step": run.state.step, "eval": {k: summary.get(k) for k in keys}, "final": final})
        run.model.train()
    barrier()
    return summary


def train_one_epoch(run: Run, loader) -> bool:
    """Train on this epoch's remaining micro-batches; returns True when the epoch was completed (False when the
    run stopped in the middle: max_steps or stop_at_step reached)."""
    cfg, info, state = run.cfg, run.info, run.state
    accum = cfg.train.grad_accum_steps
    run.model.train()
    micro, step_losses, step_samples, step_images = 0, {}, 0, 0
    for batch in loader:
        micro += 1
        last_micro = micro == accum
        sync = contextlib.nullcontext() if last_micro or not info.distributed else run.step_module.no_sync()
        with sync:
            targets = batch.targets_on(info.device)
            extra = {}
            if cfg.objective == "instances" and cfg.loss.denoise > 0:
                # the denoising queries sit at the objects the criterion supervises
                extra["denoise_boxes"] = noised_reference_boxes(run.criterion.supervised(targets), cfg.loss.denoise,
                                                                info.device)
            with autocast_context(cfg, info.device):
                outputs = run.step_module(*batch.model_inputs(), **extra)
            losses = run.criterion(outputs, targets)  # float32, outside autocast
            loss = losses["loss"] / accum
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {state.step}: "
                                         f"{ {k: float(v) for k, v in losses.items()} } (lower the learning rate?)")
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        for k, v in losses.items():
            step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / accum
        step_samples += len(batch)
        step_images += batch.num_images
        if not last_micro:
            continue
        grad_norm = optimizer_step(run)
        state.step += 1
        state.batch_in_epoch += accum
        state.samples_seen += step_samples * info.world_size
        log_step(run, step_losses, grad_norm, step_samples, step_images)
        micro, step_losses, step_samples, step_images = 0, {}, 0, 0
        if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and not run.finished():
            run.last_eval = evaluate_during_training(run)
        if state.step % cfg.train.checkpoint_every == 0 or run.finished():
            checkpoint(run)
        if run.finished():
            return False
    return True


def train(cfg: TrainConfig, resume: str | Path | None = None, stop_at_step: int | None = None) -> dict:
    """Run (or resume) the training `cfg` describes. resume: a step checkpoint directory, or "latest" for the
    newest one under OUTPUT/checkpoints (a fresh start if there is none). stop_at_step: end early after this
    many steps (with a checkpoint), as a preempted run would. Returns a summary dict."""
    info = setup_distributed()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    seed_everything(cfg.seed)
    model = build_model(cfg, info)
    seed_everything(cfg.seed + info.rank)  # the same RNG stream whether the model was built here or loaded
    step_module: nn.Module = {"tracking": TrackingStep, "language": LanguageStep}.get(
        cfg.objective, SegmentationStep)(model)
    if info.distributed:
        step_module = DistributedDataParallel(
            step_module, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            find_unused_parameters=cfg.train.ddp_find_unused_parameters)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    use_scaler = info.device.type == "cuda" and cfg.train.mixed_precision == "fp16"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    state = RunState()

    if resume == "latest":
        resume = latest_checkpoint(out)
    if resume:
        position = load_checkpoint(resume, model, optimizer, scheduler, scaler, info.rank, info.world_size)
        state = RunState(**position)

    d = cfg.data
    dataset = build_dataset(d.train, d.image_size, d.seed, d.clip_frames)
    groups = image_groups(dataset)
    val_dataset = build_dataset(d.val, d.image_size, d.seed, d.clip_frames) if d.val else None
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run = Run(cfg, info, model, step_module, build_criterion(cfg), optimizer, scheduler, scaler,
              MetricsLog(out / "metrics.jsonl", info.is_main), state, val_dataset, stop_at_step=stop_at_step)
    run.log.write({"event": "resume" if resume else "start", "step": state.step, "world_size": info.world_size,
                   "trainable_parameters": num_params, "train_images": len(groups), "train_samples": len(dataset),
                   "resumed_from": str(resume) if resume else None})
    if info.is_main and cfg.train.progress:
        run.progress = tqdm(total=cfg.train.max_steps, initial=state.step, desc="train", unit="step",
                            dynamic_ncols=True)
    try:
        while not run.finished():
            batches = epoch_batches(len(groups), cfg.data.images_per_batch, state.epoch, cfg.seed, info.rank,
                                    info.world_size)
            usable = len(batches) - len(batches) % cfg.train.grad_accum_steps
            if usable == 0:
                raise ValueError(f"an epoch has {len(batches)} micro-batches per rank, fewer than "
                                 f"grad_accum_steps={cfg.train.grad_accum_steps}")
            loader = make_loader(dataset, groups, batches[state.batch_in_epoch:usable], cfg.data.num_workers)
            if train_one_epoch(run, loader):
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        if run.progress is not None:
            run.progress.close()

    result = {"step": state.step, "output_dir": str(out), "checkpoint": str(latest_checkpoint(out))}
    if state.step >= cfg.train.max_steps:
        final_dir = out / "final"
        if info.is_main:
            model.save_pretrained(final_dir)
        barrier()
        result["final"] = str(final_dir)
        summary = evaluate_during_training(run, final=True)
        if summary is not None:
            keys = {"tracking": ("J&F", "J", "F"), "language": tuple(summary)}.get(
                cfg.objective, ("mAP", "AP50", "gIoU", "N-acc", "T-acc"))
            result["eval"] = {k: summary.get(k) for k in keys}
    if cfg.train.save_rank_weights:
        from safetensors.torch import save_file

        save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters()},
                  str(out / f"rank{info.rank}_weights.safetensors"))
    run.log.write({"event": "end", **result})
    return result


__all__ = ["train", "train_one_epoch", "build_model", "load_step_model", "build_optimizer", "build_scheduler",
           "build_criterion", "warmup_cosine", "setup_distributed", "SegmentationStep", "DistInfo", "RunState"]
