"""The Inst2Seg on-disk format: write -> read round trip and clear errors on malformed files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instructsam_tools.data.inst2seg import (Inst2SegDataset, Inst2SegFormatError, check_segmentation,
                                       decode_segmentation, encode_mask, validate_inst2seg, write_inst2seg)

H, W = 48, 64
DOC = Path(__file__).resolve().parents[1] / "docs" / "dataset_format.md"


def _disk(cx, cy, r):
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _toy():
    rng = np.random.default_rng(0)
    img1 = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    img2 = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    back = _disk(20, 20, 10)
    front = _disk(28, 22, 8)
    square = np.zeros((H, W), bool)
    square[5:15, 40:60] = True
    images = [{"id": 1, "image": img1}, {"id": 2, "image": img2, "file_name": "custom/two.png"}]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1, "mask": back & ~front, "attributes": {"color": "red"}},
        {"id": 11, "image_id": 1, "category_id": 1, "mask": front},
        {"id": 12, "image_id": 1, "category_id": 2, "mask": square},
        # polygon segmentation (a triangle) on the second image
        {"id": 20, "image_id": 2, "category_id": 2, "segmentation": [[10.0, 40.0, 30.0, 40.0, 20.0, 20.0]]},
    ]
    instructions = [
        {"id": 0, "image_id": 1, "text": "all the circles", "task": "multi_instance", "family": "category",
         "target_ids": [10, 11]},
        {"id": 1, "image_id": 1, "text": "the square", "task": "referring", "family": "category", "target_ids": [12]},
        {"id": "x-2", "image_id": 2, "text": "the blue stars", "task": "multi_instance", "family": "no_target",
         "target_ids": []},
        {"id": 3, "image_id": 2, "text": "the triangle", "task": "referring", "family": "", "target_ids": [20]},
    ]
    masks = {10: back & ~front, 11: front, 12: square}
    return images, annotations, instructions, ["circle", "square"], masks


def test_round_trip_equals_in_memory(tmp_path):
    images, annotations, instructions, categories, masks = _toy()
    path = write_inst2seg(tmp_path, images, annotations, instructions, categories, split="val")
    assert path == tmp_path / "annotations" / "val.json"
    assert (tmp_path / "images" / "val" / "000001.png").is_file()
    assert (tmp_path / "images" / "custom" / "two.png").is_file()

    ds = Inst2SegDataset(tmp_path, "val")
    assert len(ds) == 4
    s = ds[0]
    assert s.text == "all the circles" and s.task == "multi_instance" and s.family == "category"
    assert s.instruction_id == "0" and s.image_id == 1 and s.target_ids == [10, 11]
    np.testing.assert_array_equal(s.image, images[0]["image"])
    np.testing.assert_array_equal(s.masks, np.stack([masks[10], masks[11]]))
    ys, xs = np.nonzero(masks[11])
    np.testing.assert_array_equal(s.boxes[1], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    # the stored RLE is pycocotools' own encoding and its COCO bbox/area agree with the mask
    ann = ds.annotations[10]
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), masks[10])
    assert ann["area"] == int(masks[10].sum()) and ann["attributes"] == {"color": "red"}
    assert ann["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
    # the image's other annotated objects come along (training's detect-all matching supervises them too)
    np.testing.assert_array_equal(s.other_masks, masks[12][None])
    np.testing.assert_array_equal(ds[1].other_masks, np.stack([masks[10], masks[11]]))
    assert s.other_boxes.shape == (1, 4) and ds[1].other_boxes.shape == (2, 4)

    no_target = ds[2]
    assert no_target.instruction_id == "x-2" and no_target.target_ids == []
    assert no_target.masks.shape == (0, H, W) and no_target.boxes.shape == (0, 4)
    assert no_target.other_masks.shape == (1, H, W)  # the triangle: there, but not asked for
    np.testing.assert_array_equal(no_target.image, images[1]["image"])

    tri = ds[3]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(annotations[3]["segmentation"], H, W)))
    np.testing.assert_array_equal(tri.masks[0], expected.astype(bool))
    assert tri.masks[0].sum() > 100


def test_writer_output_is_deterministic(tmp_path):
    for d in ("a", "b"):
        images, annotations, instructions, categories, _ = _toy()
        write_inst2seg(tmp_path / d, images, annotations, instructions, categories, split="train")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_rle_helpers_match_pycocotools():
    m = _disk(30, 25, 12) & ~_disk(30, 25, 5)
    rle = encode_mask(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    np.testing.assert_array_equal(decode_segmentation(rle, H, W), m)
    check_segmentation(rle, H, W)
    # uncompressed RLE (column-major run lengths) is accepted too
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], change])).tolist()
    check_segmentation({"size": [H, W], "counts": runs}, H, W)
    np.testing.assert_array_equal(decode_segmentation({"size": [H, W], "counts": runs}, H, W), m)


def test_doc_example_is_valid_and_decodes():
    text = DOC.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    validate_inst2seg(example, DOC)
    sq = decode_segmentation(example["annotations"][0]["segmentation"], 128, 128)
    assert sq.sum() == example["annotations"][0]["area"]


def _write_json(tmp_path, mutate):
    images, annotations, instructions, categories, _ = _toy()
    write_inst2seg(tmp_path, images, annotations, instructions, categories, split="val")
    path = tmp_path / "annotations" / "val.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["instructions"][0].update(image_id=99), r"instructions\[0\].*'image_id': unknown image_id 99"),
    (lambda d: d["instructions"][1].update(target_ids=[20]),
     r"instructions\[1\].*'target_ids': annotation 20 belongs to image 2, not to image 1"),
    (lambda d: d["instructions"][1].update(target_ids=[777]), r"'target_ids': 777 is not an annotation id"),
    (lambda d: d["instructions"][1].update(task="segment"), r"field 'task': 'segment' is not one of"),
    (lambda d: d["instructions"][1].pop("text"), r"instructions\[1\].*missing field 'text'"),
    (lambda d: d["instructions"][1].update(target_ids=12), r"'target_ids' must be a list"),
    (lambda d: d["instructions"][1].update(id=0), r"duplicate instruction id 0"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts="!!!bad"),
     r"annotations\[0\] \(id=10\) field 'segmentation': malformed RLE counts string: invalid character"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=d["annotations"][0]["segmentation"]["counts"][:-3]),
     r"annotations\[0\].*'segmentation': malformed RLE"),
    (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]),
     r"annotations\[1\].*RLE size \[10, 10\] does not match the image size \[48, 64\]"),
    (lambda d: d["annotations"][1].update(segmentation={"counts": "abc"}), r"RLE needs keys 'size' and 'counts'"),
    (lambda d: d["annotations"][3].update(segmentation=[[1.0, 2.0]]), r"polygon 0 must be a flat list"),
    (lambda d: d["annotations"][1].update(image_id=5), r"annotations\[1\] \(id=11\).*unknown image_id 5"),
    (lambda d: d["annotations"][1].update(category_id=9), r"unknown category_id 9"),
    (lambda d: d["annotations"][1].update(id=10), r"duplicate annotation id 10"),
    (lambda d: d.pop("instructions"), r"top level: missing key 'instructions'"),
    (lambda d: d["images"][0].update(file_name="val/missing.png"), r"images\[0\].*image file not found"),
])
def test_malformed_files_raise_clear_errors(tmp_path, mutate, pattern):
    path = _write_json(tmp_path, mutate)
    with pytest.raises(Inst2SegFormatError, match=pattern) as err:
        Inst2SegDataset(tmp_path, "val")
    assert str(path) in str(err.value)  # the message names the file


def test_missing_split_and_bad_json(tmp_path):
    images, annotations, instructions, categories, _ = _toy()
    write_inst2seg(tmp_path, images, annotations, instructions, categories, split="val")
    with pytest.raises(FileNotFoundError, match=r"split 'train' not found.*available splits: \['val'\]"):
        Inst2SegDataset(tmp_path, "train")
    (tmp_path / "annotations" / "val.json").write_text("{not json")
    with pytest.raises(Inst2SegFormatError, match="val.json: not valid JSON"):
        Inst2SegDataset(tmp_path, "val")


def test_writer_rejects_bad_input_before_writing(tmp_path):
    images, annotations, instructions, categories, _ = _toy()
    instructions[0]["target_ids"] = [20]  # annotation of the other image
    with pytest.raises(Inst2SegFormatError, match="belongs to image 2"):
        write_inst2seg(tmp_path, images, annotations, instructions, categories, split="val")
    assert not (tmp_path / "annotations").exists() and not (tmp_path / "images").exists()
    images, annotations, instructions, categories, _ = _toy()
    annotations[0]["mask"] = np.zeros((5, 5), bool)
    with pytest.raises(ValueError, match=r"annotation 10: mask shape \(5, 5\) != image size \(48, 64\)"):
        write_inst2seg(tmp_path, images, annotations, instructions, categories, split="val")
