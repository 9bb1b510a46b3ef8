"""Instructions over a synthetic scene graph, with target sets that follow from the visible scene.

Each family has a generator `gen_<family>(rng, objects, ctx) -> Instruction | None` that samples
a referring expression *and* computes its answer from the objects; it returns None when the scene
does not support an unambiguous instance of the family (e.g. two candidates nearly level for
"the leftmost star"), so every emitted target set is well defined. The vocabulary is deliberately
small (6 shapes, 6 colours, 3 sizes, 3 textures, a few synonyms) so a tiny model trained from
scratch can learn it; variety comes from several templates per family.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from instructsam_tools.data.synthetic_scene import COLOR_NAMES, SHAPES, SIZE_NAMES, TEXTURES, SceneObject

FAMILIES = ("category", "attribute", "spatial", "superlative", "exclusion", "union", "no_target", "reasoning")
# Sampling weights: ~10 % no-target, the rest even over the other seven families, with superlative
# drawn a little more often because scenes more often fail to support an unambiguous one (and
# no-target absorbs what empty scenes cannot support), so the emitted mix comes out about even.
FAMILY_WEIGHTS = {f: (0.085 if f == "no_target" else 0.915 / 7 * (1.1 if f == "superlative" else 1.0))
                  for f in FAMILIES}

SHAPE_WORDS = {  # singular, plural; first entry is the canonical name
    "circle": [("circle", "circles"), ("disk", "disks")],
    "square": [("square", "squares")],
    "triangle": [("triangle", "triangles")],
    "star": [("star", "stars")],
    "ring": [("ring", "rings"), ("donut", "donuts")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs")],
}
GENERIC_WORDS = [("object", "objects"), ("shape", "shapes"), ("thing", "things")]
SIZE_WORDS = {"small": ["small", "little"], "medium": ["medium", "medium-sized"], "large": ["large", "big"]}
TEXTURE_WORDS = {"solid": ["solid", "plain"], "striped": ["striped"], "dotted": ["dotted", "spotted"]}

# Reasoning: what a shape affords / resembles. Each entry: shapes it picks out, noun phrases
# ("something you could roll") and full questions/commands.
AFFORDANCES = {
    "roll": ({"circle", "ring"},
             ["something you could roll", "anything that could roll", "the things that would roll down a slope"],
             ["which objects could roll across a table?", "show me what could roll like a wheel"]),
    "hole": ({"ring"},
             ["something with a hole in the middle", "something you could thread a string through"],
             ["what could hang on a hook?", "which objects have a hole in them?"]),
    "pointy": ({"triangle", "star"},
               ["something with sharp points", "the pointy things", "anything that could prick your finger"],
               ["which objects have sharp corners?", "show me what could poke you"]),
    "stack": ({"square"},
              ["something you could stack like a block", "the things with four equal sides"],
              ["which objects could be stacked into a tower?", "show me what looks like a box from above"]),
    "sky": ({"star"},
            ["something that shines in the night sky", "what you would put on top of a christmas tree"],
            ["which objects look like they twinkle at night?"]),
    "plus": ({"cross"},
             ["the symbol for adding numbers", "something that marks a pharmacy"],
             ["which objects look like the sign for addition?"]),
    "three": ({"triangle"},
              ["something with exactly three corners", "something shaped like a slice of pizza"],
              ["which objects have three sides?"]),
}
COLOR_RIDDLES = {
    "red": ["a ripe tomato", "a fire truck"],
    "green": ["grass", "a fresh leaf"],
    "blue": ["the sky", "the ocean"],
    "yellow": ["a banana", "the sun"],
    "purple": ["grapes", "lavender"],
    "orange": ["a carrot", "a pumpkin"],
}
ORDINALS = {2: "second", 3: "third"}


def pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


# ----------------------------------------------------------------------------------------------
# descriptors


@dataclass(frozen=True)
class Descriptor:
    """A conjunction of attribute values (None = any)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    texture: str | None = None

    def matches(self, o: SceneObject) -> bool:
        return all(v is None or getattr(o, k) == v for k, v in self.items())

    def items(self):
        return (("shape", self.shape), ("color", self.color), ("size", self.size), ("texture", self.texture))

    def adjectives(self) -> list[str]:
        return [k for k, v in self.items() if v is not None and k != "shape"]

    def is_empty(self) -> bool:
        return all(v is None for _, v in self.items())

    def pairs(self) -> set[tuple[str, str]]:
        return {(self.color, self.shape)} if self.color and self.shape else set()


