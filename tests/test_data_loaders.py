"""Loaders: real COCO annotations, RefCOCO / gRefCOCO / ReasonSeg fixtures in their official layouts,
and the restricted unpickler against a malicious pickle."""
import json
import os
import pickle
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from conftest import REALDATA
from instructsam_tools.data.loaders import (load_coco_categories, load_grefcoco, load_reasonseg,
                                      load_refcoco, plural)
from instructsam_tools.data.safe_pickle import UnsafePickleError, load_plain_pickle, loads_plain

REAL_COCO = REALDATA / "refseg" / "coco_val2017_2img_mmdet_annotations_only" / "instances_val2017.json"
CROWD_CAR = 900300255917  # the uncompressed-RLE crowd annotation of image 255917
DINING_TABLE = 2204286  # three polygons, image 139


@pytest.fixture(scope="module")
def coco_json():
    return json.loads(REAL_COCO.read_text())


@pytest.fixture(scope="module")
def coco_api():
    return COCO(str(REAL_COCO))  # pycocotools' own decoding, the reference for our masks


def colour(image_id):
    return (image_id * 37) % 200 + 20  # a flat grey level per image, to check pixels arrive


def write_placeholders(folder: Path, coco_json, size_delta=0):
    """Black-free flat JPEGs with the file names and sizes the json states."""
    folder.mkdir(parents=True, exist_ok=True)
    for im in coco_json["images"]:
        Image.new("L", (im["width"] + size_delta, im["height"]), colour(im["id"])).convert(
            "RGB").save(folder / im["file_name"], format="JPEG")
    return folder


def xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


# ----------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
    pickle.loads(payload)  # the stock unpickler runs it: the payload is real
    assert marker.exists()
    marker.unlink()
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps(_Evil(f"touch {marker}"), protocol=protocol)
        with pytest.raises(UnsafePickleError, match=rf"'{os.system.__module__}\.system'"):
            loads_plain(data)
        assert not marker.exists()
    evil_file = tmp_path / "refs(unc).p"
    evil_file.write_bytes(pickle.dumps((eval, ("__import__('os').remove('x')",))))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p.*'builtins\.eval'"):
        load_plain_pickle(evil_file)  # UnsafePickleError is a ValueError naming file and global


