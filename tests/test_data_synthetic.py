"""Synthetic Inst2Seg: determinism, answers that follow from the scene graph, splits, videos, CLI.

The target sets are checked against an interpreter written here, independently of the generator:
it parses the instruction text and evaluates it on the scene graph (attributes, visible-mask
centroids, areas), without the generator's ambiguity margins.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np
import pytest

from instructsam_tools.data.inst2seg import Inst2SegDataset
from instructsam_tools.data.synthetic import SPLITS, SyntheticInst2Seg, SyntheticVideos, generate_image_item, main
from instructsam_tools.data.synthetic_scene import HELDOUT_PAIRS, min_visible_area
from instructsam_tools.data.synthetic_video import read_video, write_video

# ------------------------------------------------------------------------------------------
# an independent interpreter of the instruction language

COLORS = {"red", "green", "blue", "yellow", "purple", "orange"}
SIZE = {"small": "small", "little": "small", "medium": "medium", "medium-sized": "medium", "large": "large",
        "big": "large"}
TEXTURE = {"solid": "solid", "plain": "solid", "striped": "striped", "dotted": "dotted", "spotted": "dotted"}
NOUNS = {"circle": "circle", "disk": "circle", "square": "square", "triangle": "triangle", "star": "star",
         "ring": "ring", "donut": "ring", "cross": "cross", "plus sign": "cross", "crosse": "cross",
         "object": None, "shape": None, "thing": None}
RIDDLES = {"a ripe tomato": "red", "a fire truck": "red", "grass": "green", "a fresh leaf": "green",
           "the sky": "blue", "the ocean": "blue", "a banana": "yellow", "the sun": "yellow", "grapes": "purple",
           "lavender": "purple", "a carrot": "orange", "a pumpkin": "orange"}
AFFORD = [("roll", {"circle", "ring"}), ("hole", {"ring"}), ("thread", {"ring"}), ("hook", {"ring"}),
          ("sharp", {"triangle", "star"}), ("pointy", {"triangle", "star"}), ("prick", {"triangle", "star"}),
          ("poke", {"triangle", "star"}), ("stack", {"square"}), ("four equal sides", {"square"}),
          ("box", {"square"}), ("night", {"star"}), ("christmas", {"star"}), ("twinkle", {"star"}),
          ("adding", {"cross"}), ("addition", {"cross"}), ("pharmacy", {"cross"}), ("three", {"triangle"}),
          ("pizza", {"triangle"})]
PREFIXES = ["find all the ", "segment every ", "show me all ", "show me the ", "select all the ", "select the ",
            "where are the ", "where is the ", "highlight all ", "highlight every ", "find the ", "segment all ",
            "all the ", "the one ", "every ", "all ", "the "]


def parse_np(phrase: str) -> dict:
    """'large striped red squares' -> {'size': 'large', 'texture': 'striped', 'color': 'red', 'shape': 'square'}."""
    words = phrase.strip().split()
    noun = " ".join(words[-2:]) if " ".join(words[-2:]).rstrip("s") in ("plus sign",) else words[-1]
    adjs = words[: len(words) - len(noun.split())]
    base = noun[:-1] if noun.endswith("s") and noun[:-1] in NOUNS else noun
    if base not in NOUNS:
        raise AssertionError(f"unknown noun {noun!r} in {phrase!r}")
    d = {"shape": NOUNS[base]} if NOUNS[base] else {}
    for a in adjs:
        if a in COLORS:
            d["color"] = a
        elif a in SIZE:
            d["size"] = SIZE[a]
        elif a in TEXTURE:
            d["texture"] = TEXTURE[a]
        else:
            raise AssertionError(f"unknown adjective {a!r} in {phrase!r}")
    return d


def parse_adj(phrase: str) -> dict:
    return {k: v for k, v in parse_np(phrase + " objects").items()}


def match(o, d: dict) -> bool:
    return all(getattr(o, k) == v for k, v in d.items())


def strip_cmd(text: str) -> str:
    text = text.rstrip("?")
    for p in PREFIXES:
        if text.startswith(p):
            return text[len(p):]
    return text


def pairs_of(d: dict) -> set:
    return {(d["color"], d["shape"])} if "color" in d and "shape" in d else set()


def interpret(text: str, objs, size: int) -> tuple[set[int], set]:
    """(target obj ids, colour x shape pairs named jointly) of an instruction over visible objects."""
    cx = {o.obj_id: o.centroid for o in objs}
    ids = lambda f: {o.obj_id for o in objs if f(o)}  # noqa: E731

    # reasoning: colour riddles and affordances
    riddle = next((c for r, c in RIDDLES.items() if text.endswith("colour of " + r) or text.endswith("like " + r)), None)
    head = text.split(", the colour")[0]  # affordance part of "something you could roll, the colour of grass"
    shapes = next((s for k, s in AFFORD if k in head), None) if not riddle or ", the colour" in text else None
    if riddle or shapes:
        f = lambda o: (shapes is None or o.shape in shapes) and (riddle is None or o.color == riddle)  # noqa: E731
        return ids(f), {(riddle, s) for s in shapes} if shapes and riddle else set()

    # superlatives / ordinals
    m = re.fullmatch(r"the (second|third) (.+?) (?:counting )?from the (left|right|top|bottom)", text)
    if m:
        d = parse_np(m.group(2))
        axis = 0 if m.group(3) in ("left", "right") else 1
        group = sorted([o for o in objs if match(o, d)], key=lambda o: cx[o.obj_id][axis],
                       reverse=m.group(3) in ("right", "bottom"))
        return {group[{"second": 1, "third": 2}[m.group(1)]].obj_id}, pairs_of(d)
    m = re.fullmatch(r"the (largest|biggest|smallest|tiniest|leftmost|rightmost|topmost|highest|bottommost|lowest) (.+)",
                     text) or re.fullmatch(r"the (.+) furthest to the (left|right)", text)
    if m:
        if "furthest" in text:
            kind, d = {"left": "leftmost", "right": "rightmost"}[m.group(2)], parse_np(m.group(1))
        else:
            kind, d = m.group(1), parse_np(m.group(2))
        group = [o for o in objs if match(o, d)]
        key = {"largest": lambda o: -o.full_area, "biggest": lambda o: -o.full_area,
               "smallest": lambda o: o.full_area, "tiniest": lambda o: o.full_area,
               "leftmost": lambda o: cx[o.obj_id][0], "rightmost": lambda o: -cx[o.obj_id][0],
               "topmost": lambda o: cx[o.obj_id][1], "highest": lambda o: cx[o.obj_id][1],
               "bottommost": lambda o: -cx[o.obj_id][1], "lowest": lambda o: -cx[o.obj_id][1]}[kind]
        return {min(group, key=key).obj_id}, pairs_of(d)

    # exclusion
    m = re.fullmatch(r"(?:all the |all |every |the )?(.+?) (?:except|but not|but|other than) the (.+?)( ones)?", text) \
        or re.fullmatch(r"(?:every |all )(.+?) that is not (.+)()", text)
    if m and ("except" in text or " but " in text or "other than" in text or "that is not" in text):
        base = m.group(1)
        b = {} if base in ("everything", "objects", "shapes", "things", "object", "shape", "thing") else parse_np(base)
        e = parse_adj(m.group(2)) if (m.group(3) or "that is not" in text) else parse_np(m.group(2))
        return ids(lambda o: match(o, b) and not match(o, e)), pairs_of({**b, **e})

    # spatial
    regions = {"in the top half": (1, -1), "in the upper half": (1, -1), "in the bottom half": (1, 1),
               "in the lower half": (1, 1), "in the left half": (0, -1), "on the left side": (0, -1),
               "in the right half": (0, 1), "on the right side": (0, 1)}
    for phrase, (axis, sign) in regions.items():
        if phrase in text:
            d = parse_np(strip_cmd(text.split(" " + phrase)[0]))
            return ids(lambda o: match(o, d) and (cx[o.obj_id][axis] - size / 2) * sign > 0), pairs_of(d)
    m = re.fullmatch(r"(.+?) (to the left of|on the left of|left of|to the right of|on the right of|right of|above|"
                     r"over|below|under|beneath) the (.+)", text)
    if m:
        d, a = parse_np(strip_cmd(m.group(1))), parse_np(m.group(3))
        anchors = [o for o in objs if match(o, a)]
        assert len(anchors) == 1, f"anchor of {text!r} is not unique"
        anc = anchors[0]
        axis, sign = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "over": (1, -1), "below": (1, 1),
                      "under": (1, 1), "beneath": (1, 1)}[m.group(2).split()[-2 if "of" in m.group(2) else -1]]
        return ids(lambda o: o is not anc and match(o, d)
                   and (cx[o.obj_id][axis] - cx[anc.obj_id][axis]) * sign > 0), pairs_of(d) | pairs_of(a)

    # union
    body = strip_cmd(text)
    m = re.fullmatch(r"(red|green|blue|yellow|purple|orange) (?:and the |and |or )(red|green|blue|yellow|purple|orange)"
                     r" (objects|shapes|things|object|shape|thing)", body)
    if m:
        return ids(lambda o: o.color in (m.group(1), m.group(2))), set()
    for sep in (" as well as the ", " and every ", " and the ", " and "):
        if sep in body:
            left, right = body.split(sep, 1)
            left = left[len("both the "):] if left.startswith("both the ") else left
            a, b = parse_np(left), parse_np(right)
            return ids(lambda o: match(o, a) or match(o, b)), pairs_of(a) | pairs_of(b)

    # category / attribute / plain no-target
    d = parse_np(body)
    return ids(lambda o: match(o, d)), pairs_of(d)


# ------------------------------------------------------------------------------------------


def _items(split, n, seed=0, image_size=128):
    return [generate_image_item(split, i, image_size, seed) for i in range(n)]


@pytest.fixture(scope="module")
def train_items():
    return _items("train", 150)


@pytest.fixture(scope="module")
def heldout_items():
    return _items("heldout", 60)


def test_same_seed_same_bytes_any_access_order():
    a = SyntheticInst2Seg("train", 24, seed=3)
    b = SyntheticInst2Seg("train", 24, seed=3)
    order = list(range(24))[::-1]  # b is accessed backwards: items depend on (seed, split, index) only
    got_b = {i: b[i] for i in order}
    for i in range(24):
        x, y = a[i], got_b[i]
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.text, x.task, x.family, x.target_ids, x.instruction_id) == \
            (y.text, y.task, y.family, y.target_ids, y.instruction_id)
        assert x.masks.tobytes() == y.masks.tobytes() and x.boxes.tobytes() == y.boxes.tobytes()
    c = SyntheticInst2Seg("train", 24, seed=4)
    assert any(a[i].image.tobytes() != c[i].image.tobytes() for i in range(0, 24, 4))
    v = SyntheticInst2Seg("val", 24, seed=3)
    assert a[0].image.tobytes() != v[0].image.tobytes()


def test_targets_follow_from_the_scene_graph(train_items):
    checked = Counter()
    for image_id, scene, instructions in train_items:
        objs = scene.visible_objects()
        for ins in instructions:
            expected, _ = interpret(ins.text, objs, 128)
            assert set(ins.target_ids) == expected, (ins.family, ins.text, ins.target_ids, sorted(expected))
            checked[ins.family] += 1
    assert set(checked) == {"category", "attribute", "spatial", "superlative", "exclusion", "union", "no_target",
                            "reasoning"}
    assert min(checked.values()) >= 40, checked


def test_attribute_example_red_objects(train_items):
    """Every target of "the red objects" is red and every visible red object is a target."""
    seen = 0
    for _, scene, instructions in train_items:
        for ins in instructions:
            if re.fullmatch(r"(all the |the |find all the |select the |show me all |where are the |highlight all )?"
                            r"(red|green|blue|yellow|purple|orange) (objects|shapes|things)\??", ins.text):
                color = ins.text.rstrip("?").split()[-2]
                assert all(o.color == color for o in ins.targets)
                assert {o.obj_id for o in scene.visible_objects() if o.color == color} == set(ins.target_ids)
                seen += 1
    assert seen >= 3


def test_families_tasks_and_no_target(train_items):
    fam, n = Counter(), 0
    for _, scene, instructions in train_items:
        assert len({i.text for i in instructions}) == len(instructions) == 4
        for ins in instructions:
            n += 1
            fam[ins.family] += 1
            assert (ins.family == "no_target") == (ins.target_ids == [])
            assert ins.task in ("referring", "multi_instance", "reasoning")
            if ins.task == "referring":
                assert len(ins.target_ids) <= 1
            if ins.family == "superlative":
                assert ins.task == "referring" and len(ins.target_ids) == 1
            if ins.family == "reasoning":
                assert ins.task == "reasoning"
            if ins.family in ("category", "attribute", "exclusion", "union"):
                assert ins.task == "multi_instance"
    assert 0.06 <= fam["no_target"] / n <= 0.15, fam
    assert max(fam.values()) / n < 0.2, fam  # no family dominates


def test_visible_masks_are_consistent_with_the_pixels(train_items):
    min_area = min_visible_area(128)
    for _, scene, _ in train_items[:60]:
        covered = np.zeros((128, 128), bool)
        for o in scene.objects:
            assert not (o.visible_mask & covered).any(), "visible masks must not overlap"
            covered |= o.visible_mask
            assert (o.visible_mask <= o.full_mask).all()
            assert o.visible_area >= max(min_area, 0.45 * o.full_area)  # no slivers
            ys, xs = np.nonzero(o.full_mask)
            assert xs.max() - xs.min() + 1 >= 10 and ys.max() - ys.min() + 1 >= 10  # >= 10 px objects
            if o.texture == "solid":  # the visible pixels really show this object's colour
                mean = scene.image[o.visible_mask].astype(float).mean(0)
                assert np.abs(mean - np.array(o.rgb)).max() < 8, (o.color, mean, o.rgb)
        for i, o in enumerate(scene.objects):  # occlusion: later objects hide earlier ones
            for later in scene.objects[i + 1:]:
                assert not (o.visible_mask & later.full_mask).any()
    assert sum(len(s.objects) for _, s, _ in train_items) / len(train_items) > 4


def test_in_memory_samples_carry_visible_masks(train_items):
    ds = SyntheticInst2Seg("train", 40)
    for i in range(40):
        s = ds[i]
        image_id, scene, instructions = train_items[i // 4]
        by_id = {o.obj_id: o for o in scene.objects}
        assert s.image_id == image_id and s.text == instructions[i % 4].text
        for tid, m, box in zip(s.target_ids, s.masks, s.boxes):
            np.testing.assert_array_equal(m, by_id[tid].visible_mask)
            ys, xs = np.nonzero(m)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        # every other visible object is carried as a non-target (training supervises all objects' masks)
        others = [o for o in scene.visible_objects() if o.obj_id not in s.target_ids]
        assert len(s.other_masks) == len(others) == len(scene.visible_objects()) - len(s.target_ids)
        for o, m in zip(others, s.other_masks):
            np.testing.assert_array_equal(m, o.visible_mask)


def test_heldout_pairs_never_in_train_val_test(train_items):
    for split, items in (("train", train_items), ("val", _items("val", 40)), ("test", _items("test", 40))):
        for _, scene, instructions in items:
            assert not {(o.color, o.shape) for o in scene.objects} & HELDOUT_PAIRS
            for ins in instructions:
                _, named = interpret(ins.text, scene.visible_objects(), 128)
                assert not named & HELDOUT_PAIRS, (split, ins.text)


def test_heldout_split_uses_heldout_pairs(heldout_items):
    involved = total = 0
    for _, scene, instructions in heldout_items:
        assert {(o.color, o.shape) for o in scene.objects} & HELDOUT_PAIRS
        for ins in instructions:
            expected, named = interpret(ins.text, scene.visible_objects(), 128)
            assert set(ins.target_ids) == expected, ins.text
            total += 1
            involved += bool(named & HELDOUT_PAIRS or {(o.color, o.shape) for o in ins.targets} & HELDOUT_PAIRS)
    assert involved / total > 0.8


def test_image_size_is_a_parameter():
    s = SyntheticInst2Seg("train", 4, image_size=64)[0]
    assert s.image.shape == (64, 64, 3) and s.masks.shape[1:] == (64, 64)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        SyntheticInst2Seg("dev", 4)


# ------------------------------------------------------------------------------------------ videos


@pytest.fixture(scope="module")
def videos():
    return [SyntheticVideos("train", 8, seed=0, num_frames=10)[i] for i in range(8)]


def test_video_ids_persist_and_masks_follow_motion(videos):
    kinds = Counter()
    for v in videos:
        T = v.num_frames
        assert set(v.masks) == set(v.objects) == set(v.centers)
        covered = np.zeros((T, 128, 128), bool)
        for oid, masks in v.masks.items():
            kinds[v.objects[oid]["motion"]] += 1
            assert masks.shape == (T, 128, 128)
            assert not (masks & covered).any()
            covered |= masks
            c = v.centers[oid]
            if v.objects[oid]["motion"] != "bounce":  # constant velocity
                np.testing.assert_allclose(np.diff(c, 2, axis=0), 0, atol=1e-9)
            for t in range(T):
                if not masks[t].any():
                    continue
                ys, xs = np.nonzero(masks[t])
                # every visible pixel lies within the object's radius of its centre at that frame
                r = np.hypot(xs - c[t, 0], ys - c[t, 1]).max()
                assert r <= 0.16 * 1.07 * 128 * 1.2 + 1.5
            # mask moves with the centre: centroid of unoccluded, fully inside frames ~ centre (symmetric shapes)
            if v.objects[oid]["shape"] in ("circle", "ring", "square", "cross"):
                for t in range(T):
                    m = masks[t]
                    if m.any() and not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any():
                        full = m.sum()
                        ys, xs = np.nonzero(m)
                        if full > 0.98 * masks.sum(axis=(1, 2)).max():  # unoccluded in this frame
                            # pixel i covers [i, i+1): its centre is i + 0.5
                            assert abs(xs.mean() + 0.5 - c[t, 0]) < 1.0 and abs(ys.mean() + 0.5 - c[t, 1]) < 1.0
        for ins in v.instructions:
            assert ins["task"] == "video" and len(ins["targets_per_frame"]) == T
            for t, ids in enumerate(ins["targets_per_frame"]):
                present = {i for i, m in v.masks.items() if m[t].sum() >= v.min_visible_area}
                assert set(ids) == set(ins["target_ids"]) & present
                fs = v.frame_sample(t, v.instructions.index(ins))
                assert fs.target_ids == ids and fs.masks.shape == (len(ids), 128, 128)
    assert {"bounce", "linear", "enter", "leave"} <= set(kinds)
    # objects enter and leave: some object is absent in some frames and present in others
    assert any(0 < sum(m[t].any() for t in range(v.num_frames)) < v.num_frames
               for v in videos for m in v.masks.values())


def test_video_round_trip_and_determinism(tmp_path, videos):
    v = videos[0]
    write_video(tmp_path / "a", v, split="train")
    write_video(tmp_path / "b", SyntheticVideos("train", 8, seed=0, num_frames=10)[0], split="train")
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    r = read_video(tmp_path / "a")
    np.testing.assert_array_equal(r.frames, v.frames)
    assert r.objects == {k: dict(a) for k, a in v.objects.items()} and r.instructions == v.instructions
    for oid in v.masks:
        np.testing.assert_array_equal(r.masks[oid], v.masks[oid])


# ------------------------------------------------------------------------------------------ CLI


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_cli_writes_inst2seg_equal_to_in_memory(tmp_path):
    args = ["--train", "3", "--val", "2", "--test", "2", "--heldout", "2", "--image-size", "96", "--seed", "5",
            "--videos", "1", "--video-frames", "4"]
    main(["--out", str(tmp_path / "a")] + args)
    main(["--out", str(tmp_path / "b")] + args)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    for split in SPLITS:
        ds = Inst2SegDataset(tmp_path / "a", split)
        mem = SyntheticInst2Seg(split, len(ds), image_size=96, seed=5)
        assert len(ds) == (3 if split == "train" else 2) * 4
        for i in range(len(ds)):
            x, y = ds[i], mem[i]
            assert (x.text, x.task, x.family, x.target_ids, x.instruction_id) == \
                (y.text, y.task, y.family, y.target_ids, y.instruction_id)
            np.testing.assert_array_equal(x.image, y.image)
            np.testing.assert_array_equal(x.masks, y.masks)
            np.testing.assert_array_equal(x.boxes, y.boxes)
        vids = list((tmp_path / "a" / "videos" / split).iterdir())
        assert len(vids) == 1 and read_video(vids[0]).num_frames == 4