def combine(a: Descriptor, b: Descriptor) -> Descriptor:
    """Attributes of both (b wins on conflicts); used to know which colour x shape pairs a text names."""
    return Descriptor(*(vb if vb is not None else va for (_, va), (_, vb) in zip(a.items(), b.items())))


def _adj_words(rng: np.random.Generator, d: Descriptor) -> list[str]:
    words = []
    if d.size:
        words.append(pick(rng, SIZE_WORDS[d.size]))
    if d.texture:
        words.append(pick(rng, TEXTURE_WORDS[d.texture]))
    if d.color:
        words.append(d.color)
    return words


def noun_phrase(rng: np.random.Generator, d: Descriptor, plural: bool) -> str:
    """e.g. "large striped red squares" / "blue object"."""
    sing, plur = pick(rng, SHAPE_WORDS[d.shape]) if d.shape else pick(rng, GENERIC_WORDS)
    return " ".join(_adj_words(rng, d) + [plur if plural else sing])


def adjective_phrase(rng: np.random.Generator, d: Descriptor) -> str:
    """Adjectives only, e.g. "green" / "small striped" (d must have no shape)."""
    return " ".join(_adj_words(rng, d))


def unique_description(objects: Sequence[SceneObject], o: SceneObject) -> Descriptor | None:
    """Shortest descriptor that picks out exactly `o` among `objects` (for anchors), or None."""
    for d in (Descriptor(shape=o.shape), Descriptor(shape=o.shape, color=o.color),
              Descriptor(shape=o.shape, size=o.size), Descriptor(shape=o.shape, color=o.color, texture=o.texture),
              Descriptor(shape=o.shape, color=o.color, size=o.size)):
        if [x for x in objects if d.matches(x)] == [o]:
            return d
    return None


ATTRIBUTE_VALUES = {"shape": SHAPES, "color": COLOR_NAMES, "size": SIZE_NAMES, "texture": TEXTURES}


def random_descriptor(rng: np.random.Generator, kinds: Sequence[tuple[str, ...]],
                      allow_pair: Callable[[str, str], bool], like: SceneObject | None = None) -> Descriptor:
    """A descriptor over a random attribute subset; values copied from `like` when given."""
    keys = pick(rng, kinds)
    vals = {}
    for k in keys:
        if like is not None:
            vals[k] = getattr(like, k)
        else:
            vals[k] = pick(rng, ATTRIBUTE_VALUES[k])
    d = Descriptor(**vals)
    if d.color and d.shape and not allow_pair(d.color, d.shape):
        vals.pop("color")
        d = Descriptor(**vals)
    return d


# ----------------------------------------------------------------------------------------------
# instructions


@dataclass
class Instruction:
    text: str
    task: str  # referring / multi_instance / reasoning
    family: str
    targets: list[SceneObject]
    mentions: set[tuple[str, str]] = field(default_factory=set)  # colour x shape pairs named jointly

    @property
    def target_ids(self) -> list[int]:
        return sorted(o.obj_id for o in self.targets)


@dataclass
class LanguageContext:
    image_size: int
    allow_pair: Callable[[str, str], bool]  # may a text name this colour x shape pair?
    focus_pairs: frozenset = frozenset()  # colour x shape pairs no-target questions should often ask about

    @property
    def margin(self) -> float:
        """Positions closer than this (pixels) are 'level': instructions depending on them are not emitted."""
        return 0.05 * self.image_size


def _phrase(rng, templates, **kw) -> str:
    return pick(rng, templates).format(**kw)


PLURAL_CMDS = ["all the {P}", "every {S}", "the {P}", "find all the {P}", "segment every {S}", "show me all {P}",
               "select the {P}", "where are the {P}?", "highlight all {P}"]
ATTR_KINDS = [("color",), ("texture",), ("size",), ("color", "shape"), ("texture", "shape"), ("size", "shape"),
              ("size", "color"), ("color", "texture"), ("size", "color", "shape"), ("texture", "color", "shape")]


