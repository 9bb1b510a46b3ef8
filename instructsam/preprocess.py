"""Image input validation and the two square pixel inputs (SAM3's and the VLM's) made from one RGB image.

Both models take the whole image stretched to a square (SAM3's own processor does the same for 1008x1008), so a
normalised box (x/W, y/H) on the model input maps back to the original image by scaling with its size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import InterpolationMode, resize

from instructsam.errors import ImageInputError

ImagesInput = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


def _check_one(image: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageInputError(f"{where}: expected a uint8 RGB image, got dtype {image.dtype} "
                                  f"(convert with (img * 255).clip(0, 255).astype(np.uint8) if it is 0..1 float)")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise ImageInputError(f"{where}: expected a uint8 RGB image, got dtype {image.dtype}")
        tensor = image
    else:
        raise ImageInputError(f"{where}: expected a numpy array or torch tensor, got {type(image).__name__}")
    if tensor.ndim != 3 or tensor.shape[-1] != 3:
        hint = " (channels-first? pass (H, W, 3))" if tensor.ndim == 3 and tensor.shape[0] == 3 else ""
        raise ImageInputError(f"{where}: expected shape (H, W, 3) RGB, got {tuple(tensor.shape)}{hint}")
    if tensor.shape[0] < 2 or tensor.shape[1] < 2:
        raise ImageInputError(f"{where}: image of size {tuple(tensor.shape[:2])} is too small (need at least 2x2)")
    return tensor


def to_image_list(images: ImagesInput) -> list[torch.Tensor]:
    """Validate images and return them as a list of uint8 (H, W, 3) tensors.

    Accepts one (H, W, 3) uint8 array/tensor, a (B, H, W, 3) uint8 tensor/array, or a list of (H, W, 3) arrays of
    any sizes. Raises ImageInputError naming what is wrong.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ImageInputError("got an empty batch of images (B = 0)")
            return [_check_one(images[i], f"image {i}") for i in range(images.shape[0])]
        return [_check_one(images, "image")]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ImageInputError("got an empty list of images")
        return [_check_one(im, f"image {i}") for i, im in enumerate(images)]
    raise ImageInputError(f"expected images as numpy/torch uint8 (H, W, 3), (B, H, W, 3) or a list of them, "
                          f"got {type(images).__name__}")


def to_square_pixels(images: list[torch.Tensor], size: int, mean: Sequence[float], std: Sequence[float],
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     quantize: bool = False) -> torch.Tensor:
    """Resize each (H, W, 3) uint8 image to (size, size) (bilinear, antialiased) and normalise: (B, 3, size, size).
    quantize: resize the uint8 image itself (rounded back to uint8), as transformers' SAM3 image processor does."""
    out = []
    for image in images:
        if quantize:  # torchvision's uint8 kernel runs on the CPU (on CUDA it would round differently)
            x = image.cpu().permute(2, 0, 1)[None]
            if x.shape[-2:] != (size, size):
                x = resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
            out.append(x.to(device).float() / 255.0)
            continue
        x = image.to(device).permute(2, 0, 1)[None].float() / 255.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    pixels = torch.cat(out).clamp_(0.0, 1.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((pixels - m) / s).to(dtype)


def patchify_for_qwen(pixels: torch.Tensor, patch_size: int, merge_size: int,
                      temporal_patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2/3-VL's flat patch layout for still images (same order as Qwen2VLImageProcessor.patchify).

    Returns (B * gh * gw, 3 * T * P * P) patches and the (B, 3) grid_thw, T repeating the still frame.
    """
    b, c, h, w = pixels.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixels.reshape(b, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, gh/m, gw/m, m, m, c, p, p
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
    flat = x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    grid_thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=pixels.device)
    return flat, grid_thw


__all__ = ["to_image_list", "to_square_pixels", "patchify_for_qwen", "ImagesInput"]
