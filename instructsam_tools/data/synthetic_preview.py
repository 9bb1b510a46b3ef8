"""Contact sheet of synthetic samples: image, instruction, family/task and target outlines."""
from __future__ import annotations

import io
import os
import textwrap

import numpy as np

from instructsam_tools.data.format import InstructionSample


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


def save_contact_sheet(path: str | os.PathLike, samples: list[InstructionSample], video=None,
                       cols: int = 6) -> None:
    """Save a grid of samples (and six frames of `video`, if given) with instruction text and target outlines
    (`synthetic.preview_samples` picks a default set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
