"""The Inst2Seg on-disk format: COCO images + instance annotations + instructions over them.

Layout (see docs/dataset_format.md)::

    root/images/<split>/<name>.png        RGB images (file_name is relative to root/images/)
    root/annotations/<split>.json         {"info", "images", "annotations", "categories", "instructions"}

`annotations` are COCO instance annotations (segmentation as RLE or polygons); every instruction names
the annotation ids it refers to in `target_ids`, an empty list meaning "no such object".
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from instructsam.rle import coco_rle
from instructsam.templates import TASKS
from instructsam_tools.data.format import InstructionSample

FORMAT_VERSION = "inst2seg-1"


class Inst2SegFormatError(ValueError):
    """A malformed Inst2Seg file; the message names the file, the entry and the field."""


# ----------------------------------------------------------------------------------------------
# masks <-> COCO segmentation


def encode_mask(mask: np.ndarray) -> dict:
    """Bool (H, W) mask -> compressed COCO RLE with a JSON-ready str `counts` (instructsam.rle)."""
    return coco_rle(np.asarray(mask, dtype=bool))


def decode_segmentation(segm, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """COCO polygons, compressed or uncompressed (crowd) RLE -> (H, W) bool, as COCO.annToRLE."""
    if isinstance(segm, list):
        # polygons with < 3 points are invalid; pycocotools would read a 4-number list as a box
        polys = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            raise ValueError(f"{where}: 'segmentation' has no valid polygon (>= 3 points)")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} != image size {[height, width]}")
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)  # uncompressed RLE (iscrowd=1)
        else:
            counts = segm["counts"]
            rle = {"size": [height, width],
                   "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"{where}: unsupported 'segmentation' of type {type(segm).__name__}")
    return mask_utils.decode(rle).astype(bool)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box (x1, y1 exclusive, as COCO bbox x+w) of a bool mask; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _rle_string_counts(s: str) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths (mirrors maskApi.c rleFrString).

    pycocotools decodes malformed strings into garbage without complaint, so validation decodes the
    run lengths itself and checks them.
    """
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("truncated counts string")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {s[p]!r} at position {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check_segmentation(seg: Any, height: int, width: int) -> None:
    """Raise ValueError saying what is wrong if `seg` is not a valid COCO segmentation for (height, width)."""
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise ValueError(f"RLE needs keys 'size' and 'counts', got {sorted(seg)}")
        size = seg["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise ValueError(f"RLE size must be [height, width], got {size!r}")
        if list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} does not match the image size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, str):
            try:
                runs = _rle_string_counts(counts)
            except ValueError as e:
                raise ValueError(f"malformed RLE counts string: {e}") from None
        elif isinstance(counts, list) and all(isinstance(v, int) for v in counts):
            runs = counts
        else:
            raise ValueError(f"RLE counts must be a string or a list of ints, got {type(counts).__name__}")
        if any(r < 0 for r in runs):
            raise ValueError("malformed RLE: negative run length")
        if sum(runs) != height * width:
            raise ValueError(f"malformed RLE: run lengths sum to {sum(runs)}, expected {height}*{width}="
                             f"{height * width}")
    elif isinstance(seg, list):
        if not seg:
            raise ValueError("polygon segmentation is an empty list")
        for j, poly in enumerate(seg):
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(isinstance(v, (int, float)) for v in poly)):
                raise ValueError(f"polygon {j} must be a flat list of >= 3 (x, y) number pairs")
    else:
        raise ValueError(f"segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}")


# ----------------------------------------------------------------------------------------------
# validation (shared by the writer and the reader)


def _fail(path: Any, where: str, msg: str) -> None:
    raise Inst2SegFormatError(f"{path}: {where}: {msg}")


def _new_int_id(path, where: str, record: Mapping, seen, what: str) -> None:
    """record["id"] is an int not in `seen` (the ids of its section so far)."""
    if not isinstance(record["id"], int):
        _fail(path, where, f"field 'id' must be an int, got {record['id']!r}")
    if record["id"] in seen:
        _fail(path, where, f"duplicate {what} id {record['id']}")