def gen_category(rng, objs, ctx) -> Instruction | None:
    if not objs:
        return None
    shape = pick(rng, objs).shape
    d = Descriptor(shape=shape)
    text = _phrase(rng, PLURAL_CMDS, P=noun_phrase(rng, d, True), S=noun_phrase(rng, d, False))
    return Instruction(text, "multi_instance", "category", [o for o in objs if d.matches(o)])


def gen_attribute(rng, objs, ctx) -> Instruction | None:
    if not objs:
        return None
    d = random_descriptor(rng, ATTR_KINDS, ctx.allow_pair, like=pick(rng, objs))
    if not d.adjectives():
        return None
    text = _phrase(rng, PLURAL_CMDS, P=noun_phrase(rng, d, True), S=noun_phrase(rng, d, False))
    return Instruction(text, "multi_instance", "attribute", [o for o in objs if d.matches(o)], d.pairs())


RELATIONS = {  # name -> (axis, sign, singular phrasings); sign -1: smaller coordinate than the anchor
    "left": (0, -1, ["left of", "to the left of", "on the left of"]),
    "right": (0, 1, ["right of", "to the right of", "on the right of"]),
    "above": (1, -1, ["above", "over"]),
    "below": (1, 1, ["below", "under", "beneath"]),
}
REGIONS = {  # name -> (axis, sign, phrasings)
    "top": (1, -1, ["in the top half", "in the upper half", "in the top half of the image"]),
    "bottom": (1, 1, ["in the bottom half", "in the lower half", "in the bottom half of the image"]),
    "left": (0, -1, ["in the left half", "on the left side", "in the left half of the image"]),
    "right": (0, 1, ["in the right half", "on the right side", "in the right half of the image"]),
}
TARGET_KINDS = [(), ("shape",), ("shape",), ("color",), ("color", "shape")]


def _side(value: float, ref: float, sign: int, margin: float) -> bool | None:
    """True if value is clearly on the `sign` side of ref, False if clearly not, None if too close."""
    d = (value - ref) * sign
    if d >= margin:
        return True
    if d <= -margin:
        return False
    return None


def _spatial_phrase(rng, d: Descriptor, where: str, n_true: int) -> tuple[str, str]:
    if n_true == 1 and rng.random() < 0.6:
        return _phrase(rng, ["the {S} {W}", "find the {S} {W}", "the one {S} {W}"],
                       S=noun_phrase(rng, d, False), W=where), "referring"
    return _phrase(rng, ["the {P} {W}", "all {P} {W}", "every {S} {W}", "show me the {P} {W}"],
                   P=noun_phrase(rng, d, True), S=noun_phrase(rng, d, False), W=where), "multi_instance"


def gen_spatial(rng, objs, ctx) -> Instruction | None:
    if not objs:
        return None
    d = random_descriptor(rng, TARGET_KINDS, ctx.allow_pair, like=pick(rng, objs))
    if rng.random() < 0.5 and len(objs) >= 2:  # relation to a uniquely described anchor
        anchor = pick(rng, objs)
        ad = unique_description(objs, anchor)
        if ad is None:
            return None
        rel = pick(rng, list(RELATIONS))
        axis, sign, words = RELATIONS[rel]
        ref = anchor.centroid[axis]
        cands = [o for o in objs if o is not anchor and d.matches(o)]
        where = f"{pick(rng, words)} the {noun_phrase(rng, ad, False)}"
        mentions = d.pairs() | ad.pairs()
    else:
        region = pick(rng, list(REGIONS))
        axis, sign, words = REGIONS[region]
        ref = ctx.image_size / 2
        cands = [o for o in objs if d.matches(o)]
        where = pick(rng, words)
        mentions = d.pairs()
    sides = [_side(o.centroid[axis], ref, sign, ctx.margin) for o in cands]
    if any(s is None for s in sides):
        return None
    targets = [o for o, s in zip(cands, sides) if s]
    if not targets:
        return None
    text, task = _spatial_phrase(rng, d, where, len(targets))
    return Instruction(text, task, "spatial", targets, mentions)


