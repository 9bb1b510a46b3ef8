"""Synthetic Inst2Seg: the project's own deterministic instruction -> instance-set data.

Scenes (synthetic_scene), instructions over their scene graphs (synthetic_language) and short
videos (synthetic_video), in four splits:

    train / val / test   no object and no instruction involves a HELDOUT_PAIRS colour x shape pair
    heldout              every scene contains a held-out pair and instructions are chosen to involve
                         one (by naming it or by having it among the targets) whenever the scene allows

Everything is a pure function of (seed, split, index): `SyntheticInst2Seg` generates samples on the
fly in memory, and the CLI writes the identical samples in the Inst2Seg format:

    python -m instructsam_tools.data.synthetic --out DIR --train 2000 --val 200 --test 200 --heldout 200 \\
        --image-size 128 --seed 0
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructsam_tools.data.format import InstructionSample
from instructsam_tools.data.inst2seg import encode_mask, mask_to_box, save_png, write_inst2seg
from instructsam_tools.data.scene_questions import SceneQuestion, scene_questions
from instructsam_tools.data.synthetic_language import (PHRASE_FAMILIES, Instruction, LanguageContext, contrast_set,
                                                      generate_instructions)
from instructsam_tools.data.synthetic_scene import HELDOUT_PAIRS, SHAPES, Scene, generate_scene
from instructsam_tools.data.synthetic_video import VideoSample, generate_video, write_video

SPLITS = ("train", "val", "test", "heldout")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
_SCENE, _LANGUAGE, _VIDEO, _QUESTIONS = 0, 1, 2, 3  # independent random streams per item
# family weights per prompt kind (None: FAMILY_WEIGHTS); "contrast": a share of the scenes get a minimal-pair set
PROMPT_FAMILIES = {"instructions": None, "phrases": PHRASE_FAMILIES, "contrast": None}
CONTRAST_SHARE = 0.5


def prompt_families(prompts: str) -> dict | None:
    """The family weights of a prompt kind ("instructions" or "phrases"), or a ValueError naming the kinds."""
    if prompts not in PROMPT_FAMILIES:
        raise ValueError(f"prompts must be one of {tuple(PROMPT_FAMILIES)}, got {prompts!r}")
    return PROMPT_FAMILIES[prompts]


def item_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index), stream]))


def involves_heldout(ins: Instruction) -> bool:
    """Does the instruction name a held-out colour x shape pair or target an object that is one?"""
    return bool(ins.mentions & HELDOUT_PAIRS) or any((o.color, o.shape) in HELDOUT_PAIRS for o in ins.targets)


def allow_pair_for(split: str):
    if split == "heldout":
        return lambda c, s: True
    return lambda c, s: (c, s) not in HELDOUT_PAIRS


def split_scene(split: str, scene_index: int, image_size: int, seed: int, max_objects: int
                ) -> tuple[int, Scene, LanguageContext]:
    """(image_id, scene, language context) of one scene of a split: what every kind of text about it shares."""
    image_id = scene_index + 1
    scene = generate_scene(item_rng(seed, split, scene_index, _SCENE), image_size=image_size,
                           max_objects=max_objects, heldout="include" if split == "heldout" else "exclude",
                           first_obj_id=image_id * 100 + 1)
    ctx = LanguageContext(image_size=image_size, allow_pair=allow_pair_for(split),
                          focus_pairs=HELDOUT_PAIRS if split == "heldout" else frozenset())
    return image_id, scene, ctx


def generate_image_item(split: str, scene_index: int, image_size: int = 128, seed: int = 0,
                        instructions_per_image: int = 4, max_objects: int = 12, prompts: str = "instructions"
                        ) -> tuple[int, Scene, list[Instruction]]:
    """(image_id, scene, instructions) for one scene of a split; a pure function of its arguments. prompts:
    "instructions" (the instruction families), "phrases" (SAM3-style concept prompts; the scene is the same) or
    "contrast" (the instruction families, with CONTRAST_SHARE of the scenes given a minimal-pair set instead:
    synthetic_language.contrast_set)."""
    families = prompt_families(prompts)
    image_id, scene, ctx = split_scene(split, scene_index, image_size, seed, max_objects)
    rng = item_rng(seed, split, scene_index, _LANGUAGE)
    require = involves_heldout if split == "heldout" else None
    pairs = []
    if prompts == "contrast" and rng.random() < CONTRAST_SHARE:
        # an attribute with fewer values than instructions: the families fill the rest, with other texts
        pairs = contrast_set(rng, scene.visible_objects(), instructions_per_image) or []
    rest = instructions_per_image - len(pairs)
    fill = generate_instructions(rng, scene.visible_objects(), ctx, rest, require=require, families=families,
                                 taken=[p.text for p in pairs]) if rest else []
    return image_id, scene, pairs + fill


def _masks_and_boxes(objects, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.stack([o.visible_mask for o in objects]) if objects else np.zeros((0, h, w), dtype=bool)
    return masks, np.array([mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)


def to_sample(image_id: int, scene: Scene, ins: Instruction, instruction_id: str) -> InstructionSample:
    targets = sorted(ins.targets, key=lambda o: o.obj_id)
    target_ids = {o.obj_id for o in targets}
    others = [o for o in scene.visible_objects() if o.obj_id not in target_ids]  # (hidden slivers are neither)
    h, w = scene.image.shape[:2]
    masks, boxes = _masks_and_boxes(targets, h, w)
    other_masks, other_boxes = _masks_and_boxes(others, h, w)
    return InstructionSample(image_id=image_id, image=scene.image, instruction_id=instruction_id, text=ins.text,
                             task=ins.task, family=ins.family, target_ids=[o.obj_id for o in targets],
                             masks=masks, boxes=boxes, other_masks=other_masks, other_boxes=other_boxes)


def scene_position(idx: int, size: int, per_scene: int) -> tuple[int, int]:
    """(scene index, text index in the scene) of sample `idx` (negative counts from the end) of `size` samples."""
    if idx < 0:
        idx += size
    if not 0 <= idx < size:
        raise IndexError(f"index {idx} out of range for {size} samples")
    return divmod(idx, per_scene)


class SyntheticInst2Seg:
    """In-memory synthetic split: sample i = instruction i % K of scene i // K (K instructions per image).

    Deterministic: the same (seed, split, index) always gives the same bytes, in any access order,
    and equals what the CLI writes to disk. Torch-free; wrap it in a torch Dataset/DataLoader as is.
    """

    def __init__(self, split: str = "train", size: int = 1000, image_size: int = 128, seed: int = 0,
                 instructions_per_image: int = 4, max_objects: int = 12, prompts: str = "instructions") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if image_size < 32:
            raise ValueError(f"image_size {image_size} too small (objects need >= ~10 px); use >= 32")
        self.split, self.size, self.image_size, self.seed = split, int(size), int(image_size), int(seed)
        self.instructions_per_image, self.max_objects = int(instructions_per_image), int(max_objects)
        prompt_families(prompts)  # refuse an unknown kind here, not at the first sample
        self.prompts = prompts
        self._cache: tuple[int, tuple] | None = None  # last scene: consecutive indices share it

    def __len__(self) -> int:
        return self.size

    @property
    def num_images(self) -> int:
        return math.ceil(self.size / self.instructions_per_image)

    def scene(self, scene_index: int) -> tuple[int, Scene, list[Instruction]]:
        if self._cache is None or self._cache[0] != scene_index:
            self._cache = (scene_index, generate_image_item(self.split, scene_index, self.image_size, self.seed,
                                                            self.instructions_per_image, self.max_objects,
                                                            self.prompts))
        return self._cache[1]

    def __getitem__(self, idx: int) -> InstructionSample:
        scene_index, k = scene_position(idx, self.size, self.instructions_per_image)
        image_id, scene, instructions = self.scene(scene_index)
        return to_sample(image_id, scene, instructions[k], f"{self.split}-{image_id:06d}-{k}")


@dataclass(frozen=True)
class QuestionSample:
    """One question about one image, with its answer (the VLM's scene-language pretraining)."""

    image_id: int
    image: np.ndarray  # (H, W, 3) uint8
    question: str
    answer: str
    kind: str  # scene_questions.QUESTION_KINDS


class SyntheticSceneQuestions:
    """In-memory scene-language split: sample i = question i % K about scene i // K, the scenes those of
    SyntheticInst2Seg (the same split, seed and image size give the same images). Deterministic as that class."""

    def __init__(self, split: str = "train", size: int = 1200, image_size: int = 128, seed: int = 0,
                 questions_per_image: int = 6, max_objects: int = 12) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.split, self.size, self.image_size, self.seed = split, int(size), int(image_size), int(seed)
        self.instructions_per_image, self.max_objects = int(questions_per_image), int(max_objects)
        self._cache: tuple[int, tuple] | None = None

    def __len__(self) -> int:
        return self.size

    def scene(self, scene_index: int) -> tuple[int, Scene, list[SceneQuestion]]:
        if self._cache is None or self._cache[0] != scene_index:
            image_id, scene, ctx = split_scene(self.split, scene_index, self.image_size, self.seed, self.max_objects)
            k = self.instructions_per_image
            questions = scene_questions(item_rng(self.seed, self.split, scene_index, _QUESTIONS),
                                        scene.visible_objects(), ctx, k)
            if len(questions) < k:
                raise RuntimeError(f"{self.split} scene {scene_index}: only {len(questions)} of {k} distinct "
                                   f"questions")
            self._cache = (scene_index, (image_id, scene, questions))
        return self._cache[1]

    def __getitem__(self, idx: int) -> QuestionSample:
        scene_index, k = scene_position(idx, self.size, self.instructions_per_image)
        image_id, scene, questions = self.scene(scene_index)
        q = questions[k]
        return QuestionSample(image_id, scene.image, q.question, q.answer, q.kind)


class SyntheticVideos:
    """In-memory synthetic videos of a split, indexable -> VideoSample (deterministic like the images)."""

    def __init__(self, split: str = "train", size: int = 10, image_size: int = 128, seed: int = 0,
                 num_frames: int = 12, max_objects: int = 6, instructions_per_video: int = 2) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.split, self.size, self.image_size, self.seed = split, int(size), int(image_size), int(seed)
        self.num_frames, self.max_objects, self.instructions_per_video = num_frames, max_objects, instructions_per_video

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> VideoSample:
        if not 0 <= idx < self.size:
            raise IndexError(f"index {idx} out of range for {self.size} videos")
        return generate_video(item_rng(self.seed, self.split, idx, _VIDEO), video_id=f"{self.split}-v{idx:05d}",
                              image_size=self.image_size, num_frames=self.num_frames, max_objects=self.max_objects,
                              heldout="include" if self.split == "heldout" else "exclude",
                              instructions_per_video=self.instructions_per_video)


# ----------------------------------------------------------------------------------------------
# writing


def write_split(out: str | os.PathLike, split: str, num_images: int, image_size: int = 128, seed: int = 0,
                instructions_per_image: int = 4, max_objects: int = 12, num_videos: int = 0,
                num_frames: int = 12, progress: bool = True) -> Path:
    """Generate one split into `out` in the Inst2Seg format (+ videos/<split>/); returns the JSON path."""
    from tqdm import tqdm

    out = Path(out)
    images, annotations, instructions = [], [], []
    for s in tqdm(range(num_images), desc=f"{split} images", disable=not progress, unit="img"):
        image_id, scene, made = generate_image_item(split, s, image_size, seed, instructions_per_image, max_objects)
        file_name = f"{split}/{image_id:06d}.png"
        save_png(out / "images" / file_name, scene.image)  # written as we go: memory stays flat
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size,
                       "background": scene.background})
        for o in scene.visible_objects():
            x1, y1, x2, y2 = mask_to_box(o.visible_mask).tolist()
            annotations.append({"id": o.obj_id, "image_id": image_id, "category_id": SHAPES.index(o.shape) + 1,
                                "segmentation": encode_mask(o.visible_mask), "area": o.visible_area,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
                                "attributes": {"color": o.color, "size": o.size, "texture": o.texture}})
        for k, ins in enumerate(made):
            instructions.append({"id": f"{split}-{image_id:06d}-{k}", "image_id": image_id, "text": ins.text,
                                 "task": ins.task, "family": ins.family, "target_ids": ins.target_ids})
    path = write_inst2seg(out, images, annotations, instructions, CATEGORIES, split=split,
                          info={"generator": "instructsam_tools.data.synthetic", "seed": seed, "image_size": image_size,
                                "instructions_per_image": instructions_per_image,
                                "heldout_pairs": sorted(map(list, HELDOUT_PAIRS))})
    videos = SyntheticVideos(split, num_videos, image_size, seed, num_frames)
    for v in tqdm(range(num_videos), desc=f"{split} videos", disable=not progress or num_videos == 0, unit="vid"):
        video = videos[v]
        write_video(out / "videos" / split / video.video_id, video, split=split)
    return path


