"""Loaders for dataset layouts people already have; each yields InstructionSample.

    load_coco_categories(instances.json, image_root)   COCO instances -> "all the <category>"
    load_refcoco(data_root, "refcoco", "unc")           RefCOCO / RefCOCO+ / RefCOCOg (refer layout)
    load_grefcoco(data_root, "unc")                     gRefCOCO: multi-target and no-target
    load_reasonseg(split_dir)                           ReasonSeg (LISA): LabelMe-style json + image

Layouts follow the official code: lichengunc/refer refer.py (data_root/<dataset>/refs(<split_by>).p
+ instances.json, images in data_root/images/mscoco/images/train2014), ReLA grefer.py
(data_root/grefcoco/grefs(<split_by>).json + instances.json, images in data_root/images/train2014)
and LISA utils/data_processing.py (ReasonSeg masks).

Missing images: COCO-style annotation files often travel without their images (as in
shared/realdata/refseg). By default a missing image raises FileNotFoundError naming the path;
with missing_image="blank" the loader yields a black placeholder of the size the annotation file
states (warning once), which keeps masks, boxes and text usable, e.g. for statistics or tests.
Each image is decoded once; every sample gets its own copy (safe to augment in place).
"""
from __future__ import annotations

import json
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from instructsam_tools.data.format import InstructionSample
from instructsam_tools.data.inst2seg import decode_segmentation, mask_to_box
from instructsam_tools.data.safe_pickle import UnsafePickleError, load_plain_pickle  # noqa: F401  (re-exported)

MISSING_IMAGE_MODES = ("error", "blank")


# ----------------------------------------------------------------------------- small helpers
def _field(d: dict, key: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"{where}: missing field '{key}'")
    return d[key]


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:  # some ReasonSeg files are cp1252 (LISA falls back the same way)
        return json.loads(path.read_text(encoding="cp1252"))


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