SUPERLATIVES = {  # name -> (key on an object, pick max?, phrasings with {S})
    "largest": ("area", True, ["the largest {S}", "the biggest {S}"]),
    "smallest": ("area", False, ["the smallest {S}", "the tiniest {S}"]),
    "leftmost": ("x", False, ["the leftmost {S}", "the {S} furthest to the left"]),
    "rightmost": ("x", True, ["the rightmost {S}", "the {S} furthest to the right"]),
    "topmost": ("y", False, ["the topmost {S}", "the highest {S}"]),
    "bottommost": ("y", True, ["the bottommost {S}", "the lowest {S}"]),
}
ORDINAL_DIRS = {"left": ("x", False), "right": ("x", True), "top": ("y", False), "bottom": ("y", True)}


def gen_superlative(rng, objs, ctx) -> Instruction | None:
    if len(objs) < 2:
        return None
    d = random_descriptor(rng, TARGET_KINDS, ctx.allow_pair, like=pick(rng, objs))
    group = [o for o in objs if d.matches(o)]
    if len(group) < 2:
        return None
    if rng.random() < 0.3 and len(group) >= 2:  # ordinal: "the second star from the left"
        k = 2 if len(group) < 4 or rng.random() < 0.6 else 3
        direction = pick(rng, list(ORDINAL_DIRS))
        key, descending = ORDINAL_DIRS[direction]
        axis = 0 if key == "x" else 1
        ranked = sorted(group, key=lambda o: o.centroid[axis], reverse=descending)
        pos = [o.centroid[axis] for o in ranked]
        gaps = [abs(pos[i + 1] - pos[i]) for i in range(max(0, k - 2), min(k, len(pos) - 1))]
        if any(g < ctx.margin for g in gaps):
            return None
        text = _phrase(rng, ["the {O} {S} from the {D}", "the {O} {S} counting from the {D}"],
                       O=ORDINALS[k], S=noun_phrase(rng, d, False), D=direction)
        return Instruction(text, "referring", "superlative", [ranked[k - 1]], d.pairs())
    kind = pick(rng, list(SUPERLATIVES))
    key, take_max, templates = SUPERLATIVES[kind]
    if key == "area":
        # Both the shape's own area and its visible area must agree clearly (ratio >= 1.35), so
        # occlusion never makes the answer debatable.
        full = [o.full_area for o in group]
        vis = [o.visible_area for o in group]
        best = (max if take_max else min)(range(len(group)), key=lambda i: full[i])
        for vals in (full, vis):
            others = [v for i, v in enumerate(vals) if i != best]
            a, b = (vals[best], max(others)) if take_max else (min(others), vals[best])
            if a < 1.35 * b:
                return None
        target = group[best]
    else:
        axis = 0 if key == "x" else 1
        ranked = sorted(group, key=lambda o: o.centroid[axis], reverse=take_max)
        if abs(ranked[0].centroid[axis] - ranked[1].centroid[axis]) < ctx.margin:
            return None
        target = ranked[0]
    text = _phrase(rng, templates, S=noun_phrase(rng, d, False))
    return Instruction(text, "referring", "superlative", [target], d.pairs())


EXCL_KINDS = [("color",), ("shape",), ("texture",), ("size",), ("color", "shape")]


def gen_exclusion(rng, objs, ctx) -> Instruction | None:
    if len(objs) < 2:
        return None
    generic = rng.random() < 0.5
    base = Descriptor() if generic else random_descriptor(rng, [("shape",), ("color",)], ctx.allow_pair,
                                                          like=pick(rng, objs))
    members = [o for o in objs if base.matches(o)]
    if len(members) < 2:
        return None
    kinds = [k for k in EXCL_KINDS if not any(getattr(base, a) is not None for a in k)]
    excl = random_descriptor(rng, kinds, ctx.allow_pair, like=pick(rng, members))
    mentions = combine(base, excl).pairs()
    if any(not ctx.allow_pair(c, s) for c, s in mentions):
        return None
    removed = [o for o in members if excl.matches(o)]
    targets = [o for o in members if not excl.matches(o)]
    if not removed or not targets:
        return None
    if excl.shape is None:  # "... except the green ones" / "... that is not green"
        adj = adjective_phrase(rng, excl)
        if generic:
            text = _phrase(rng, ["all {G} except the {A} ones", "everything except the {A} ones",
                                 "every {g} that is not {A}", "all the {G} but the {A} ones"],
                           G=pick(rng, GENERIC_WORDS)[1], g=pick(rng, GENERIC_WORDS)[0], A=adj)
        else:
            text = _phrase(rng, ["all the {P} except the {A} ones", "every {S} that is not {A}",
                                 "the {P} but not the {A} ones"],
                           P=noun_phrase(rng, base, True), S=noun_phrase(rng, base, False), A=adj)
    else:
        ex = noun_phrase(rng, excl, True)
        if generic:
            text = _phrase(rng, ["all {G} except the {E}", "everything except the {E}",
                                 "all the {G} other than the {E}"], G=pick(rng, GENERIC_WORDS)[1], E=ex)
        else:
            text = _phrase(rng, ["all the {P} except the {E}", "every {S} except the {E}"],
                           P=noun_phrase(rng, base, True), S=noun_phrase(rng, base, False), E=ex)
    return Instruction(text, "multi_instance", "exclusion", targets, mentions)