def _need(path: Any, where: str, entry: Mapping, keys: Iterable[str]) -> None:
    if not isinstance(entry, Mapping):
        _fail(path, where, f"expected an object, got {type(entry).__name__}")
    for k in keys:
        if k not in entry:
            _fail(path, where, f"missing field '{k}'")


def validate_inst2seg(data: Mapping, path: Any = "<inst2seg>", image_root: Path | None = None,
                      check_rle: bool = True) -> None:
    """Check an Inst2Seg JSON dict; raise Inst2SegFormatError naming file, entry and field.

    `image_root` (root/images) additionally checks that every image file exists.
    """
    for key in ("images", "annotations", "categories", "instructions"):
        if key not in data:
            _fail(path, "top level", f"missing key '{key}'")
        if not isinstance(data[key], list):
            _fail(path, key, f"must be a list, got {type(data[key]).__name__}")

    cats: set[int] = set()
    for i, c in enumerate(data["categories"]):
        where = f"categories[{i}]"
        _need(path, where, c, ("id", "name"))
        if c["id"] in cats:
            _fail(path, where, f"duplicate category id {c['id']}")
        cats.add(c["id"])

    sizes: dict[int, tuple[int, int]] = {}
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        _need(path, where, im, ("id", "file_name", "height", "width"))
        _new_int_id(path, where, im, sizes, "image")
        if not (isinstance(im["height"], int) and isinstance(im["width"], int) and im["height"] > 0
                and im["width"] > 0):
            _fail(path, where, f"height/width must be positive ints, got {im['height']!r}/{im['width']!r}")
        if image_root is not None and not (image_root / im["file_name"]).is_file():
            _fail(path, where, f"image file not found: {image_root / im['file_name']}")
        sizes[im["id"]] = (im["height"], im["width"])

    ann_image: dict[int, int] = {}
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}] (id={a.get('id') if isinstance(a, Mapping) else '?'})"
        _need(path, where, a, ("id", "image_id", "category_id", "segmentation"))
        _new_int_id(path, where, a, ann_image, "annotation")
        if a["image_id"] not in sizes:
            _fail(path, where, f"field 'image_id': unknown image_id {a['image_id']!r}")
        if a["category_id"] not in cats:
            _fail(path, where, f"field 'category_id': unknown category_id {a['category_id']!r}")
        if check_rle:
            try:
                check_segmentation(a["segmentation"], *sizes[a["image_id"]])
            except ValueError as e:
                _fail(path, where + " field 'segmentation'", str(e))
        ann_image[a["id"]] = a["image_id"]

    per_image: dict[int, list[int]] = defaultdict(list)
    for ann_id, img_id in ann_image.items():
        per_image[img_id].append(ann_id)
    seen: set = set()
    for i, ins in enumerate(data["instructions"]):
        where = f"instructions[{i}] (id={ins.get('id') if isinstance(ins, Mapping) else '?'})"
        _need(path, where, ins, ("id", "image_id", "text", "task", "target_ids"))
        if ins["id"] in seen:
            _fail(path, where, f"duplicate instruction id {ins['id']!r}")
        seen.add(ins["id"])
        if ins["image_id"] not in sizes:
            _fail(path, where, f"field 'image_id': unknown image_id {ins['image_id']!r}")
        if not isinstance(ins["text"], str) or not ins["text"].strip():
            _fail(path, where, "field 'text' must be a non-empty string")
        if ins["task"] not in TASKS:
            _fail(path, where, f"field 'task': {ins['task']!r} is not one of {TASKS}")
        if not isinstance(ins.get("family", ""), str):
            _fail(path, where, "field 'family' must be a string")
        if not isinstance(ins["target_ids"], list):
            _fail(path, where, "field 'target_ids' must be a list (empty = no such object)")
        for t in ins["target_ids"]:
            if t not in ann_image:
                _fail(path, where, f"field 'target_ids': {t!r} is not an annotation id")
            if ann_image[t] != ins["image_id"]:
                _fail(path, where, f"field 'target_ids': annotation {t} belongs to image {ann_image[t]}, "
                                   f"not to image {ins['image_id']} (its annotations: "
                                   f"{sorted(per_image[ins['image_id']])})")
        if len(set(ins["target_ids"])) != len(ins["target_ids"]):
            _fail(path, where, f"field 'target_ids' has duplicates: {ins['target_ids']}")