def test_restricted_unpickler_loads_plain_data():
    data = [{"ref_id": 1, "ann_id": 7, "split": "train", "x": (1, 2.5, None, True, -3),
             "sentences": [{"sent_id": 0, "sent": "the cat", "tokens": ["the", "cat"]}]}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert loads_plain(pickle.dumps(data, protocol=protocol)) == data
    # a Python 2 pickle: PROTO 2, dict, SHORT_BINSTRING 'sent' -> SHORT_BINSTRING 'hello', SETITEM
    assert loads_plain(b"\x80\x02}q\x00U\x04sentq\x01U\x05helloq\x02s.") == {"sent": "hello"}


# ------------------------------------------------------------------------------ real COCO json
def test_coco_categories_on_real_annotations(tmp_path, coco_json, coco_api):
    images = write_placeholders(tmp_path / "val2017", coco_json)
    samples = list(load_coco_categories(REAL_COCO, images, include_crowd=True))

    expected = defaultdict(set)  # (image, category) -> annotation ids, straight from the json
    for a in coco_json["annotations"]:
        expected[(a["image_id"], a["category_id"])].add(a["id"])
    assert {(s.image_id, tuple(sorted(s.target_ids))) for s in samples} == {
        (k[0], tuple(sorted(v))) for k, v in expected.items()}
    assert sum(len(s.target_ids) for s in samples) == 37

    anns = {a["id"]: a for a in coco_json["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco_json["images"]}
    for s in samples:
        assert s.image.shape == (*sizes[s.image_id], 3) and s.image.dtype == np.uint8
        assert abs(int(s.image[5, 5, 0]) - colour(s.image_id)) <= 2
        assert s.family == "category" and s.task == "multi_instance"
        for i, ann_id in enumerate(s.target_ids):
            np.testing.assert_array_equal(s.masks[i], coco_api.annToMask(anns[ann_id]) > 0)
            np.testing.assert_allclose(s.boxes[i], xyxy(anns[ann_id]["bbox"]), rtol=1e-6)
    texts = {s.text for s in samples}
    assert {"all the people", "all the cars", "all the dining tables", "all the tvs"} <= texts

    by_ann = {a: s.masks[i] for s in samples for i, a in enumerate(s.target_ids)}
    assert by_ann[CROWD_CAR].sum() == 3386  # decoded uncompressed RLE (SOURCES.md)
    table = anns[DINING_TABLE]
    assert len(table["segmentation"]) == 3 and by_ann[DINING_TABLE].sum() > 0

    # crowd excluded by default; no-target negatives are absent categories, reproducible by seed
    plain = list(load_coco_categories(REAL_COCO, images, negatives_per_image=2, seed=3))
    assert CROWD_CAR not in {a for s in plain for a in s.target_ids}
    negatives = [s for s in plain if s.family == "no_target"]
    assert len(negatives) == 2 * len(coco_json["images"])
    for s in negatives:
        assert s.masks.shape == (0, *sizes[s.image_id]) and s.target_ids == []
        assert s.instruction_id.rsplit("/", 1)[1] not in {
            str(c) for (i, c) in expected if i == s.image_id}
    again = list(load_coco_categories(REAL_COCO, images, negatives_per_image=2, seed=3))
    assert [s.instruction_id for s in again] == [s.instruction_id for s in plain]


def test_missing_and_wrong_images(tmp_path, coco_json):
    with pytest.raises(FileNotFoundError, match="000000000139.jpg.*missing_image='blank'"):
        next(load_coco_categories(REAL_COCO, tmp_path / "nowhere"))
    with pytest.warns(UserWarning, match="black 640x426 placeholder"):
        s = next(load_coco_categories(REAL_COCO, tmp_path / "nowhere", missing_image="blank"))
    assert s.image.shape == (426, 640, 3) and not s.image.any()
    wrong = write_placeholders(tmp_path / "wrong", coco_json, size_delta=1)
    with pytest.raises(ValueError, match="641x426 but .* says 640x426"):
        next(load_coco_categories(REAL_COCO, wrong))


def test_plural():
    assert [plural(n) for n in ("person", "bus", "wine glass", "teddy bear", "sheep", "knife",
                                "butterfly", "toy")] == [
        "people", "buses", "wine glasses", "teddy bears", "sheep", "knives", "butterflies", "toys"]


# ---------------------------------------------------------------------------------- RefCOCO
def make_ref(ref_id, image_id, ann_id, category_id, split, sents, file_name):
    """A ref exactly as lichengunc/refer's refs(unc).p stores it."""
    sentences = [{"tokens": s.split(), "raw": s.capitalize(), "sent_id": sid, "sent": s}
                 for sid, s in sents]
    return {"sent_ids": [sid for sid, _ in sents], "file_name": file_name, "ann_id": ann_id,
            "ref_id": ref_id, "image_id": image_id, "split": split, "sentences": sentences,
            "category_id": category_id}


def test_refcoco_layout(tmp_path, coco_json, coco_api):
    root = tmp_path / "refer_data"
    (root / "refcoco").mkdir(parents=True)
    shutil.copy(REAL_COCO, root / "refcoco" / "instances.json")
    write_placeholders(root / "images" / "mscoco" / "images" / "train2014", coco_json)
    refs = [make_ref(0, 139, DINING_TABLE, 67, "train", [(0, "the table"), (1, "wooden table")],
                     "COCO_train2014_000000000139_2204286.jpg"),
            make_ref(1, 255917, 1351623, 3, "val", [(2, "car on the left")],
                     "COCO_train2014_000000255917_1351623.jpg")]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))

    train = list(load_refcoco(root, "refcoco", "unc", split="train"))
    assert [s.text for s in train] == ["the table", "wooden table"]
    assert [s.instruction_id for s in train] == ["refcoco(unc)/0/0", "refcoco(unc)/0/1"]
    table = coco_api.loadAnns(DINING_TABLE)[0]
    for s in train:
        assert (s.image_id, s.target_ids, s.task) == (139, [DINING_TABLE], "referring")
        assert s.masks.shape == (1, 426, 640)
        np.testing.assert_array_equal(s.masks[0], coco_api.annToMask(table) > 0)
        np.testing.assert_allclose(s.boxes[0], xyxy(table["bbox"]), rtol=1e-6)
    assert train[0].masks is not train[1].masks  # samples own their arrays
    everything = list(load_refcoco(root, "refcoco", "unc"))
    assert len(everything) == 3 and everything[2].image_id == 255917

    marker = tmp_path / "pwned"
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(_Evil(f"touch {marker}")))
    with pytest.raises(UnsafePickleError, match="system"):
        list(load_refcoco(root, "refcoco", "unc"))
    assert not marker.exists()


# --------------------------------------------------------------------------------- gRefCOCO
def make_gref(ref_id, image_id, ann_ids, split, sents, no_target, category_ids):
    """A ref as gRefCOCO's grefs(unc).json stores it: ann_id is a list, [-1] for no target."""
    ref = make_ref(ref_id, image_id, ann_ids, category_ids, split, sents,
                   f"COCO_train2014_{image_id:012d}.jpg")
    ref["no_target"] = no_target
    return ref