def preview_samples(image_size: int = 128, seed: int = 0) -> tuple[list, object]:
    """What the contact sheet shows by default: one sample per family from the train split, four held-out ones,
    and the busiest of a few training videos that has an object entering or leaving."""
    from instructsam_tools.data.synthetic_language import FAMILIES

    ds = SyntheticInst2Seg("train", 400, image_size, seed)
    samples, seen = [], set()
    for i in range(len(ds)):
        s = ds[i]
        if s.family not in seen:
            seen.add(s.family)
            samples.append(s)
        if len(seen) == len(FAMILIES):
            break
    held = SyntheticInst2Seg("heldout", 40, image_size, seed)
    samples += [held[i] for i in (0, 5, 10, 15)]
    vids = SyntheticVideos("train", 12, image_size, seed)
    cands = [vids[i] for i in range(len(vids))]
    moving = [v for v in cands if any(o["motion"] in ("enter", "leave") for o in v.objects.values())
              and v.instructions[0]["target_ids"]] or cands
    return samples, max(moving, key=lambda v: len(v.objects))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m instructsam_tools.data.synthetic",
                                description="Write the synthetic Inst2Seg dataset (deterministic in --seed).")
    p.add_argument("--out", required=True, help="output root directory")
    for split, default in (("train", 2000), ("val", 200), ("test", 200), ("heldout", 200)):
        p.add_argument(f"--{split}", type=int, default=default, help=f"number of {split} images (default {default})")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instructions-per-image", type=int, default=4)
    p.add_argument("--max-objects", type=int, default=12)
    p.add_argument("--videos", type=int, default=4, help="videos per split (default 4)")
    p.add_argument("--video-frames", type=int, default=12)
    p.add_argument("--preview", default=None, help="also save a PNG contact sheet of a few samples here")
    args = p.parse_args(argv)
    for split in SPLITS:
        n = getattr(args, split)
        if n > 0:
            path = write_split(args.out, split, n, args.image_size, args.seed, args.instructions_per_image,
                               args.max_objects, args.videos, args.video_frames)
            print(f"wrote {path}")
    if args.preview:
        from instructsam_tools.data.synthetic_preview import save_contact_sheet
        save_contact_sheet(args.preview, *preview_samples(args.image_size, args.seed))
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
