"""Datasets, batching and collation for training and evaluation.

A batch is a few *images*, each carrying all its instructions (an "image group"): the images are encoded once and
one batched `segment` call covers every instruction, each with its own task template (encode once, segment many).

Data specs (used by the trainer's YAML and the evaluate command):
    synthetic:SPLIT[:N]     the in-memory synthetic Inst2Seg split (instructsam_tools.data.synthetic), N samples
                            (instructions; default 800 = 200 images x 4)
    synthetic_phrases:SPLIT[:N]   the same scenes with SAM3-style concept prompts ("red circle", "object") instead
                            of instructions: every matching object, a quarter of them absent (SAM3's own task)
    synthetic_contrast:SPLIT[:N]  the instruction families, with half the scenes asked a minimal-pair set instead
                            (one attribute, only its value changing: "all the red objects", "all the blue objects")
    inst2seg:DIR[:SPLIT]    an Inst2Seg directory on disk (default split "test")
    synthetic_qa:SPLIT[:N]  the same scenes with questions and answers about them (data.scene_questions), for the
                            VLM's scene-language objective (training.language_objective); default 1200 = 200 x 6
    synthetic_video:SPLIT[:N]   N synthetic video clips (default 200) of `clip_frames` frames, for the tracking
                            objective (instructsam_tools.training.tracker_objective); a batch is clips instead of image groups
    refer:ROOT:DATASET:SPLIT_BY[:SPLIT]   RefCOCO / RefCOCO+ / RefCOCOg in the lichengunc/refer layout
                            (data.loaders.load_refcoco, e.g. refer:data/refer:refcoco:unc:val), one target each
    grefcoco:ROOT:SPLIT_BY[:SPLIT]        gRefCOCO (data.loaders.load_grefcoco): no, one or several targets
The refer/grefcoco samples are read into memory with their images (sized for fixtures and validation splits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from instructsam_tools.data.format import InstructionSample
from instructsam_tools.data.inst2seg import Inst2SegDataset
from instructsam_tools.data.synthetic import SPLITS, SyntheticInst2Seg, SyntheticSceneQuestions, SyntheticVideos

DEFAULT_SYNTHETIC_SAMPLES = 800
DEFAULT_SYNTHETIC_VIDEOS = 200
DEFAULT_SYNTHETIC_QUESTIONS = 1200


def build_dataset(spec: str, image_size: int = 128, seed: int = 0, clip_frames: int = 8):
    """A dataset (indexable -> InstructionSample, or VideoSample for synthetic_video) from a data spec string
    (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind in ("synthetic", "synthetic_phrases", "synthetic_contrast", "synthetic_qa", "synthetic_video"):
        split, _, count = rest.partition(":")
        if split not in SPLITS:
            raise ValueError(f"data spec {spec!r}: unknown synthetic split {split!r}; expected one of {SPLITS}")
        default = {"synthetic_video": DEFAULT_SYNTHETIC_VIDEOS, "synthetic_qa": DEFAULT_SYNTHETIC_QUESTIONS}.get(
            kind, DEFAULT_SYNTHETIC_SAMPLES)
        try:
            size = int(count) if count else default
        except ValueError:
            raise ValueError(f"data spec {spec!r}: sample count {count!r} is not an integer") from None
        if size <= 0:
            raise ValueError(f"data spec {spec!r}: sample count must be positive, got {size}")
        if kind == "synthetic_video":
            if clip_frames < 2:
                raise ValueError("data.clip_frames must be >= 2 (a prompted frame and one to track), "
                                 f"got {clip_frames}")
            return SyntheticVideos(split, size=size, image_size=image_size, seed=seed, num_frames=clip_frames)
        if kind == "synthetic_qa":
            return SyntheticSceneQuestions(split, size=size, image_size=image_size, seed=seed)
        return SyntheticInst2Seg(split, size=size, image_size=image_size, seed=seed,
                                 prompts={"synthetic_phrases": "phrases", "synthetic_contrast": "contrast"}.get(
                                     kind, "instructions"))
    if kind == "inst2seg":
        root, _, split = rest.rpartition(":") if ":" in rest else (rest, "", "test")
        if not root:
            raise ValueError(f"data spec {spec!r}: expected inst2seg:DIR[:SPLIT]")
        if not Path(root).is_dir():
            raise FileNotFoundError(f"data spec {spec!r}: Inst2Seg directory {root!r} does not exist")
        return Inst2SegDataset(root, split or "test")
    if kind in ("refer", "grefcoco"):
        from instructsam_tools.data.loaders import load_grefcoco, load_refcoco

        parts = rest.split(":")
        need = 3 if kind == "refer" else 2
        if len(parts) not in (need, need + 1) or not all(parts):
            raise ValueError(f"data spec {spec!r}: expected " + ("refer:ROOT:DATASET:SPLIT_BY[:SPLIT]" if kind ==
                             "refer" else "grefcoco:ROOT:SPLIT_BY[:SPLIT]"))
        split = parts[need] if len(parts) > need else None
        samples = (load_refcoco(parts[0], parts[1], parts[2], split=split) if kind == "refer"
                   else load_grefcoco(parts[0], parts[1], split=split))
        loaded = list(samples)
        if not loaded:
            raise ValueError(f"data spec {spec!r}: no samples" + (f" in split {split!r}" if split else ""))
        return loaded
    raise ValueError(f"unknown data spec {spec!r}; expected 'synthetic:SPLIT[:N]', 'synthetic_phrases:SPLIT[:N]', "
                     f"'synthetic_contrast:SPLIT[:N]', "
                     f"'synthetic_qa:SPLIT[:N]', 'inst2seg:DIR[:SPLIT]', "
                     f"'synthetic_video:SPLIT[:N]', 'refer:ROOT:DATASET:SPLIT_BY[:SPLIT]' or "
                     f"'grefcoco:ROOT:SPLIT_BY[:SPLIT]'")


def _by_image(image_ids) -> list[list[int]]:
    """Sample indices grouped by image id, the groups in order of each image's first sample."""
    groups: dict = {}
    for i, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(i)
    return list(groups.values())


def image_groups(dataset) -> list[list[int]]:
    """Sample indices grouped by image, in dataset order (without decoding any image)."""
    if isinstance(dataset, (SyntheticInst2Seg, SyntheticSceneQuestions)):
        k, n = dataset.instructions_per_image, len(dataset)
        return [list(range(start, min(start + k, n))) for start in range(0, n, k)]
    if isinstance(dataset, Inst2SegDataset):
        return _by_image(ins["image_id"] for ins in dataset.instructions)
    if isinstance(dataset, list):  # loaded samples (refer, grefcoco)
        return _by_image(sample.image_id for sample in dataset)
    return [[i] for i in range(len(dataset))]  # videos, or an unknown dataset: one instruction per image


@dataclass
class Batch:
    """M images and N >= M instructions on them (image_index[n] = the image of instruction n)."""

    images: list[np.ndarray]
    instructions: list[str]
    tasks: list[str]
    image_index: list[int]
    # per instruction (see sample_target): masks (T, H, W) bool, boxes (T, 4) normalised xyxy, labels (T,)
    targets: list[dict]
    samples: list[InstructionSample] = field(repr=False)

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def model_inputs(self) -> tuple:  # SegmentationStep's arguments
        return (self.images, self.instructions, self.image_index, self.tasks)

    def targets_on(self, device: torch.device) -> list[dict]:
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in self.targets]


