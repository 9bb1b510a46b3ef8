"""Synthetic videos: shapes moving (linear or bouncing), occluding each other, entering and leaving.

Object ids persist across frames; each frame has the visible mask of every object. A video
instruction names a set of objects by their attributes (category / attribute / exclusion / union /
reasoning / no-target families; position-based families are left out because their answer would
change with time); its target ids per frame are the named objects visible in that frame.

On-disk layout (see docs/dataset_format.md)::

    videos/<split>/<video_id>/frames/000.png ...
    videos/<split>/<video_id>/annotations.json
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instructsam_tools.data.format import InstructionSample
from instructsam_tools.data.inst2seg import Inst2SegFormatError, check_segmentation, decode_segmentation, encode_mask, mask_to_box, save_png
from instructsam_tools.data.synthetic_language import FAMILY_WEIGHTS, LanguageContext, generate_instructions
from instructsam_tools.data.synthetic_scene import (BACKGROUNDS, HELDOUT_PAIRS, SHAPES, SceneObject, composite, min_visible_area,
                              render_background, sample_appearance, sample_attributes, sample_radius, shape_mask)

VIDEO_FAMILIES = ("category", "attribute", "exclusion", "union", "reasoning", "no_target")


@dataclass
class VideoSample:
    """A video with persistent object ids and its instructions.

    masks[obj_id] is the (T, H, W) visible mask of that object over time; centers[obj_id] its (T, 2)
    centre (x, y) in pixels (possibly outside the frame). instructions: dicts with id, text, task
    ("video"), family, target_ids (all objects named) and targets_per_frame (those visible in frame t).
    """

    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    objects: dict[int, dict]  # obj_id -> {"shape", "color", "size", "texture", "motion"}
    masks: dict[int, np.ndarray]
    centers: dict[int, np.ndarray] = field(default_factory=dict)
    instructions: list[dict] = field(default_factory=list)
    min_visible_area: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def frame_sample(self, t: int, instruction: int = 0) -> InstructionSample:
        """Frame t with one instruction as an InstructionSample (targets = visible named objects)."""
        ins = self.instructions[instruction]
        ids = list(ins["targets_per_frame"][t])
        h, w = self.frames.shape[1:3]
        masks = np.stack([self.masks[i][t] for i in ids]) if ids else np.zeros((0, h, w), dtype=bool)
        boxes = np.array([mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
        return InstructionSample(image_id=t, image=self.frames[t], instruction_id=f"{ins['id']}/{t}",
                                 text=ins["text"], task=ins["task"], family=ins["family"], target_ids=ids,
                                 masks=masks, boxes=boxes)


def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at v from p0 and reflecting off lo and hi (triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(t, p0, dtype=np.float64)
    u = (p0 - lo + v * t) % (2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def _trajectory(rng: np.random.Generator, r: float, size: int, T: int) -> tuple[str, np.ndarray]:
    """(motion kind, (T, 2) centres). Kinds: bounce / linear / enter / leave."""
    t = np.arange(T, dtype=np.float64)
    speed = rng.uniform(0.025, 0.06) * size
    ang = rng.uniform(0, 2 * np.pi)
    v = np.array([np.cos(ang), np.sin(ang)]) * speed
    kind = ["bounce", "linear", "enter", "leave"][int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]
    if kind == "bounce":
        p0 = rng.uniform(r, size - r, size=2)
        return kind, np.stack([_bounce(p0[i], v[i], t, r, size - r) for i in range(2)], 1)
    if kind == "enter":  # starts fully outside, crosses into view: moving away from a border point
        side = int(rng.integers(4))
        normal = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][side], dtype=np.float64)
        start = np.array([-r - 1, size + r + 1, -r - 1, size + r + 1], dtype=np.float64)[side]
        p0 = rng.uniform(0.2 * size, 0.8 * size, size=2)
        p0[side // 2] = start
        v = normal * speed * rng.uniform(1.2, 1.8) + rng.uniform(-0.3, 0.3, size=2) * speed
        return kind, p0 + t[:, None] * v
    if kind == "leave":  # starts inside, heads out through the nearest border
        p0 = rng.uniform(0.25 * size, 0.75 * size, size=2)
        side = int(rng.integers(4))
        normal = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]][side], dtype=np.float64)
        v = normal * speed * rng.uniform(1.2, 1.8) + rng.uniform(-0.3, 0.3, size=2) * speed
        return kind, p0 + t[:, None] * v
    p0 = rng.uniform(r, size - r, size=2)
    return kind, p0 + t[:, None] * v


def generate_video(rng: np.random.Generator, video_id: str = "0", image_size: int = 128, num_frames: int = 12,
                   max_objects: int = 6, heldout: str = "exclude", instructions_per_video: int = 2) -> VideoSample:
    """Render a video; `heldout` as in synthetic_scene.generate_scene."""
    S, T = image_size, num_frames
    n = int(rng.integers(1, max_objects + 1))
    heldout_list = sorted(HELDOUT_PAIRS)
    allow = (lambda c, s: (c, s) not in HELDOUT_PAIRS) if heldout == "exclude" else (lambda c, s: True)
    objs, centers = [], {}
    for k in range(n):
        shape, color, size, texture = sample_attributes(rng, allow)
        if heldout == "include" and k == 0:
            color, shape = heldout_list[int(rng.integers(len(heldout_list)))]
        radius = sample_radius(rng, size, S)
        kind, traj = _trajectory(rng, radius, S, T)
        o = SceneObject(obj_id=k + 1, shape=shape, color=color, size=size, texture=texture,
                        center=tuple(traj[0]), radius=radius,
                        rotation=float(rng.uniform(-15, 15)) if shape in ("square", "cross") else
                        float(rng.uniform(-180, 180)) if shape in ("triangle", "star") else 0.0)
        sample_appearance(rng, o, S)
        objs.append((o, kind))
        centers[o.obj_id] = traj
    bg = render_background(rng, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], S, S)
    min_area = min_visible_area(S)
    frames = np.zeros((T, S, S, 3), dtype=np.uint8)
    masks = {o.obj_id: np.zeros((T, S, S), dtype=bool) for o, _ in objs}
    for t in range(T):
        layer = []
        for o, _ in objs:  # fixed paint order = fixed depth, so crossings occlude consistently
            o.center = (float(centers[o.obj_id][t, 0]), float(centers[o.obj_id][t, 1]))
            o.full_mask = shape_mask(o.shape, o.center, o.radius, o.rotation, S, S)
            layer.append(o)
        frames[t] = composite(bg, layer, rng, noise_sigma=2.0)
        for o in layer:
            masks[o.obj_id][t] = o.visible_mask

    # instructions over every object that is ever visible enough; answers are attribute-based
    ever = [o for o, _ in objs if (masks[o.obj_id].sum(axis=(1, 2)) >= min_area).any()]
    present = [{i for i, m in masks.items() if m[t].sum() >= min_area} for t in range(T)]
    ctx = LanguageContext(image_size=S, allow_pair=allow if heldout == "exclude" else (lambda c, s: True))
    weights = {f: FAMILY_WEIGHTS[f] for f in VIDEO_FAMILIES}  # time-invariant families only
    made = generate_instructions(rng, ever, ctx, instructions_per_video, families=weights)
    instructions = []
    for j, ins in enumerate(made):
        ids = ins.target_ids
        instructions.append({"id": f"{video_id}-{j}", "text": ins.text, "task": "video", "family": ins.family,
                             "target_ids": ids, "targets_per_frame": [sorted(set(ids) & present[t]) for t in range(T)]})
    return VideoSample(video_id=str(video_id), frames=frames,
                       objects={o.obj_id: {**o.attributes, "motion": kind} for o, kind in objs},
                       masks=masks, centers=centers, instructions=instructions, min_visible_area=min_area)


# ----------------------------------------------------------------------------------------------
# disk


def write_video(video_dir: str | os.PathLike, video: VideoSample, split: str = "") -> Path:
    """Write frames/NNN.png and annotations.json (per-frame RLE, persistent object ids)."""
    video_dir = Path(video_dir)
    T, H, W = video.frames.shape[:3]
    frames = []
    for t in range(T):
        name = f"frames/{t:03d}.png"
        save_png(video_dir / name, video.frames[t])
        anns = []
        for oid in sorted(video.masks):
            m = video.masks[oid][t]
            if m.any():
                x1, y1, x2, y2 = mask_to_box(m).tolist()
                anns.append({"object_id": oid, "segmentation": encode_mask(m), "area": int(m.sum()),
                             "bbox": [x1, y1, x2 - x1, y2 - y1]})
        frames.append({"index": t, "file_name": name, "annotations": anns})
    data = {
        "video": {"id": video.video_id, "split": split, "num_frames": T, "height": H, "width": W,
                  "min_visible_area": video.min_visible_area},
        "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)],
        "objects": [{"id": oid, "category_id": SHAPES.index(a["shape"]) + 1, "attributes": a,
                     "centers": np.round(video.centers[oid], 3).tolist()} for oid, a in sorted(video.objects.items())],
        "frames": frames,
        "instructions": video.instructions,
    }
    path = video_dir / "annotations.json"
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return path


def read_video(video_dir: str | os.PathLike) -> VideoSample:
    """Read a video written by write_video, validating ids and RLEs with errors naming the field."""
    from PIL import Image

    video_dir = Path(video_dir)
    path = video_dir / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"video annotations not found: {path}")
    with open(path) as f:
        data = json.load(f)
    for key in ("video", "objects", "frames", "instructions"):
        if key not in data:
            raise Inst2SegFormatError(f"{path}: top level: missing key '{key}'")
    v = data["video"]
    T, H, W = v["num_frames"], v["height"], v["width"]
    if len(data["frames"]) != T:
        raise Inst2SegFormatError(f"{path}: frames: {len(data['frames'])} entries but video.num_frames={T}")
    objects = {o["id"]: dict(o["attributes"]) for o in data["objects"]}
    masks = {oid: np.zeros((T, H, W), dtype=bool) for oid in objects}
    frames = np.zeros((T, H, W, 3), dtype=np.uint8)
    for t, fr in enumerate(data["frames"]):
        with Image.open(video_dir / fr["file_name"]) as im:
            frames[t] = np.asarray(im.convert("RGB"))
        for a in fr["annotations"]:
            where = f"{path}: frames[{t}] object_id={a.get('object_id')!r}"
            if a.get("object_id") not in objects:
                raise Inst2SegFormatError(f"{where}: unknown object id (objects: {sorted(objects)})")
            try:
                check_segmentation(a["segmentation"], H, W)
            except (ValueError, KeyError) as e:
                raise Inst2SegFormatError(f"{where}: field 'segmentation': {e}") from None
            masks[a["object_id"]][t] = decode_segmentation(a["segmentation"], H, W)
    for ins in data["instructions"]:
        for t in ins["target_ids"]:
            if t not in objects:
                raise Inst2SegFormatError(f"{path}: instruction {ins['id']!r}: target id {t} is not an object")
        if len(ins["targets_per_frame"]) != T:
            raise Inst2SegFormatError(f"{path}: instruction {ins['id']!r}: targets_per_frame has "
                                      f"{len(ins['targets_per_frame'])} entries, expected {T}")
    centers = {o["id"]: np.asarray(o["centers"]) for o in data["objects"] if "centers" in o}
    return VideoSample(video_id=str(v["id"]), frames=frames, objects=objects, masks=masks, centers=centers,
                       instructions=data["instructions"], min_visible_area=int(v.get("min_visible_area", 0)))