class CocoInstances:
    """Index over a COCO instances json: images, annotations and categories by id, masks, images."""

    def __init__(self, annotation_file, image_root, missing_image: str = "error"):
        if missing_image not in MISSING_IMAGE_MODES:
            raise ValueError(f"missing_image must be one of {MISSING_IMAGE_MODES}, "
                             f"got {missing_image!r}")
        self.path = Path(annotation_file)
        self.image_root = Path(image_root)
        self.missing_image = missing_image
        self._warned = False
        data = _read_json(self.path)
        where = str(self.path)
        self.images = {_field(im, "id", f"{where} images[]"): im
                       for im in _field(data, "images", where)}
        self.anns = {_field(a, "id", f"{where} annotations[]"): a
                     for a in _field(data, "annotations", where)}
        self.categories = {c["id"]: _field(c, "name", f"{where} categories[{c['id']}]")
                           for c in _field(data, "categories", where)}
        self.anns_by_image = defaultdict(list)
        for a in self.anns.values():
            self.anns_by_image[_field(a, "image_id", f"{where} annotation {a['id']}")].append(a)

    def image_info(self, image_id, where: str) -> dict:
        if image_id not in self.images:
            raise ValueError(f"{where}: image_id {image_id} is not in {self.path}")
        return self.images[image_id]

    def size(self, image_id) -> tuple[int, int]:
        info = self.images[image_id]
        where = f"{self.path} image {image_id}"
        return int(_field(info, "height", where)), int(_field(info, "width", where))

    def image(self, image_id) -> np.ndarray:
        """The RGB image, checked against the size in the json (or a blank placeholder)."""
        info = self.image_info(image_id, str(self.path))
        h, w = self.size(image_id)
        path = self.image_root / _field(info, "file_name", f"{self.path} image {image_id}")
        if not path.is_file():
            if self.missing_image == "error":
                raise FileNotFoundError(
                    f"image {path} (image_id {image_id} of {self.path}) not found; set the image "
                    "root, or pass missing_image='blank' to use black placeholders")
            if not self._warned:
                warnings.warn(f"image {path} not found: yielding a black {w}x{h} placeholder "
                              "(further missing images of this file are replaced silently)")
                self._warned = True
            return np.zeros((h, w, 3), dtype=np.uint8)
        image = read_image(path)
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.path} "
                             f"says {w}x{h} for image_id {image_id}")
        return image

    def ann(self, ann_id, where: str) -> dict:
        if ann_id not in self.anns:
            raise ValueError(f"{where}: annotation id {ann_id} is not in {self.path}")
        return self.anns[ann_id]

    def targets(self, anns: list[dict], image_id) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) bool masks and (N, 4) xyxy boxes (from the COCO bbox) of `anns`."""
        h, w = self.size(image_id)
        masks = np.zeros((len(anns), h, w), dtype=bool)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        for i, a in enumerate(anns):
            where = f"{self.path} annotation {a['id']}"
            if a.get("image_id") != image_id:
                raise ValueError(f"{where}: belongs to image {a.get('image_id')}, not {image_id}")
            masks[i] = decode_segmentation(_field(a, "segmentation", where), h, w, where)
            x, y, bw, bh = _field(a, "bbox", where)
            boxes[i] = (x, y, x + bw, y + bh)
        return masks, boxes


# --------------------------------------------------------------------- COCO -> "all the X"
_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep",
                      "skis": "skis", "scissors": "scissors", "broccoli": "broccoli"}


def plural(noun: str) -> str:
    """English plural of a (COCO) category name; the last word carries the plural."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def load_coco_categories(annotation_file, image_root, *, template: str = "all the {plural}",
                         include_crowd: bool = False, negatives_per_image: int = 0, seed: int = 0,
                         missing_image: str = "error") -> Iterator[InstructionSample]:
    """One multi-instance sample per (image, category present): every instance of the category.

    Crowd regions are left out of the targets by default (like COCO detection training); a
    category present only as crowd yields nothing (it is neither a clean positive nor absent).
    negatives_per_image > 0 adds that many no-target samples per image, for categories absent
    from it (chosen with random.Random(seed)). `template` may use {name} and {plural}.
    """
    coco = CocoInstances(annotation_file, image_root, missing_image)
    rng = random.Random(seed)
    for image_id in sorted(coco.images):
        by_cat = defaultdict(list)
        for a in coco.anns_by_image.get(image_id, []):
            by_cat[a["category_id"]].append(a)
        absent = sorted(set(coco.categories) - set(by_cat))
        negatives = rng.sample(absent, min(negatives_per_image, len(absent)))
        image = None
        for cat_id in sorted(by_cat):
            anns = [a for a in by_cat[cat_id] if include_crowd or not a.get("iscrowd", 0)]
            if not anns:
                continue
            if cat_id not in coco.categories:
                raise ValueError(f"{coco.path}: annotation {anns[0]['id']} has unknown "
                                 f"category_id {cat_id}")
            image = coco.image(image_id) if image is None else image
            masks, boxes = coco.targets(anns, image_id)
            name = coco.categories[cat_id]
            yield InstructionSample(
                image_id=image_id, image=image.copy(), instruction_id=f"coco/{image_id}/{cat_id}",
                text=template.format(name=name, plural=plural(name)), task="multi_instance",
                family="category", target_ids=[a["id"] for a in anns], masks=masks, boxes=boxes)
        for cat_id in negatives:
            image = coco.image(image_id) if image is None else image
            name = coco.categories[cat_id]
            yield InstructionSample(
                image_id=image_id, image=image.copy(), instruction_id=f"coco/{image_id}/{cat_id}",
                text=template.format(name=name, plural=plural(name)), task="multi_instance",
                family="no_target")


# ----------------------------------------------------------------- RefCOCO* and gRefCOCO
def _sentence_text(sent: dict, where: str) -> str:
    text = sent.get("sent", sent.get("raw")) if isinstance(sent, dict) else None
    if not isinstance(text, str):
        raise ValueError(f"{where}: sentence without a 'sent' (or 'raw') string")
    return text