def sample_target(sample: InstructionSample) -> dict:
    """Training target of one sample: the targets then the image's other annotated objects, with masks at the
    original resolution, boxes normalised by the image size and labels 1 (target) / 0 (other object)."""
    h, w = sample.image.shape[:2]
    scale = np.array([w, h, w, h], dtype=np.float32)
    boxes = np.concatenate([np.asarray(sample.boxes, np.float32).reshape(-1, 4),
                            np.asarray(sample.other_boxes, np.float32).reshape(-1, 4)]) / scale
    masks = np.concatenate([np.asarray(sample.masks, bool), np.asarray(sample.other_masks, bool)])
    labels = torch.cat([torch.ones(len(sample.masks)), torch.zeros(len(sample.other_masks))])
    return {"masks": torch.from_numpy(masks), "boxes": torch.from_numpy(boxes).clamp_(0.0, 1.0), "labels": labels}


def collate_groups(dataset, groups: list[list[int]]):
    """A Batch of image groups, or a ClipBatch of videos (one video per group)."""
    if isinstance(dataset, SyntheticVideos):
        return collate_clips(dataset, [g[0] for g in groups])
    if isinstance(dataset, SyntheticSceneQuestions):
        return collate_questions(dataset, groups)
    images, instructions, tasks, image_index, targets, samples = [], [], [], [], [], []
    for g, indices in enumerate(groups):
        group = [dataset[i] for i in indices]
        images.append(group[0].image)
        for sample in group:
            if sample.image_id != group[0].image_id:
                raise ValueError(f"image group {indices} mixes images {group[0].image_id} and {sample.image_id}")
            instructions.append(sample.text)
            tasks.append(sample.task or "referring")
            image_index.append(g)
            targets.append(sample_target(sample))
            samples.append(sample)
    return Batch(images, instructions, tasks, image_index, targets, samples)