UNION_KINDS = [("shape",), ("shape",), ("color",), ("color", "shape"), ("texture", "shape")]


def gen_union(rng, objs, ctx) -> Instruction | None:
    if len(objs) < 2:
        return None
    a = random_descriptor(rng, UNION_KINDS, ctx.allow_pair, like=pick(rng, objs))
    b = random_descriptor(rng, UNION_KINDS, ctx.allow_pair, like=pick(rng, objs))
    sa = [o for o in objs if a.matches(o)]
    sb = [o for o in objs if b.matches(o)]
    if not sa or not sb or set(map(id, sa)) <= set(map(id, sb)) or set(map(id, sb)) <= set(map(id, sa)):
        return None  # each part must add something, or the "and" is vacuous
    if a.shape is None and b.shape is None and a.adjectives() == ["color"] == b.adjectives():
        text = _phrase(rng, ["all {A} and {B} {G}", "the {A} and the {B} {G}", "every {A} or {B} {g}"],
                       A=a.color, B=b.color, G=pick(rng, GENERIC_WORDS)[1], g=pick(rng, GENERIC_WORDS)[0])
    else:
        text = _phrase(rng, ["the {A} and the {B}", "all {A} and {B}", "both the {A} and the {B}",
                             "the {A} as well as the {B}", "every {a} and every {b}"],
                       A=noun_phrase(rng, a, True), B=noun_phrase(rng, b, True),
                       a=noun_phrase(rng, a, False), b=noun_phrase(rng, b, False))
    targets = [o for o in objs if a.matches(o) or b.matches(o)]
    return Instruction(text, "multi_instance", "union", targets, a.pairs() | b.pairs())


REASON_FRAMES = ["{N}", "find {N}", "show me {N}", "I need {N}", "segment {N}"]


def _reasoning_text(rng, aff: str | None, color: str | None) -> str:
    if aff is not None:
        _, nps, questions = AFFORDANCES[aff]
        if color is None:
            if rng.random() < 0.35:
                return pick(rng, questions)
            return _phrase(rng, REASON_FRAMES, N=pick(rng, nps))
        return _phrase(rng, REASON_FRAMES, N=f"{pick(rng, nps)}, the colour of {pick(rng, COLOR_RIDDLES[color])}")
    return _phrase(rng, ["the objects that are the colour of {R}", "everything coloured like {R}",
                         "show me the things the colour of {R}"], R=pick(rng, COLOR_RIDDLES[color]))


def _reasoning_match(aff: str | None, color: str | None, o: SceneObject) -> bool:
    return (aff is None or o.shape in AFFORDANCES[aff][0]) and (color is None or o.color == color)


def gen_reasoning(rng, objs, ctx) -> Instruction | None:
    if not objs:
        return None
    o = pick(rng, objs)
    affs = [a for a, (shapes, _, _) in AFFORDANCES.items() if o.shape in shapes]
    u = rng.random()
    aff = pick(rng, affs) if u < 0.8 else None
    color = o.color if (u >= 0.55) else None
    mentions = {(color, s) for s in AFFORDANCES[aff][0]} if aff and color else set()
    if any(not ctx.allow_pair(c, s) for c, s in mentions):
        return None
    targets = [x for x in objs if _reasoning_match(aff, color, x)]
    return Instruction(_reasoning_text(rng, aff, color), "reasoning", "reasoning", targets, mentions)