def _ref_samples(coco: CocoInstances, refs, refs_path: Path, name: str, split: str | None,
                 targets_of) -> Iterator[InstructionSample]:
    """Shared RefCOCO / gRefCOCO iteration: refs grouped by image, one sample per sentence.

    targets_of(ref, where) -> (list of annotations, family) or None to skip the ref.
    """
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    by_image = defaultdict(list)
    for i, ref in enumerate(refs):
        where = f"{refs_path} refs[{i}]"
        if split is None or _field(ref, "split", where) == split:
            by_image[_field(ref, "image_id", where)].append(ref)
    for image_id in sorted(by_image):
        image = None
        for ref in by_image[image_id]:
            where = f"{refs_path} ref_id={ref.get('ref_id')}"
            coco.image_info(image_id, where)
            picked = targets_of(ref, where)
            if picked is None:
                continue
            anns, family = picked
            masks, boxes = coco.targets(anns, image_id)
            image = coco.image(image_id) if image is None else image
            for sent in _field(ref, "sentences", where):
                yield InstructionSample(
                    image_id=image_id, image=image.copy(),
                    instruction_id=f"{name}/{_field(ref, 'ref_id', where)}/{sent.get('sent_id')}",
                    text=_sentence_text(sent, where), task="referring", family=family,
                    target_ids=[a["id"] for a in anns], masks=masks.copy(), boxes=boxes.copy())


def load_refcoco(data_root, dataset: str = "refcoco", split_by: str = "unc",
                 split: str | None = None, *, image_root=None,
                 missing_image: str = "error") -> Iterator[InstructionSample]:
    """RefCOCO / RefCOCO+ / RefCOCOg in the lichengunc/refer layout: one target per sentence.

    split: exact match on ref['split'] ('train', 'val', 'testA', ...); None = every ref.
    The refs pickle is read with a restricted unpickler that refuses any code (UnsafePickleError).
    """
    root = Path(data_root)
    refs_path = root / dataset / f"refs({split_by}).p"
    refs = load_plain_pickle(refs_path)
    coco = CocoInstances(root / dataset / "instances.json",
                         image_root or root / "images" / "mscoco" / "images" / "train2014",
                         missing_image)

    def targets_of(ref, where):
        return [coco.ann(_field(ref, "ann_id", where), where)], ""

    yield from _ref_samples(coco, refs, refs_path, f"{dataset}({split_by})", split, targets_of)


def load_grefcoco(data_root, split_by: str = "unc", split: str | None = None, *,
                  image_root=None, skip_crowd: bool = True,
                  missing_image: str = "error") -> Iterator[InstructionSample]:
    """gRefCOCO (ReLA grefer layout): ann_id is a list; [-1] (with no_target true) = no target.

    family is "no_target", "single_target" or "multi_target". Crowd targets are dropped as in
    ReLA (its gt masks skip iscrowd); a ref whose targets are all crowd is skipped with a warning.
    grefs(<split_by>).json is read; a grefs(<split_by>).p only with the restricted unpickler.
    """
    root = Path(data_root) / "grefcoco"
    refs_path = root / f"grefs({split_by}).json"
    if refs_path.is_file():
        refs = _read_json(refs_path)
    elif refs_path.with_suffix(".p").is_file():
        refs_path = refs_path.with_suffix(".p")
        refs = load_plain_pickle(refs_path)
    else:
        raise FileNotFoundError(f"neither {refs_path} nor {refs_path.with_suffix('.p')} exists")
    coco = CocoInstances(root / "instances.json",
                         image_root or Path(data_root) / "images" / "train2014", missing_image)

    def targets_of(ref, where):
        ids = _field(ref, "ann_id", where)
        ids = ids if isinstance(ids, list) else [ids]
        empty = ids == [-1]
        if (-1 in ids and not empty) or not ids:
            raise ValueError(f"{where}: ann_id {ids} mixes -1 (no target) with targets or is empty")
        if "no_target" in ref and bool(ref["no_target"]) != empty:
            raise ValueError(f"{where}: no_target={ref['no_target']} disagrees with ann_id={ids}")
        if empty:
            return [], "no_target"
        anns = [coco.ann(i, where) for i in ids]
        kept = [a for a in anns if not (skip_crowd and a.get("iscrowd", 0))]
        if not kept:
            warnings.warn(f"{where}: every target is a crowd region; ref skipped")
            return None
        return kept, "multi_target" if len(kept) > 1 else "single_target"

    yield from _ref_samples(coco, refs, refs_path, f"grefcoco({split_by})", split, targets_of)