class GroupBatches(torch.utils.data.Dataset):
    """Batch b = collated image groups `batches[b]`; a pure function of b, so any DataLoader worker can build it."""

    def __init__(self, dataset, batches: list[list[list[int]]]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Batch:
        return collate_groups(self.dataset, self.batches[b])


def epoch_batches(num_groups: int, images_per_batch: int, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1, shuffle: bool = True) -> list[list[int]]:
    """This rank's batches of group indices for one epoch (DistributedSampler-like deterministic sharding).

    The group order is a permutation seeded by (seed, epoch); consecutive chunks of `images_per_batch` groups
    are dealt to the ranks in turn. The remainder that would leave some rank without a full batch is dropped,
    so every rank runs the same number of steps. A pure function of its arguments: resuming mid-epoch just skips
    the batches already done.
    """
    if images_per_batch < 1:
        raise ValueError(f"images_per_batch must be >= 1, got {images_per_batch}")
    order = np.arange(num_groups)
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_groups)
    per_step = images_per_batch * world_size
    steps = num_groups // per_step
    if steps == 0:
        raise ValueError(f"{num_groups} images cannot fill one step of {images_per_batch} images x {world_size} "
                         f"rank(s); lower images_per_batch or use more data")
    return [order[(s * world_size + rank) * images_per_batch:(s * world_size + rank + 1) * images_per_batch].tolist()
            for s in range(steps)]


def _identity(batch: Batch) -> Batch:
    return batch


def make_loader(dataset, groups: list[list[int]], batch_groups: list[list[int]], num_workers: int = 0):
    """A DataLoader over ready-made batches (lists of group indices). It gets its own torch.Generator so creating
    it never draws from the global RNG (which exact resume restores)."""
    batches = [[groups[g] for g in batch] for batch in batch_groups]
    return torch.utils.data.DataLoader(GroupBatches(dataset, batches), batch_size=None, shuffle=False,
                                       num_workers=num_workers, collate_fn=_identity,
                                       generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False)


@dataclass
class QuestionBatch:
    """M images and N >= M questions about them, with their answers (the language objective)."""

    images: list[np.ndarray]
    questions: list[str]
    answers: list[str]
    kinds: list[str]
    image_index: list[int]

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def model_inputs(self) -> tuple:  # LanguageStep's arguments
        return (self.images, self.questions, self.answers, self.image_index)

    def targets_on(self, device: torch.device) -> None:  # the answers are the targets, inside the step's output
        return None


def collate_questions(dataset, groups: list[list[int]]) -> QuestionBatch:
    batch = QuestionBatch([], [], [], [], [])
    for g, indices in enumerate(groups):
        for i in indices:
            sample = dataset[i]
            if i == indices[0]:
                batch.images.append(sample.image)
            batch.questions.append(sample.question)
            batch.answers.append(sample.answer)
            batch.kinds.append(sample.kind)
            batch.image_index.append(g)
    return batch


def first_frame_objects(masks: dict[int, np.ndarray]) -> list[int]:
    """The object ids of a clip (id -> (T, H, W) masks) visible on its first frame: the ones a tracker is
    prompted with."""
    return [k for k in sorted(masks) if masks[k][0].any()]


@dataclass
class ClipBatch:
    """Video clips: frames (T, H, W, 3) uint8 each, and per clip {object id: (T, H, W) bool mask}."""

    clips: list[np.ndarray]
    masks: list[dict[int, np.ndarray]]

    def __len__(self) -> int:  # samples = prompted objects (what a step is normalised by)
        return sum(len(first_frame_objects(m)) for m in self.masks)

    @property
    def num_images(self) -> int:
        return sum(len(c) for c in self.clips)

    def model_inputs(self) -> tuple:
        return (self.clips, [{k: m[k][0] for k in first_frame_objects(m)} for m in self.masks])

    def targets_on(self, device: torch.device) -> list[dict[int, torch.Tensor]]:
        return [{k: torch.from_numpy(np.asarray(v[1:], dtype=bool)).to(device) for k, v in m.items()}
                for m in self.masks]


def collate_clips(videos, indices: list[int]) -> ClipBatch:
    samples = [videos[i] for i in indices]
    return ClipBatch([s.frames for s in samples], [s.masks for s in samples])


__all__ = ["first_frame_objects", "ClipBatch", "collate_clips", "QuestionBatch", "collate_questions", "Batch",
           "build_dataset", "image_groups",
           "sample_target", "collate_groups", "epoch_batches", "make_loader", "GroupBatches",
           "DEFAULT_SYNTHETIC_SAMPLES"]
