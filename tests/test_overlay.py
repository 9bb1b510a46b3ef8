"""The overlay drawing shared by the node, the demo GIF and the bag evaluator."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from instructsam.pipeline.drawing import LOST_COLOUR, draw_overlay, draw_result, track_colour


@dataclass
class Inst:
    id: str
    score: float
    state: str
    mask: np.ndarray
    box: np.ndarray = field(default_factory=lambda: np.zeros(4))


def scene():
    image = np.full((120, 160, 3), 40, np.uint8)
    a = np.zeros((120, 160), bool)
    a[60:100, 20:60] = True
    b = np.zeros((120, 160), bool)
    b[60:110, 100:150] = True
    return image, a, b


def test_track_colours_are_stable_and_distinct():
    assert track_colour("7") == track_colour("7")
    assert len({track_colour(str(i)) for i in range(20)}) >= 18
    assert all(0 <= c <= 255 for c in track_colour("front-3"))


def test_masks_are_tinted_with_their_track_colour_and_the_input_is_untouched():
    image, a, b = scene()
    before = image.copy()
    out = draw_overlay(image, [Inst("1", 0.9, "tracked", a), Inst("2", 0.8, "new", b)], "every red mug")
    np.testing.assert_array_equal(image, before)
    assert out.shape == image.shape and out.dtype == np.uint8
    inner_a, inner_b = out[80, 40].astype(int), out[85, 125].astype(int)
    # inside each mask the pixel moved from the background towards that track's colour
    for pixel, tid in ((inner_a, "1"), (inner_b, "2")):
        expected = (np.array([40, 40, 40]) * 0.5 + np.array(track_colour(tid)) * 0.5).astype(int)
        np.testing.assert_allclose(pixel, expected, atol=1)
    assert (out[0:14, 0:60] != image[0:14, 0:60]).any(), "the instruction text is drawn at the top"
    np.testing.assert_array_equal(out[118, 80], image[118, 80])  # far from masks, boxes and text


def test_lost_instances_get_a_grey_box_and_no_mask():
    image, a, _ = scene()
    lost = Inst("9", 0.4, "lost", np.zeros_like(a), np.array([20.0, 60.0, 60.0, 100.0]))
    out = draw_overlay(image, [lost])
    assert tuple(out[80, 20]) == LOST_COLOUR  # left edge of its box
    np.testing.assert_array_equal(out[80, 40], image[80, 40])  # inside: no mask tint


def test_draw_result_uses_the_instructions_text():
    image, a, _ = scene()

    @dataclass
    class Result:
        instances: list
        instruction: object

    @dataclass
    class Ins:
        text: str

    with_text = draw_result(image, Result([Inst("1", 0.9, "tracked", a)], Ins("the mug")))
    without = draw_overlay(image, [Inst("1", 0.9, "tracked", a)])
    assert (with_text != without).any()
    np.testing.assert_array_equal(draw_result(image, Result([], None)), image)
