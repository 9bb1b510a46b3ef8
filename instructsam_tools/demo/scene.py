"""The demo's synthetic camera video and the planner's default script (no ROS here).

The video is one of the synthetic generator's moving-object videos (instructsam_tools.data.synthetic, "test" split:
never trained on), rendered with as many frames as the demo asks for. Camera, planner and launcher each call
these pure functions with the same (seed, index, frames, size), so they agree on the scene without exchanging it.

The script asks for what the video shows, so a trained model has something to find:
    1. every object of the most common shape ("all the circles"),
    2. a switch mid-stream to a colour + shape ("the blue star"),
    3. a no-target instruction: a colour x shape pair that never appears in the video,
    4. back to a real one: every object of the most common colour.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from instructsam_tools.data.synthetic import SyntheticVideos
from instructsam_tools.data.synthetic_language import SHAPE_WORDS
from instructsam_tools.data.synthetic_scene import COLOR_NAMES, HELDOUT_PAIRS, SHAPES
from instructsam_tools.data.synthetic_video import VideoSample

SPLIT = "test"
MAX_OBJECTS = 8
SEARCH = 32  # video indices tried by pick_video
STEP_FRACTIONS = (0.0, 0.3, 0.55, 0.8)  # where the four steps start, as fractions of the video


@dataclass(frozen=True)
class Step:
    """One scripted instruction: published when the camera reaches frame `at_frame`."""
    at_frame: int
    id: str
    text: str
    task: str = ""  # "" = the node's default template
    kind: str = ""  # what the step shows: "category", "switch", "no_target", ...
    targets: tuple[int, ...] = ()  # the video's object ids the instruction means (the demo scores itself on them)

    def as_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


def _videos(seed: int, size: int, frames: int, count: int) -> SyntheticVideos:
    return SyntheticVideos(SPLIT, count, image_size=size, seed=seed, num_frames=frames, max_objects=MAX_OBJECTS)


def cast(seed: int, index: int, size: int) -> dict[int, dict]:
    """The objects of video `index` (id -> shape, color, size, texture, motion) without rendering it.

    The generator draws every object (attributes, motion) before it renders any frame, so a one-frame video
    has the same objects as a long one (tests/test_demo.py checks it)."""
    return _videos(seed, size, 1, index + 1)[index].objects


def pick_video(seed: int, size: int, search: int = SEARCH) -> int:
    """The first video index whose scene suits the demo: at least three objects that bounce around (stay in
    view all along) and at least two of them with the same shape. 0 if none of the first `search` does."""
    for index in range(search):
        bouncing = [o for o in cast(seed, index, size).values() if o["motion"] == "bounce"]
        if len(bouncing) >= 3 and Counter(o["shape"] for o in bouncing).most_common(1)[0][1] >= 2:
            return index
    return 0


def demo_video(seed: int, index: int, frames: int, size: int) -> VideoSample:
    """The camera's video: `frames` frames of `size` x `size` pixels."""
    if frames < 1:
        raise ValueError(f"the demo video needs at least 1 frame, got frames={frames}")
    if index < 0:
        raise ValueError(f"video index must be >= 0 (use pick_video for the default), got {index}")
    return _videos(seed, size, frames, index + 1)[index]


def _plural(shape: str) -> str:
    return SHAPE_WORDS[shape][0][1]


def _singular(shape: str) -> str:
    return SHAPE_WORDS[shape][0][0]


def default_script(objects: dict[int, dict], frames: int) -> list[Step]:
    """Four steps over the video's objects (see the module docstring); ids demo-1 .. demo-4."""
    if not objects:
        raise ValueError("the demo video has no objects to ask about")
    objs = list(objects.values())
    stay = [o for o in objs if o["motion"] == "bounce"] or objs
    # 1. the most common shape among the objects that stay in view (circles win ties: "all the circles")
    shapes = Counter(o["shape"] for o in stay)
    shape = max(shapes, key=lambda s: (shapes[s], s == "circle", -SHAPES.index(s)))
    # 2. the switch: a colour + shape of another object that stays in view
    other = next((o for o in stay if o["shape"] != shape), None) or next(
        (o for o in objs if o["shape"] != shape), stay[0])
    same = [o for o in objs if (o["color"], o["shape"]) == (other["color"], other["shape"])]
    if len(same) > 1:
        switch, switch_task = f"all the {other['color']} {_plural(other['shape'])}", "multi_instance"
    else:
        switch, switch_task = f"the {other['color']} {_singular(other['shape'])}", "referring"
    # 3. no target: a shape absent from the whole video (else an absent colour x shape pair), never a held-out
    #    pair (the model never saw those named together)
    present_shapes = {o["shape"] for o in objs}
    present_colours = {o["color"] for o in objs}
    present_pairs = {(o["color"], o["shape"]) for o in objs}
    candidates = [(c, s) for s in SHAPES for c in COLOR_NAMES
                  if (c, s) not in present_pairs and (c, s) not in HELDOUT_PAIRS]
    candidates.sort(key=lambda p: (p[1] in present_shapes, p[0] in present_colours))
    colour, absent = candidates[0]
    # 4. back to a real one: the most common colour
    colours = Counter(o["color"] for o in stay)
    back = max(colours, key=lambda c: (colours[c], -COLOR_NAMES.index(c)))
    def ids(keep) -> tuple[int, ...]:
        return tuple(sorted(i for i, o in objects.items() if keep(o)))
    texts = [
        (f"all the {_plural(shape)}", "multi_instance", "category", ids(lambda o: o["shape"] == shape)),
        (switch, switch_task, "switch", ids(lambda o: (o["color"], o["shape"]) == (other["color"], other["shape"]))),
        (f"all the {colour} {_plural(absent)}", "multi_instance", "no_target", ()),
        (f"every {back} object", "multi_instance", "back", ids(lambda o: o["color"] == back)),
    ]
    starts = [min(frames - 1, round(f * frames)) for f in STEP_FRACTIONS]
    return [Step(at_frame=start, id=f"demo-{k + 1}", text=text, task=task, kind=kind, targets=targets)
            for k, (start, (text, task, kind, targets)) in enumerate(zip(starts, texts))]


def script_for(seed: int, index: int, frames: int, size: int) -> list[Step]:
    """default_script for the demo video (index < 0: pick_video)."""
    if index < 0:
        index = pick_video(seed, size)
    return default_script(cast(seed, index, size), frames)