# ------------------------------------------------------------------------------- ReasonSeg
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def reasonseg_masks(shapes: list, height: int, width: int, where: str,
                    split_polygons: bool = False) -> tuple[np.ndarray, list[int]]:
    """Target masks as LISA's get_mask_from_json draws them, and the indices of their shapes.

    LISA paints shapes from the largest to the smallest area, "ignore" as 255 and everything
    else as 1 (skipping "flag"), and the target is mask == 1. Merged (default) gives one
    instance, identified by its first target shape; split_polygons gives one instance per target
    shape (its pixels that stayed 1).
    """
    valid = []
    for i, shape in enumerate(shapes):
        label = str(_field(shape, "label", f"{where} shapes[{i}]"))
        if label.lower() == "flag":  # deprecated, meaningless annotations (LISA skips them)
            continue
        pts = np.array([_field(shape, "points", f"{where} shapes[{i}]")], dtype=np.int32)
        if pts.ndim != 3 or pts.shape[-1] != 2:
            raise ValueError(f"{where} shapes[{i}]: 'points' must be a list of [x, y]")
        solo = np.zeros((height, width), np.uint8)
        cv2.polylines(solo, pts, True, 1, 1)
        cv2.fillPoly(solo, pts, 1)
        valid.append((int(solo.sum()), i, label, pts, solo.astype(bool)))
    canvas = np.zeros((height, width), np.uint8)
    order = sorted(valid, key=lambda v: -v[0])  # stable: equal areas keep file order
    for _, _, label, pts, _ in order:
        value = 255 if "ignore" in label.lower() else 1
        cv2.polylines(canvas, pts, True, value, 1)
        cv2.fillPoly(canvas, pts, value)
    target = canvas == 1
    if not split_polygons:
        targets = [i for _, i, label, _, _ in valid if "ignore" not in label.lower()]
        if not target.any():
            return np.zeros((0, height, width), bool), []
        return target[None], [targets[0]]
    masks, ids = [], []
    for _, i, label, _, solo in valid:
        if "ignore" not in label.lower() and (solo & target).any():
            masks.append(solo & target)
            ids.append(i)
    return (np.stack(masks) if masks else np.zeros((0, height, width), bool)), ids


def load_reasonseg(directory, *, split_polygons: bool = False) -> Iterator[InstructionSample]:
    """ReasonSeg split folder (e.g. reason_seg/ReasonSeg/val): <name>.json next to <name>.jpg.

    One sample per string in 'text'; family "reasoning" for is_sentence (long queries) and
    "reasoning_short" otherwise (LISA reports the two separately). image_id is the position of
    the json in sorted order (ReasonSeg has no numeric ids). Ignore regions are not targets and
    are not kept (InstructionSample has no ignore mask).
    """
    directory = Path(directory)
    jsons = sorted(directory.glob("*.json"))
    if not jsons:
        raise FileNotFoundError(f"no ReasonSeg *.json files in {directory}")
    for image_id, json_path in enumerate(jsons):
        where = str(json_path)
        image_path = next((json_path.with_suffix(s) for s in IMAGE_SUFFIXES
                           if json_path.with_suffix(s).is_file()), None)
        if image_path is None:
            raise FileNotFoundError(f"{where}: no image next to it "
                                    f"({', '.join(json_path.stem + s for s in IMAGE_SUFFIXES)})")
        anno = _read_json(json_path)
        texts = _field(anno, "text", where)
        texts = [texts] if isinstance(texts, str) else texts
        is_sentence = bool(_field(anno, "is_sentence", where))
        image = read_image(image_path)
        h, w = image.shape[:2]
        masks, shape_ids = reasonseg_masks(_field(anno, "shapes", where), h, w, where,
                                           split_polygons)
        boxes = np.stack([mask_to_box(m) for m in masks]) if len(masks) else None
        for k, text in enumerate(texts):
            yield InstructionSample(
                image_id=image_id, image=image.copy(),
                instruction_id=f"reasonseg/{json_path.stem}/{k}",
                text=str(text), task="reasoning",
                family="reasoning" if is_sentence else "reasoning_short",
                target_ids=list(shape_ids), masks=masks.copy(),
                boxes=None if boxes is None else boxes.copy())
