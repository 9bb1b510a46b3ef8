"""Contact sheet of synthetic samples: image, instruction, family/task and target outlines."""
from __future__ import annotations

import io
import os
import textwrap

import numpy as np

from .format import InstructionSample


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool mask (mask minus its 4-neighbour erosion)."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def overlay_targets(sample: InstructionSample, scale: int = 3) -> np.ndarray:
    """Upscaled image with each target outlined (white line, black halo) so it shows on any colour."""
    img = np.repeat(np.repeat(sample.image, scale, 0), scale, 1).copy()
    for m in sample.masks:
        big = np.repeat(np.repeat(m, scale, 0), scale, 1)
        edge = _dilate(_outline(big))
        halo = _dilate(edge) & ~edge
        img[halo] = (0, 0, 0)
        img[edge] = (255, 255, 255)
    return img


def save_contact_sheet(path: str | os.PathLike, samples: list[InstructionSample] | None = None,
                       video=None, image_size: int = 128, seed: int = 0, cols: int = 6) -> None:
    """Save a grid of samples (default: one per family from the train split + one held-out row and
    six frames of a video) with instruction text and target outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .synthetic import SyntheticInst2Seg, SyntheticVideos
    from .synthetic_language import FAMILIES

    if samples is None:
        ds = SyntheticInst2Seg("train", 400, image_size, seed)
        samples, seen = [], set()
        for i in range(len(ds)):
            s = ds[i]
            if s.family not in seen:
                seen.add(s.family)
                samples.append(s)
            if len(seen) == len(FAMILIES):
                break
        held = SyntheticInst2Seg("heldout", 40, image_size, seed)
        samples += [held[i] for i in (0, 5, 10, 15)]
    if video is None:  # the busiest of a few videos that has an object entering or leaving
        vids = SyntheticVideos("train", 12, image_size, seed)
        cands = [vids[i] for i in range(len(vids))]
        moving = [v for v in cands if any(o["motion"] in ("enter", "leave") for o in v.objects.values())
                  and v.instructions[0]["target_ids"]] or cands
        video = max(moving, key=lambda v: len(v.objects))
    rows = (len(samples) + cols - 1) // cols + (1 if video is not None else 0)
    vcols = max(cols, 6)
    fig, axes = plt.subplots(rows, vcols, figsize=(2.6 * vcols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, s in enumerate(samples):
        ax = axes[j // cols][j % cols]
        ax.imshow(overlay_targets(s))
        split = s.instruction_id.split("-")[0]
        ax.set_title("\n".join(textwrap.wrap(f'"{s.text}"', 30)) + f"\n{s.family} / {s.task} / {split}"
                     f" / {len(s.target_ids)} target(s)", fontsize=7)
    if video is not None:
        T = video.num_frames
        frames = np.linspace(0, T - 1, min(6, T)).round().astype(int)
        for c, t in enumerate(frames):
            ax = axes[rows - 1][c]
            fs = video.frame_sample(int(t))
            ax.imshow(overlay_targets(fs))
            head = "\n".join(textwrap.wrap(f'video: "{fs.text}"', 30)) if c == 0 else "\n"
            ax.set_title(f"{head}\nframe {t}: targets {fs.target_ids}", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    from PIL import Image

    # a 256-colour palette keeps the sheet small enough to live in the repository
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
