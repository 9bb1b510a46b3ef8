"""The training-run configuration: a YAML file (config/train_*.yaml) + `key.sub=value` command-line overrides,
parsed into dataclasses so a typo in a key fails at start-up with the key's name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructsam_tools.yaml_files import deep_merge, read_yaml_tree, resolve_path

OBJECTIVES = ("instances", "tracking", "language")
OBJECTIVE_DATA = {"tracking": "synthetic_video:", "language": "synthetic_qa:"}  # the data spec kind each needs
TRACKER_ATTENTION_INITS = ("positional",)  # model.tracker_attention_init values


@dataclass
class ModelSection:
    checkpoint: str | None = None  # InstructSAM directory (from_pretrained); None = build a fresh tiny model
    tiny_config: str = "config/model_tiny.yaml"  # model yaml for the fresh build (instructsam_tools.tiny.build_tiny)
    build_overrides: dict = field(default_factory=dict)  # merged into the tiny yaml's `instructsam:` (e.g. num_queries)
    he_init: list = field(default_factory=list)  # SAM3 modules He-initialised in the fresh tiny model (tiny.py)
    overrides: dict = field(default_factory=dict)  # InstructSAMConfig fields set after loading (freezing, attention)
    freeze_modules: list = field(default_factory=list)  # parameter-name prefixes frozen on top of the config's freezing
    # modules (names as in named_modules, e.g. projector.prompt_mlp) re-initialised after loading: Linear layers
    # Xavier-uniform with zero biases, norms reset; for a part that learned to ignore its input (a resumed run
    # loads its own weights over it)
    reinit_modules: list = field(default_factory=list)
    # "positional": re-initialise SAM3's tracker memory attention to look at the same place in memory first, for
    # training a tracker from scratch (tracking.positional_memory_attention_); None keeps the loaded weights
    tracker_attention_init: str | None = None


@dataclass
class DataSection:
    train: str = "synthetic:train:8000"  # data spec (instructsam_tools.data.batching.build_dataset)
    val: str | None = "synthetic:val:200"
    image_size: int = 128  # synthetic images only
    seed: int = 0  # synthetic generator seed (not the shuffling seed)
    images_per_batch: int = 4  # per rank and micro-batch; each image brings all its instructions (tracking: clips)
    clip_frames: int = 8  # frames per synthetic_video clip (tracking objective)
    num_workers: int = 0


@dataclass
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # [{prefixes: [...], lr: float, weight_decay: float (optional)}]: the first group whose prefix matches wins
    param_groups: list = field(default_factory=list)


@dataclass
class LossSection:
    weights: dict = field(default_factory=dict)  # overrides of criterion.DEFAULT_WEIGHTS
    class_loss: str = "focal"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True
    # match slots to every annotated object (the instruction's targets score 1, the others 0): see criterion.py
    detect_all: bool = False
    # denoising queries at the supervised objects' boxes with this much noise (0: off): see denoising.py
    denoise: float = 0.0


@dataclass
class MatcherSection:
    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    mask_cost_size: int = 32


@dataclass
class LoopSection:
    max_steps: int = 1000  # optimizer steps (the schedule's length)
    grad_accum_steps: int = 1
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # older step checkpoints are deleted (0 keeps all)
    eval_every: int = 0  # steps between evaluations on data.val (0 = only at the end)
    eval_samples: int = 200  # val samples per evaluation (taken from the start of data.val)
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16"; CUDA only (CPU always trains in float32)
    progress: bool = True
    ddp_find_unused_parameters: bool = True  # unfrozen parts may not all be used (e.g. SAM3's tracker)
    num_threads: int | None = None  # torch intra-op threads (None = torch's default)
    save_rank_weights: bool = False  # each rank saves its in-memory parameters at the end (checks DDP replicas)


@dataclass
class TrainConfig:
    seed: int = 0
    objective: str = "instances"  # "instances": InstructSAM set prediction; "tracking": SAM3's tracker on videos;
    # "language": the VLM on scene questions and answers (language_objective.py)
    output_dir: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    matcher: MatcherSection = field(default_factory=MatcherSection)
    train: LoopSection = field(default_factory=LoopSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        t, o = self.train, self.optim
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        want = OBJECTIVE_DATA.get(self.objective)
        for spec in (self.data.train, self.data.val):
            kind = next((k for k in OBJECTIVE_DATA.values() if spec and spec.startswith(k)), None)
            if spec and kind != want:
                raise ValueError(f"objective {self.objective!r} needs {want or 'image'} data specs for "
                                 f"data.train and data.val, got {self.data.train!r} / {self.data.val!r}")
        init = self.model.tracker_attention_init
        if init is not None and (init not in TRACKER_ATTENTION_INITS or self.objective != "tracking"):
            raise ValueError(f"model.tracker_attention_init must be null or one of {list(TRACKER_ATTENTION_INITS)} "
                             f"with objective 'tracking' (it re-initialises the tracker being trained), got "
                             f"{init!r} with objective {self.objective!r}")
        if not 0 <= self.loss.denoise < 1:
            raise ValueError(f"loss.denoise (box noise of the denoising queries) must be in [0, 1), got "
                             f"{self.loss.denoise!r}")
        if t.max_steps < 1 or t.grad_accum_steps < 1 or t.log_every < 1 or t.checkpoint_every < 1:
            raise ValueError("train.max_steps, grad_accum_steps, log_every and checkpoint_every must be >= 1")
        if t.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {t.mixed_precision!r}")
        if o.lr <= 0 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
            raise ValueError(f"optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 "
                             f"(got {o.lr}, {o.warmup_steps}, {o.min_lr_ratio})")
        for i, group in enumerate(o.param_groups):
            if not isinstance(group, dict) or not group.get("prefixes") or "lr" not in group:
                raise ValueError(f"optim.param_groups[{i}] needs 'prefixes' (list) and 'lr', got {group!r}")
            unknown = set(group) - {"prefixes", "lr", "weight_decay", "name"}
            if unknown:
                raise ValueError(f"optim.param_groups[{i}]: unknown key(s) {sorted(unknown)}")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config section {where or 'root'!r} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}; "
                         f"known in this section: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def apply_override(tree: dict, item: str) -> None:
    """`a.b.c=value` (value parsed as YAML) into the nested dict."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form key.sub=value")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file (and/or `values`, deep-merged over it), then `overrides`
    ("train.max_steps=30")."""
    tree: dict = read_yaml_tree(path) if path is not None else {}
    if values:
        tree = deep_merge(tree, values)
    for item in overrides or []:
        apply_override(tree, item)
    config = _build(TrainConfig, tree, "")
    config.validate()
    return config


__all__ = ["TrainConfig", "load_config", "apply_override", "resolve_path", "deep_merge", "read_yaml_tree"]