def near_miss(rng: np.random.Generator, kinds: Sequence[tuple[str, ...]], allow_pair: Callable[[str, str], bool],
              like: SceneObject) -> Descriptor:
    """A descriptor of `like` over a random attribute subset with one of those attributes changed (a near miss;
    the caller checks that nothing visible matches it)."""
    d = random_descriptor(rng, kinds, allow_pair, like=like)
    key = pick(rng, [k for k, v in d.items() if v is not None])
    return Descriptor(**{**{k: v for k, v in d.items() if v is not None},
                         key: pick(rng, [v for v in ATTRIBUTE_VALUES[key] if v != getattr(d, key)])})


NO_TARGET_KINDS = [("shape",), ("color", "shape"), ("color", "shape"), ("texture", "shape"), ("size", "shape"),
                   ("color",), ("size", "color", "shape")]


def gen_no_target(rng, objs, ctx, prefer_pairs: Callable[[set], bool] | None = None) -> Instruction | None:
    """Ask for something absent. Often a near miss (a visible object with one attribute changed)."""
    u = rng.random()
    if u < 0.15:  # reasoning with nothing that fits
        aff = pick(rng, list(AFFORDANCES))
        color = pick(rng, COLOR_NAMES) if rng.random() < 0.3 else None
        mentions = {(color, s) for s in AFFORDANCES[aff][0]} if color else set()
        if any(_reasoning_match(aff, color, o) for o in objs) or any(not ctx.allow_pair(*p) for p in mentions):
            return None
        return Instruction(_reasoning_text(rng, aff, color), "reasoning", "no_target", [], mentions)
    if ctx.focus_pairs and u < 0.5:
        color, shape = pick(rng, sorted(ctx.focus_pairs))
        d = Descriptor(shape=shape, color=color)
    elif objs and u < 0.6:
        d = near_miss(rng, NO_TARGET_KINDS, ctx.allow_pair, pick(rng, objs))
    else:
        d = random_descriptor(rng, NO_TARGET_KINDS, ctx.allow_pair)
    if any(d.matches(o) for o in objs) or any(not ctx.allow_pair(*p) for p in d.pairs()):
        return None
    if d.shape is not None and rng.random() < 0.3:
        text = _phrase(rng, ["the {S}", "find the {S}", "where is the {S}?"], S=noun_phrase(rng, d, False))
        task = "referring"
    else:
        text = _phrase(rng, PLURAL_CMDS, P=noun_phrase(rng, d, True), S=noun_phrase(rng, d, False))
        task = "multi_instance"
    return Instruction(text, task, "no_target", [], d.pairs())


# Concept prompts, as SAM3 is trained on (promptable concept segmentation): a singular noun phrase ("red circle",
# "striped square", "object") and every visible object it matches; about a quarter name something absent, mostly a
# near miss (a visible object with one attribute changed), so presence and the empty answer are learned too.
PHRASE_KINDS = [(), ("shape",), ("shape",), ("color",), ("texture",), ("size",), ("color", "shape"),
                ("color", "shape"), ("texture", "shape"), ("size", "shape"), ("size", "color", "shape"),
                ("texture", "color", "shape")]
PHRASE_FAMILIES = {"phrase": 0.75, "phrase_absent": 0.25}


def gen_phrase(rng, objs, ctx) -> Instruction | None:
    if not objs:
        return None
    d = random_descriptor(rng, PHRASE_KINDS, ctx.allow_pair, like=pick(rng, objs))
    return Instruction(noun_phrase(rng, d, False), "multi_instance", "phrase", [o for o in objs if d.matches(o)],
                       d.pairs())


def gen_phrase_absent(rng, objs, ctx) -> Instruction | None:
    kinds = [k for k in PHRASE_KINDS if k]
    if objs and rng.random() < 0.7:
        d = near_miss(rng, kinds, ctx.allow_pair, pick(rng, objs))
    else:
        d = random_descriptor(rng, kinds, ctx.allow_pair)
    if any(d.matches(o) for o in objs) or any(not ctx.allow_pair(*p) for p in d.pairs()):
        return None
    return Instruction(noun_phrase(rng, d, False), "multi_instance", "phrase_absent", [], d.pairs())


# Minimal-pair sets: every instruction of a scene names one attribute and only its value changes ("all the red
# objects", "all the blue objects", ...), so the loss on that image falls only as far as the model reads the value.
CONTRAST_ATTRIBUTES = {"color": 0.4, "shape": 0.4, "texture": 0.1, "size": 0.1}