# ----------------------------------------------------------------------------------------------
# writer


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (deterministic bytes), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image)).save(path, format="PNG")


def write_inst2seg(root: str | os.PathLike, images: Sequence[Mapping], annotations: Sequence[Mapping],
                   instructions: Sequence[Mapping], categories: Sequence[Mapping | str],
                   split: str = "train", info: Mapping | None = None) -> Path:
    """Write one split of an Inst2Seg dataset; returns the path of the annotation JSON.

    images:       dicts with "id" (int), "image" (H, W, 3) uint8 RGB, optional "file_name"
                  (relative to root/images, default "<split>/<id:06d>.png") and any extra fields.
                  Without "image", the PNG must already exist at root/images/<file_name> and
                  "height"/"width" must be given (lets large splits be written image by image).
    annotations:  dicts with "id", "image_id", "category_id" and either "mask" (H, W) bool or
                  "segmentation" (COCO RLE / polygons); extra fields (e.g. "attributes") are kept.
                  "area" and "bbox" (COCO xywh) are computed; "iscrowd" defaults to 0.
    instructions: dicts with "id", "image_id", "text", "task", "family", "target_ids" (+ extras).
    categories:   dicts {"id", "name", ...} or plain names (ids 1..N in order).

    Everything is validated before anything is written. Output bytes depend only on the inputs.
    """
    root = Path(root)
    img_entries = []
    for im in images:
        entry = {k: v for k, v in im.items() if k != "image"}
        entry.setdefault("file_name", f"{split}/{int(im['id']):06d}.png")
        if "image" in im:
            arr = np.asarray(im["image"])
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"image {im.get('id')!r}: expected (H, W, 3) uint8, got {arr.dtype} {arr.shape}")
            entry["height"], entry["width"] = int(arr.shape[0]), int(arr.shape[1])
        elif not (root / "images" / entry["file_name"]).is_file():
            raise FileNotFoundError(f"image {im.get('id')!r}: no 'image' array given and "
                                    f"{root / 'images' / entry['file_name']} does not exist")
        img_entries.append(entry)
    sizes = {e.get("id"): (e.get("height"), e.get("width")) for e in img_entries}

    ann_entries = []
    for a in annotations:
        entry = {k: v for k, v in a.items() if k != "mask"}
        if "mask" in a:
            if a.get("image_id") not in sizes:
                raise Inst2SegFormatError(f"annotation {a.get('id')!r}: unknown image_id {a.get('image_id')!r}")
            m = np.asarray(a["mask"], dtype=bool)
            if m.shape != sizes[a["image_id"]]:
                raise ValueError(f"annotation {a.get('id')!r}: mask shape {m.shape} != image size "
                                 f"{sizes[a['image_id']]}")
            entry["segmentation"] = encode_mask(m)
        elif "segmentation" not in a:
            raise Inst2SegFormatError(f"annotation {a.get('id')!r}: needs 'mask' or 'segmentation'")
        seg = entry["segmentation"]
        if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
            entry["segmentation"] = {"size": list(seg["size"]), "counts": seg["counts"].decode("ascii")}
        if "area" not in entry or "bbox" not in entry:
            h, w = sizes.get(a.get("image_id"), (0, 0))
            try:
                check_segmentation(entry["segmentation"], h, w)
            except ValueError as e:
                raise Inst2SegFormatError(f"annotation {a.get('id')!r}: segmentation: {e}") from None
            m = decode_segmentation(entry["segmentation"], h, w)
            x1, y1, x2, y2 = mask_to_box(m).tolist()
            entry.setdefault("area", int(m.sum()))
            entry.setdefault("bbox", [x1, y1, x2 - x1, y2 - y1])
        entry.setdefault("iscrowd", 0)
        ann_entries.append(entry)

    cat_entries = [{"id": i + 1, "name": c} if isinstance(c, str) else dict(c) for i, c in enumerate(categories)]
    ins_entries = []
    for ins in instructions:
        entry = dict(ins)
        entry.setdefault("family", "")
        entry["target_ids"] = [int(t) for t in entry.get("target_ids", [])]
        ins_entries.append(entry)

    data = _json_ready({
        "info": {"format": FORMAT_VERSION, "split": split, **dict(info or {})},
        "images": img_entries, "annotations": ann_entries, "categories": cat_entries,
        "instructions": ins_entries,
    })
    json_path = root / "annotations" / f"{split}.json"
    validate_inst2seg(data, json_path)

    for im, entry in zip(images, img_entries):
        if "image" in im:
            save_png(root / "images" / entry["file_name"], im["image"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return json_path


# ----------------------------------------------------------------------------------------------
# reader


class Inst2SegDataset:
    """One split of an Inst2Seg dataset, indexable over instructions -> InstructionSample.

    Torch-free. The JSON is validated on construction (pass validate=False to skip the per-annotation
    RLE checks for very large files); images and masks are decoded lazily per item.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", validate: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.json_path = self.root / "annotations" / f"{split}.json"
        if not self.json_path.is_file():
            avail = sorted(p.stem for p in (self.root / "annotations").glob("*.json"))
            raise FileNotFoundError(f"Inst2Seg split '{split}' not found: {self.json_path} does not exist "
                                    f"(available splits: {avail})")
        try:
            with open(self.json_path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise Inst2SegFormatError(f"{self.json_path}: not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise Inst2SegFormatError(f"{self.json_path}: top level must be an object")
        validate_inst2seg(data, self.json_path, image_root=self.root / "images", check_rle=validate)
        self.info: dict = data.get("info", {})
        self.images: dict[int, dict] = {im["id"]: im for im in data["images"]}
        self.annotations: dict[int, dict] = {a["id"]: a for a in data["annotations"]}
        self.categories: dict[int, dict] = {c["id"]: c for c in data["categories"]}
        self.instructions: list[dict] = data["instructions"]
        self.anns_by_image: dict[int, list[int]] = defaultdict(list)
        for a in data["annotations"]:
            self.anns_by_image[a["image_id"]].append(a["id"])

    def __len__(self) -> int:
        return len(self.instructions)

    def load_image(self, image_id: int) -> np.ndarray:
        path = self.root / "images" / self.images[image_id]["file_name"]
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def annotation_mask(self, ann_id: int) -> np.ndarray:
        a = self.annotations[ann_id]
        im = self.images[a["image_id"]]
        try:
            return decode_segmentation(a["segmentation"], im["height"], im["width"])
        except Exception as e:  # surface which annotation failed, not a bare pycocotools error
            raise Inst2SegFormatError(f"{self.json_path}: annotation {ann_id}: cannot decode segmentation: {e}") from e

    def __getitem__(self, idx: int) -> InstructionSample:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} instructions")
        ins = self.instructions[idx]
        image = self.load_image(ins["image_id"])
        h, w = image.shape[:2]
        targets = set(ins["target_ids"])
        others = [a for a in self.anns_by_image[ins["image_id"]] if a not in targets]
        masks, boxes = self._masks_and_boxes(ins["target_ids"], h, w)
        other_masks, other_boxes = self._masks_and_boxes(others, h, w)
        return InstructionSample(image_id=ins["image_id"], image=image, instruction_id=str(ins["id"]),
                                 text=ins["text"], task=ins["task"], family=ins.get("family", ""),
                                 target_ids=list(ins["target_ids"]), masks=masks, boxes=boxes,
                                 other_masks=other_masks, other_boxes=other_boxes)

    def _masks_and_boxes(self, ann_ids: list[int], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        masks = np.stack([self.annotation_mask(a) for a in ann_ids]) if ann_ids else np.zeros((0, h, w), dtype=bool)
        return masks, np.array([mask_to_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
