"""Synthetic scenes: coloured, textured shapes with occlusion on cluttered backgrounds.

A scene is a list of `SceneObject`s painted back to front; each object keeps its full mask and its
visible mask (full minus everything painted later), so instruction targets can be computed from
what is actually visible. Everything is drawn from a numpy Generator, so a seed fixes the bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLORS = {  # name -> base RGB; saturated hues that stay distinct from the low-saturation backgrounds
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 135, 25),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 0.075, "medium": 0.115, "large": 0.16}  # radius as a fraction of the image side
SIZE_NAMES = tuple(SIZES)
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = ("flat", "gradient", "noise", "stripes")
# Colour x shape pairs never shown in train/val/test scenes nor named there: each colour and each
# shape occurs in exactly one held-out pair, so every attribute alone is still seen in training.
HELDOUT_PAIRS = frozenset({("red", "star"), ("green", "ring"), ("blue", "triangle"),
                           ("yellow", "cross"), ("purple", "circle"), ("orange", "square")})

# Rotation range (degrees) per shape: squares/crosses stay near axis-aligned so they never read as diamonds.
_ROTATION = {"circle": 0.0, "ring": 0.0, "square": 15.0, "cross": 15.0, "triangle": 180.0, "star": 180.0}


@dataclass
class SceneObject:
    """One painted shape. `obj_id` is the annotation id; masks are (H, W) bool."""

    obj_id: int
    shape: str
    color: str
    size: str
    texture: str
    center: tuple[float, float]  # (x, y) pixels, may lie outside the image in videos
    radius: float
    rotation: float  # degrees
    rgb: tuple[int, int, int] = (0, 0, 0)
    texture_params: tuple = ()
    full_mask: np.ndarray | None = field(default=None, repr=False)  # clipped to the image
    visible_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def visible_area(self) -> int:
        return int(self.visible_mask.sum())

    @property
    def full_area(self) -> int:
        return int(self.full_mask.sum())

    @property
    def centroid(self) -> tuple[float, float]:
        """(x, y) centroid of the visible pixels (what a viewer sees); NaN if invisible."""
        ys, xs = np.nonzero(self.visible_mask)
        if len(xs) == 0:
            return (math.nan, math.nan)
        return (float(xs.mean()), float(ys.mean()))

    @property
    def attributes(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "texture": self.texture}


@dataclass
class Scene:
    """A rendered image and its scene graph (objects in paint order, back to front)."""

    image: np.ndarray  # (H, W, 3) uint8
    objects: list[SceneObject]
    background: str
    min_visible_area: int

    def visible_objects(self) -> list[SceneObject]:
        """Objects visible enough to be a target (fully/mostly occluded ones cannot be)."""
        return [o for o in self.objects if o.visible_area >= self.min_visible_area]


def min_visible_area(image_size: int) -> int:
    """Smallest visible area (pixels) an object needs to count as present: ~65 px at 128 px."""
    return max(12, int(round(0.004 * image_size * image_size)))


# ----------------------------------------------------------------------------------------------
# geometry


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    a = math.radians(rot)

    def pts(radii_angles):
        return [(cx + rr * math.cos(t + a), cy + rr * math.sin(t + a)) for rr, t in radii_angles]

    if shape == "square":
        h = 0.8 * r * math.sqrt(2)  # half-diagonal: side = 1.6 r
        return pts([(h, math.pi / 4 + k * math.pi / 2) for k in range(4)])
    if shape == "triangle":
        return pts([(1.15 * r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)])
    if shape == "star":
        return pts([((1.15 * r if k % 2 == 0 else 0.5 * r), -math.pi / 2 + k * math.pi / 5) for k in range(10)])
    if shape == "cross":
        w = 0.36 * r
        base = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w),
                (-w, w), (-w, r)]
        ca, sa = math.cos(a), math.sin(a)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in base]
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_mask(shape: str, center: tuple[float, float], radius: float, rotation: float,
               height: int, width: int) -> np.ndarray:
    """Bool (H, W) mask of a shape, clipped to the image (centre may lie outside)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center
    if shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if shape == "ring":
            ri = 0.55 * radius
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape in SHAPES:
        draw.polygon(_polygon(shape, cx, cy, radius, rotation), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return np.asarray(canvas, dtype=bool)


# ----------------------------------------------------------------------------------------------
# appearance


def sample_appearance(rng: np.random.Generator, obj: SceneObject, image_size: int) -> None:
    """Fix the colour jitter and texture parameters of an object (kept on the object for videos)."""
    base = np.array(COLORS[obj.color], dtype=np.float64)
    obj.rgb = tuple(int(v) for v in np.clip(base + rng.integers(-14, 15, size=3), 0, 255))
    period = max(4.0, 0.05 * image_size)
    if obj.texture == "striped":
        obj.texture_params = (float(rng.choice([0.0, 45.0, 90.0, 135.0])), period, float(rng.uniform(0, period)))
    elif obj.texture == "dotted":
        spacing = max(5.0, 0.06 * image_size)
        obj.texture_params = (spacing, max(1.2, 0.016 * image_size), float(rng.uniform(0, spacing)),
                              float(rng.uniform(0, spacing)))


def texture_colors(obj: SceneObject, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float colour field of the object's texture, anchored to the object's centre."""
    rgb = np.array(obj.rgb, dtype=np.float32)
    light = 0.45 * rgb + 0.55 * 255.0  # pattern colour: a light tint keeps the hue recognisable
    out = np.broadcast_to(rgb, (height, width, 3)).copy()
    if obj.texture == "solid":
        return out
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx -= obj.center[0]
    yy -= obj.center[1]
    if obj.texture == "striped":
        angle, period, phase = obj.texture_params
        t = math.radians(angle)
        u = xx * math.cos(t) + yy * math.sin(t) + phase
        pattern = (np.floor(u / (period / 2)) % 2) == 1
    else:  # dotted
        spacing, dot_r, ox, oy = obj.texture_params
        dx = (xx + ox) % spacing - spacing / 2
        dy = (yy + oy) % spacing - spacing / 2
        pattern = dx * dx + dy * dy <= dot_r * dot_r
    out[pattern] = light
    return out


def render_background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float background: low-saturation so the objects' colours stay unambiguous."""
    def dull() -> np.ndarray:
        grey = rng.uniform(35, 200)
        return np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "gradient" or (kind in ("noise", "stripes") and rng.random() < 0.5):
        c0, c1 = dull(), dull()
        t = math.radians(rng.uniform(0, 360))
        u = xx * math.cos(t) + yy * math.sin(t)
        u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        bg = c0 + u[..., None] * (c1 - c0)
    else:
        bg = np.broadcast_to(dull(), (height, width, 3)).astype(np.float32).copy()
    if kind == "noise":
        bg = bg + rng.normal(0, rng.uniform(8, 22), size=(height, width, 1)) \
            + rng.normal(0, 4, size=(height, width, 3))
    elif kind == "stripes":  # thin distractor lines: clutter that is not an object
        canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            t = rng.uniform(0, math.pi)
            length = rng.uniform(0.3, 1.2) * max(width, height)
            col = tuple(int(v) for v in np.clip(dull() + rng.uniform(-60, 60, size=3), 0, 255))
            draw.line([(x0 - length * math.cos(t), y0 - length * math.sin(t)),
                       (x0 + length * math.cos(t), y0 + length * math.sin(t))], fill=col,
                      width=int(rng.integers(1, 3)))
        bg = np.asarray(canvas, dtype=np.float32)
    return bg


def composite(background: np.ndarray, objects: list[SceneObject], rng: np.random.Generator,
              noise_sigma: float) -> np.ndarray:
    """Paint objects (their full masks must be set) back to front and set their visible masks."""
    h, w = background.shape[:2]
    img = background.astype(np.float32).copy()
    for obj in objects:
        img[obj.full_mask] = texture_colors(obj, h, w)[obj.full_mask]
    set_visible_masks(objects)
    if noise_sigma > 0:
        img += rng.normal(0, noise_sigma, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def set_visible_masks(objects: list[SceneObject]) -> None:
    """visible = full minus the union of everything painted after it."""
    covered = None
    for obj in reversed(objects):
        obj.visible_mask = obj.full_mask.copy() if covered is None else obj.full_mask & ~covered
        covered = obj.full_mask.copy() if covered is None else covered | obj.full_mask


# ----------------------------------------------------------------------------------------------
# scenes


def _num_objects(rng: np.random.Generator, max_objects: int) -> int:
    # Mostly 3..max, some nearly empty scenes, a few empty ones (their instructions are no-target).
    u = rng.random()
    if u < 0.03:
        return 0
    if u < 0.15:
        return int(rng.integers(1, 3))
    return int(rng.integers(3, max_objects + 1))


def sample_attributes(rng: np.random.Generator, allow_pair) -> tuple[str, str, str, str]:
    """(shape, color, size, texture) with allow_pair(color, shape) True."""
    while True:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        if allow_pair(color, shape):
            break
    size = SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))]
    texture = TEXTURES[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    return shape, color, size, texture


def sample_radius(rng: np.random.Generator, size: str, image_size: int) -> float:
    return SIZES[size] * image_size * float(rng.uniform(0.93, 1.07))


def generate_scene(rng: np.random.Generator, image_size: int = 128, max_objects: int = 12,
                   heldout: str = "exclude", first_obj_id: int = 1, min_visible_fraction: float = 0.45,
                   num_objects: int | None = None) -> Scene:
    """Render one scene.

    heldout: "exclude" -> no HELDOUT_PAIRS object appears (train/val/test);
             "include" -> at least one object is a held-out pair (held-out split).
    Placement rejects positions that would leave any object with a visible area below
    max(min_visible_area, min_visible_fraction * full area): no slivers, no invisible objects.
    """
    if heldout not in ("exclude", "include"):
        raise ValueError(f"heldout must be 'exclude' or 'include', got {heldout!r}")
    h = w = image_size
    min_area = min_visible_area(image_size)
    n = _num_objects(rng, max_objects) if num_objects is None else num_objects
    if heldout == "include":
        n = max(n, 1)
    n_forced = int(rng.integers(1, 3)) if heldout == "include" else 0
    heldout_list = sorted(HELDOUT_PAIRS)

    objects: list[SceneObject] = []
    for k in range(n):
        if k < n_forced:
            color, shape = heldout_list[int(rng.integers(len(heldout_list)))]
            _, _, size, texture = sample_attributes(rng, lambda c, s: True)
        else:
            shape, color, size, texture = sample_attributes(
                rng, (lambda c, s: (c, s) not in HELDOUT_PAIRS) if heldout == "exclude" else (lambda c, s: True))
        for _attempt in range(30):
            radius = sample_radius(rng, size, image_size)
            margin = radius * 0.9  # keep most of the shape inside the image
            cx = float(rng.uniform(margin, w - margin))
            cy = float(rng.uniform(margin, h - margin))
            rot = float(rng.uniform(-_ROTATION[shape], _ROTATION[shape]))
            obj = SceneObject(obj_id=first_obj_id + len(objects), shape=shape, color=color, size=size,
                              texture=texture, center=(cx, cy), radius=radius, rotation=rot)
            obj.full_mask = shape_mask(shape, (cx, cy), radius, rot, h, w)
            trial = objects + [obj]
            set_visible_masks(trial)
            if all(o.visible_area >= max(min_area, min_visible_fraction * o.full_area) for o in trial):
                sample_appearance(rng, obj, image_size)
                objects.append(obj)
                break
        # after 30 failed attempts the object is dropped (a crowded scene simply has fewer objects)
    bg_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    background = render_background(rng, bg_kind, h, w)
    image = composite(background, objects, rng, noise_sigma=float(rng.uniform(0, 5)))
    return Scene(image=image, objects=objects, background=bg_kind, min_visible_area=min_area)
