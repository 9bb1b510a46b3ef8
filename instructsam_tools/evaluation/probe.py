"""Instruction sensitivity: does the answer follow the attribute the instruction names?

    python -m instructsam_tools.evaluation.probe --checkpoint DIR [--scenes 60] [--split test] [--wording phrase]
        [--out FILE.json]

Each synthetic scene is asked, on the same image, once per value of an attribute that its visible objects show:
"all the red objects", "all the blue objects", ... (colour) and "all the circles", "all the stars", ... (shape);
`--wording phrase` asks SAM3-style concept phrases instead ("red object", "circle").
An object is *covered* by an answer when the union of the answer's kept masks covers more than half of its
visible pixels. Over all (object, asked value) pairs:
    own   = the fraction covered when the object's own value is asked (should be high),
    other = the fraction covered when another value is asked (should be low).
A model that segments salient objects whatever is asked has own ~= other. Targets of the training recipe: own >= 0.90,
other <= 0.05, for colour and for shape.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instructsam_tools.data.synthetic import SyntheticInst2Seg
from instructsam_tools.data.synthetic_language import SHAPE_WORDS

ATTRIBUTES = ("color", "shape")
COVERED_FRACTION = 0.5  # more than half of an object's visible pixels
TASK = "multi_instance"
TARGET_OWN, TARGET_OTHER = 0.90, 0.05
WORDINGS = ("instruction", "phrase")


def instruction_for(attribute: str, value: str, wording: str = "instruction") -> str:
    """The probe's wording: "all the red objects" / "all the circles" (instruction), or the concept phrase SAM3 is
    prompted with, "red object" / "circle" (phrase)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
    if wording not in WORDINGS:
        raise ValueError(f"unknown wording {wording!r}; expected one of {WORDINGS}")
    singular, plural = (f"{value} object", f"{value} objects") if attribute == "color" else SHAPE_WORDS[value][0]
    return f"all the {plural}" if wording == "instruction" else singular


@dataclass
class ProbeCounts:
    """Covered / asked counts, for own-value and other-value asks."""
    own_covered: int = 0
    own_asked: int = 0
    other_covered: int = 0
    other_asked: int = 0

    def add(self, own: bool, covered: bool) -> None:
        if own:
            self.own_asked += 1
            self.own_covered += covered
        else:
            self.other_asked += 1
            self.other_covered += covered

    def summary(self) -> dict:
        own = self.own_covered / self.own_asked if self.own_asked else None
        other = self.other_covered / self.other_asked if self.other_asked else None
        return {"own": own, "other": other, "own_asked": self.own_asked, "other_asked": self.other_asked,
                "meets_target": own is not None and other is not None and own >= TARGET_OWN and other <= TARGET_OTHER}


def covered(object_masks: np.ndarray, answer_masks: np.ndarray) -> np.ndarray:
    """(N,) bool: which of N (H, W) object masks the union of the answer's (M, H, W) masks covers > half of."""
    union = answer_masks.any(axis=0) if len(answer_masks) else np.zeros(object_masks.shape[1:], dtype=bool)
    inside = (object_masks & union).sum(axis=(1, 2))
    return inside > COVERED_FRACTION * object_masks.sum(axis=(1, 2))


def score_scene(counts: ProbeCounts, values: list[str], object_masks: np.ndarray, answers: dict[str, np.ndarray]
                ) -> None:
    """Add one scene: values[i] is object i's value of the attribute; answers maps each asked value to the kept
    masks of its answer."""
    for asked, masks in answers.items():
        for own, hit in zip((v == asked for v in values), covered(object_masks, masks)):
            counts.add(own, bool(hit))


@torch.no_grad()
def probe(model, dataset: SyntheticInst2Seg, num_scenes: int, attributes=ATTRIBUTES,
          score_threshold: float | None = None, wording: str = "instruction") -> dict:
    """{attribute: ProbeCounts.summary()} over the first `num_scenes` scenes of the dataset (scenes whose
    visible objects all share one value of an attribute give only own-value asks for it)."""
    model.eval()
    counts = {a: ProbeCounts() for a in attributes}
    for index in range(min(num_scenes, dataset.num_images)):
        _, scene, _ = dataset.scene(index)
        objects = scene.visible_objects()
        if not objects:
            continue
        object_masks = np.stack([o.visible_mask for o in objects])
        asks = [(a, v) for a in attributes for v in sorted({getattr(o, a) for o in objects})]
        features = model.encode_image([scene.image], tracker=False)
        texts = [instruction_for(a, v, wording) for a, v in asks]
        output = model.segment(features, texts, image_index=[0] * len(asks), task=TASK)
        predictions = model.postprocess(output, features.original_sizes, score_threshold=score_threshold)
        for attribute in attributes:
            answers = {v: p.masks for (a, v), p in zip(asks, predictions) if a == attribute}
            score_scene(counts[attribute], [getattr(o, attribute) for o in objects], object_masks, answers)
    return {a: c.summary() for a, c in counts.items()}


def format_probe(result: dict) -> str:
    lines = ["attribute | covered when its own value is asked | when another is asked | meets target "
             f"(own >= {TARGET_OWN:.2f}, other <= {TARGET_OTHER:.2f})", "--- | --- | --- | ---"]
    for attribute, r in result.items():
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f} %"
        lines.append(f"{attribute} | {pct(r['own'])} ({r['own_asked']}) | {pct(r['other'])} ({r['other_asked']}) | "
                     f"{'yes' if r['meets_target'] else 'no'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from instructsam_tools.evaluation.evaluate import load_model

    parser = argparse.ArgumentParser(prog="python -m instructsam_tools.evaluation.probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="InstructSAM directory or a training step checkpoint")
    parser.add_argument("--scenes", type=int, default=60, help="synthetic scenes probed (default 60)")
    parser.add_argument("--split", default="test", help="synthetic split (default test)")
    parser.add_argument("--image-size", type=int, default=128, help="synthetic image size (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed (default 0)")
    parser.add_argument("--attribute", choices=ATTRIBUTES, action="append", default=None,
                        help="probe only this attribute (repeatable; default: colour and shape)")
    parser.add_argument("--score-threshold", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--wording", choices=WORDINGS, default="instruction",
                        help="ask 'all the red objects' (instruction, default) or 'red object' (phrase)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")
    dataset = SyntheticInst2Seg(args.split, size=args.scenes, image_size=args.image_size, seed=args.seed,
                                instructions_per_image=1)
    model = load_model(args.checkpoint, args.device)
    result = probe(model, dataset, args.scenes, tuple(args.attribute or ATTRIBUTES), args.score_threshold,
                   args.wording)
    print(format_probe(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"run": {"checkpoint": str(args.checkpoint), "scenes": args.scenes,
                                                      "split": args.split, "seed": args.seed,
                                                      "wording": args.wording}, **result},
                                             indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
