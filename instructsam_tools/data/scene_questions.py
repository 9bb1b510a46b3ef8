"""Scene language for pretraining the VLM: questions about a synthetic scene and their answers.

The same scenes as the instruction data (synthetic.py), with questions instead of instructions. Each answer
follows from the visible scene graph, so next-token training on them makes the VLM's vision tower and language
model ground the words (colour, shape, texture, count, position) before they meet the instance queries:

    colour     "What colour is the striped circle?"             -> "red"
    shape      "What shape is the blue object?"                 -> "star"
    texture    "What pattern is on the small square?"           -> "dotted"
    count      "How many green objects are there?"              -> "two"
    exists     "Is there a yellow ring in the picture?"         -> "yes" / "no" (a near miss, half the time)
    extreme    "Which object is furthest to the left?"          -> "the orange cross"
    describe   "What objects do you see, from left to right?"   -> "a red circle, a blue star and a green ring"
    colours    "Which colours do you see?"                      -> "red, green and blue" (in COLOR_NAMES' order)
    shapes     "Which shapes are in the picture?"               -> "circle and star" (in SHAPES' order)

The last two need no binding of a word to a place (a bag of what the image tokens carry answers them): the first
thing a VLM whose image path works can learn, so they tell a broken image path from a slow one.

A question is emitted only when its answer is unambiguous (an object named by a description that fits it alone;
an extreme object clear of the next by the context's margin). Held-out colour x shape pairs are never named
outside the heldout split, as in the instruction data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from instructsam_tools.data.synthetic_language import (Descriptor, LanguageContext, near_miss, noun_phrase, pick,
                                                      random_descriptor, unique_description)
from instructsam_tools.data.synthetic_scene import COLOR_NAMES, SHAPES, SceneObject

QUESTION_KINDS = {"colour": 0.15, "shape": 0.15, "texture": 0.1, "count": 0.15, "exists": 0.15, "extreme": 0.1,
                  "describe": 0.1, "colours": 0.05, "shapes": 0.05}
NUMBER_WORDS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
# attribute sets that may name the object a question is about, shortest first (the asked attribute left out)
_NAMING = {"colour": (("shape",), ("shape", "texture"), ("shape", "size"), ("shape", "size", "texture")),
           "shape": (("color",), ("color", "texture"), ("color", "size"), ("color", "size", "texture")),
           "texture": (("shape",), ("shape", "color"), ("shape", "size"), ("shape", "color", "size"))}
_ASKED = {"colour": "color", "shape": "shape", "texture": "texture"}
_TEMPLATES = {
    "colour": ("What colour is the {S}?", "Which colour does the {S} have?", "Tell me the colour of the {S}."),
    "shape": ("What shape is the {S}?", "Which shape is the {S}?", "What is the shape of the {S}?"),
    "texture": ("What pattern is on the {S}?", "Is the {S} solid, striped or dotted?", "What texture has the {S}?"),
    "count": ("How many {P} are there?", "How many {P} can you see?", "Count the {P}."),
    "exists": ("Is there a {S} in the picture?", "Can you see a {S}?", "Does the image show a {S}?"),
    "describe": ("What objects do you see, from left to right?", "List the objects from left to right.",
                 "Describe the scene from left to right."),
    "colours": ("Which colours do you see?", "What colours are in the picture?", "Name the colours you see."),
    "shapes": ("Which shapes do you see?", "Which shapes are in the picture?", "Name the shapes you see."),
}
_EXTREME = {"left": (0, -1, ("Which object is furthest to the left?", "What is the leftmost object?")),
            "right": (0, 1, ("Which object is furthest to the right?", "What is the rightmost object?")),
            "top": (1, -1, ("Which object is nearest the top?", "What is the topmost object?")),
            "bottom": (1, 1, ("Which object is nearest the bottom?", "What is the lowest object?"))}
_COUNT_KINDS = (("shape",), ("color",), ("color", "shape"), ("texture",), ("size",))
_EXISTS_KINDS = (("shape",), ("color", "shape"), ("color", "shape"), ("texture", "shape"), ("size", "shape"))


@dataclass(frozen=True)
class SceneQuestion:
    question: str
    answer: str
    kind: str  # a key of QUESTION_KINDS
    about: tuple = ()  # what it asks, wording aside: one scene asks each thing once ("big" and "large" alike)


def _naming_descriptor(objs: Sequence[SceneObject], o: SceneObject, kind: str) -> Descriptor | None:
    for keys in _NAMING[kind]:
        d = Descriptor(**{k: getattr(o, k) for k in keys})
        if [x for x in objs if d.matches(x)] == [o]:
            return d
    return None


def _attribute_question(rng, objs, ctx, kind: str) -> SceneQuestion | None:
    if not objs:
        return None
    o = pick(rng, objs)
    d = _naming_descriptor(objs, o, kind)
    if d is None or any(not ctx.allow_pair(*p) for p in d.pairs()):
        return None
    return SceneQuestion(pick(rng, _TEMPLATES[kind]).format(S=noun_phrase(rng, d, False)), getattr(o, _ASKED[kind]),
                         kind, (kind, o.obj_id))


def _count_question(rng, objs, ctx) -> SceneQuestion | None:
    d = random_descriptor(rng, _COUNT_KINDS, ctx.allow_pair, like=pick(rng, objs) if objs and rng.random() < 0.8
                          else None)
    n = sum(d.matches(o) for o in objs)
    if n >= len(NUMBER_WORDS):
        return None
    question = pick(rng, _TEMPLATES["count"]).format(P=noun_phrase(rng, d, True))
    return SceneQuestion(question, NUMBER_WORDS[n], "count", ("count", d))


def _exists_question(rng, objs, ctx) -> SceneQuestion | None:
    if objs and rng.random() < 0.5:
        d = random_descriptor(rng, _EXISTS_KINDS, ctx.allow_pair, like=pick(rng, objs))
    elif objs and rng.random() < 0.7:
        d = near_miss(rng, _EXISTS_KINDS, ctx.allow_pair, pick(rng, objs))
    else:
        d = random_descriptor(rng, _EXISTS_KINDS, ctx.allow_pair)
    if any(not ctx.allow_pair(*p) for p in d.pairs()):
        return None
    answer = "yes" if any(d.matches(o) for o in objs) else "no"
    return SceneQuestion(pick(rng, _TEMPLATES["exists"]).format(S=noun_phrase(rng, d, False)), answer, "exists", ("exists", d))


def _extreme_question(rng, objs, ctx) -> SceneQuestion | None:
    if len(objs) < 2:
        return None
    side = pick(rng, list(_EXTREME))
    axis, sign, templates = _EXTREME[side]
    ranked = sorted(objs, key=lambda o: sign * o.centroid[axis], reverse=True)
    if abs(ranked[0].centroid[axis] - ranked[1].centroid[axis]) < ctx.margin:
        return None
    d = unique_description(objs, ranked[0])
    if d is None or any(not ctx.allow_pair(*p) for p in d.pairs()):
        return None
    return SceneQuestion(pick(rng, templates), "the " + noun_phrase(rng, d, False), "extreme", ("extreme", side))


def _describe_question(rng, objs, ctx) -> SceneQuestion | None:
    ordered = sorted(objs, key=lambda o: o.centroid[0])
    if any(not ctx.allow_pair(o.color, o.shape) for o in ordered):
        return None
    items = [f"{'an' if o.color[0] in 'aeiou' else 'a'} {o.color} {o.shape}" for o in ordered]
    return SceneQuestion(pick(rng, _TEMPLATES["describe"]), _listing(items), "describe", ("describe",))


def _listing(items: Sequence[str]) -> str:
    return "nothing" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _present_question(rng, objs, ctx, kind: str) -> SceneQuestion | None:
    key, values = ("color", COLOR_NAMES) if kind == "colours" else ("shape", SHAPES)
    present = {getattr(o, key) for o in objs}
    return SceneQuestion(pick(rng, _TEMPLATES[kind]), _listing([v for v in values if v in present]), kind, (kind,))


def _generate(rng, objs, ctx, kind: str) -> SceneQuestion | None:
    if kind in _ASKED:
        return _attribute_question(rng, objs, ctx, kind)
    if kind in ("colours", "shapes"):
        return _present_question(rng, objs, ctx, kind)
    return {"count": _count_question, "exists": _exists_question, "extreme": _extreme_question,
            "describe": _describe_question}[kind](rng, objs, ctx)


def scene_questions(rng: np.random.Generator, objects: Sequence[SceneObject], ctx: LanguageContext, count: int,
                    tries: int = 40) -> list[SceneQuestion]:
    """`count` questions, each asking a different thing, about the visible `objects`, kinds drawn by QUESTION_KINDS' weights
    (a kind the scene cannot support is drawn again). Fewer only when the scene supports fewer distinct ones."""
    kinds = list(QUESTION_KINDS)
    weights = np.array([QUESTION_KINDS[k] for k in kinds])
    out: list[SceneQuestion] = []
    seen: set[tuple] = set()
    for _ in range(tries):
        if len(out) == count:
            break
        q = _generate(rng, objects, ctx, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))])
        if q is not None and q.about not in seen:
            out.append(q)
            seen.add(q.about)
    return out


__all__ = ["QUESTION_KINDS", "NUMBER_WORDS", "SceneQuestion", "scene_questions"]