def test_grefcoco_layout(tmp_path, coco_json, coco_api):
    root = tmp_path / "gres"
    (root / "grefcoco").mkdir(parents=True)
    shutil.copy(REAL_COCO, root / "grefcoco" / "instances.json")
    write_placeholders(root / "images" / "train2014", coco_json)
    grefs = [
        make_gref(10, 139, [230831, 233201], "train", [(20, "both people"), (21, "two persons")],
                  False, [1, 1]),
        make_gref(11, 255917, [-1], "train", [(22, "the giraffe")], True, [-1]),
        make_gref(12, 255917, [1681505], "val", [(23, "the person")], False, [1]),
        make_gref(13, 255917, [CROWD_CAR, 1351623], "train", [(24, "the cars")], False, [3, 3]),
        make_gref(14, 255917, [CROWD_CAR], "train", [(25, "crowd of cars")], False, [3]),
    ]
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(grefs))

    with pytest.warns(UserWarning, match="ref_id=14: every target is a crowd region"):
        train = list(load_grefcoco(root, "unc", split="train"))
    by_text = {s.text: s for s in train}
    assert set(by_text) == {"both people", "two persons", "the giraffe", "the cars"}

    multi = by_text["both people"]
    assert (multi.family, multi.target_ids, multi.masks.shape) == (
        "multi_target", [230831, 233201], (2, 426, 640))
    for i, ann_id in enumerate(multi.target_ids):
        np.testing.assert_array_equal(multi.masks[i],
                                      coco_api.annToMask(coco_api.loadAnns(ann_id)[0]) > 0)
    empty = by_text["the giraffe"]
    assert (empty.family, empty.target_ids, empty.masks.shape, empty.boxes.shape) == (
        "no_target", [], (0, 427, 640), (0, 4))
    cars = by_text["the cars"]  # crowd dropped as in ReLA
    assert (cars.family, cars.target_ids) == ("single_target", [1351623])

    val = list(load_grefcoco(root, "unc", split="val"))
    assert [(s.text, s.family) for s in val] == [("the person", "single_target")]

    grefs.append(make_gref(15, 139, [230831], "train", [(26, "x")], True, [1]))
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(grefs))
    with pytest.raises(ValueError, match=r"grefs\(unc\)\.json ref_id=15: no_target=True disagrees"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            list(load_grefcoco(root, "unc"))


# -------------------------------------------------------------------------------- ReasonSeg
def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_reasonseg(folder: Path, name, size, text, is_sentence, shapes):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(folder / f"{name}.jpg", format="JPEG")
    shapes = [{"label": label, "labels": [label], "shape_type": "polygon",
               "image_name": f"{name}.jpg", "points": pts, "group_id": None, "group_ids": [None],
               "flags": {}} for label, pts in shapes]
    (folder / f"{name}.json").write_text(json.dumps(
        {"text": text, "is_sentence": is_sentence, "shapes": shapes}))


def test_reasonseg_layout(tmp_path):
    val = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    write_reasonseg(val, "a", (40, 30), ["what keeps food cold?", "where do drinks go?"], True, [
        ("target", rect(2, 2, 20, 20)),  # big target
        ("ignore", rect(5, 5, 9, 9)),  # smaller, painted later: a hole of ignored pixels
        ("target", rect(25, 3, 35, 12)),  # a second target polygon
        ("flag", rect(0, 0, 39, 29)),  # deprecated label: skipped
    ])
    write_reasonseg(val, "b", (16, 12), ["the fridge"], False, [("target", rect(1, 1, 4, 4))])

    samples = list(load_reasonseg(val))
    assert [(s.instruction_id, s.family) for s in samples] == [
        ("reasonseg/a/0", "reasoning"), ("reasonseg/a/1", "reasoning"),
        ("reasonseg/b/0", "reasoning_short")]
    # cv2 fills polygons including their border pixels: rows/cols y0..y1, x0..x1 inclusive
    expected = np.zeros((30, 40), bool)
    expected[2:21, 2:21] = True
    expected[5:10, 5:10] = False
    expected[3:13, 25:36] = True
    a0 = samples[0]
    assert a0.image.shape == (30, 40, 3) and a0.task == "reasoning"
    assert a0.masks.shape == (1, 30, 40) and a0.target_ids == [0]
    np.testing.assert_array_equal(a0.masks[0], expected)
    np.testing.assert_array_equal(a0.boxes[0], [2, 2, 36, 21])
    assert samples[2].masks[0].sum() == 16 and samples[2].image_id == 1

    split = list(load_reasonseg(val, split_polygons=True))[0]
    assert split.target_ids == [0, 2] and split.masks.shape == (2, 30, 40)
    np.testing.assert_array_equal(split.masks.any(0), expected)

    (val / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.json: no image next to it"):
        list(load_reasonseg(val))