def contrast_set(rng: np.random.Generator, objs: Sequence[SceneObject], count: int) -> list[Instruction] | None:
    """`count` instructions on one scene that differ only in one attribute's value: values its visible objects
    show first (a random subset of them), then absent ones (no target). One command template and one choice of
    synonyms for the whole set. None for a scene with no visible object."""
    if not objs:
        return None
    names = list(CONTRAST_ATTRIBUTES)
    weights = np.array([CONTRAST_ATTRIBUTES[a] for a in names])
    attribute = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    present = sorted({getattr(o, attribute) for o in objs})
    absent = [v for v in ATTRIBUTE_VALUES[attribute] if v not in present]
    values = [present[i] for i in rng.permutation(len(present))][:count]
    values += [absent[i] for i in rng.permutation(len(absent))][:count - len(values)]
    template, wording = pick(rng, PLURAL_CMDS), int(rng.integers(2 ** 31))
    out = []
    for value in values:
        d = Descriptor(**{attribute: value})
        words = np.random.default_rng(wording)  # the same synonyms for every value
        targets = [o for o in objs if d.matches(o)]
        family = "no_target" if not targets else "category" if attribute == "shape" else "attribute"
        out.append(Instruction(template.format(P=noun_phrase(words, d, True), S=noun_phrase(words, d, False)),
                               "multi_instance", family, targets))
    return out


GENERATORS = {"category": gen_category, "attribute": gen_attribute, "spatial": gen_spatial,
              "superlative": gen_superlative, "exclusion": gen_exclusion, "union": gen_union,
              "no_target": gen_no_target, "reasoning": gen_reasoning,
              "phrase": gen_phrase, "phrase_absent": gen_phrase_absent}


def generate_instructions(rng: np.random.Generator, objects: Sequence[SceneObject], ctx: LanguageContext,
                          count: int, require: Callable[[Instruction], bool] | None = None,
                          families: Mapping[str, float] | None = None,
                          tries_per_family: int = 6, taken: Sequence[str] = ()) -> list[Instruction]:
    """`count` instructions with distinct texts over the visible `objects` (and from the `taken` texts).

    Families are drawn by `families` (name -> weight, default FAMILY_WEIGHTS) without replacement within a scene
    (so one scene's instructions cover different families); a family the scene cannot support is skipped for the
    next one. `require` filters candidates (the held-out split asks for held-out combinations);
    if no candidate passes it, the filter is dropped rather than emitting nothing.
    """
    weights = dict(FAMILY_WEIGHTS if families is None else families)
    out: list[Instruction] = []
    texts: set[str] = set(taken)
    for strict in ((True, False) if require is not None else (False,)):
        for _ in range(count - len(out)):
            # Family drawn with replacement by weight (keeps ~10 % no-target); a family the scene
            # cannot support is dropped for this draw only.
            pool = list(weights)
            while pool:
                w = np.array([weights[f] for f in pool])
                fam = pool.pop(int(rng.choice(len(pool), p=w / w.sum())))
                ins = None
                for _ in range(tries_per_family):
                    cand = GENERATORS[fam](rng, objects, ctx)
                    if cand is None or cand.text in texts:
                        continue
                    if any(not ctx.allow_pair(c, s) for c, s in cand.mentions):
                        continue  # never name a forbidden colour x shape pair
                    if strict and not require(cand):
                        continue
                    ins = cand
                    break
                if ins is not None:
                    out.append(ins)
                    texts.add(ins.text)
                    break
        if len(out) >= count:
            break
    if len(out) < count:  # a scene that supports almost nothing (e.g. empty): absent colour x shape pairs
        pairs = [(c, sh) for c in COLOR_NAMES for sh in SHAPES if ctx.allow_pair(c, sh)]
        for j in rng.permutation(len(pairs)):
            d = Descriptor(shape=pairs[j][1], color=pairs[j][0])
            if any(d.matches(o) for o in objects):
                continue
            text = _phrase(rng, PLURAL_CMDS, P=noun_phrase(rng, d, True), S=noun_phrase(rng, d, False))
            if text not in texts:
                out.append(Instruction(text, "multi_instance", "no_target", [], d.pairs()))
                texts.add(text)
            if len(out) == count:
                break
    if len(out) < count:
        raise RuntimeError(f"could only make {len(out)} of {count} distinct instructions for this scene")
    return out
