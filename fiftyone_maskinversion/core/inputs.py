"""Checking and converting user images and masks into what the engines expect.

Documented conversions: grayscale and palette images become RGB; an alpha channel is dropped;
16-bit images are scaled to 8 bits; float arrays must lie in [0, 1]. Masks must be binary
(bool, or numbers that are exactly 0 or 1) and have the image's height and width.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .transfer import to_device

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
MaskInput = Union[np.ndarray, Sequence[np.ndarray], torch.Tensor]


# Masks resized together: bounds the float copy of the masks at the image's full size.
RESIZE_BATCH = 16


class InputError(ValueError):
    """An image or mask that cannot be used, with the reason."""


def load_rgb(image: ImageInput, min_side: int = 1) -> Image.Image:
    """An RGB PIL image from a path, PIL image or HxW / HxWxC array (see module doc for conversions)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                opened.load()
                pil = opened.copy()
        except (OSError, SyntaxError) as err:
            raise InputError(f"cannot read image {os.fspath(image)!r}: {err}") from err
    elif isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = Image.fromarray(_array_to_uint8(image))
    else:
        raise InputError(f"unsupported image type {type(image).__name__}; pass a path, PIL image or array")
    pil = _pil_to_rgb(pil)
    if min(pil.size) < min_side:
        raise InputError(f"image of {pil.size[0]}x{pil.size[1]} px is smaller than one patch ({min_side} px)")
    return pil


def _pil_to_rgb(pil: Image.Image) -> Image.Image:
    """RGB version of any PIL mode: 16-bit and float modes are rescaled, alpha is dropped."""
    if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_array_to_uint8(np.asarray(pil))).convert("RGB")
    return pil.convert("RGB")


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """An 8-bit HxW or HxWx3 array from 8/16-bit or [0,1] float arrays, dropping an alpha channel."""
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    elif array.ndim != 2:
        raise InputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype in (np.uint16, np.int32) and array.size:
        if array.min() < 0 or array.max() > 65535:
            raise InputError("integer image values must lie in [0, 65535]")
        return (array.astype(np.float64) / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError("float image arrays must be finite and lie in [0, 1]")
        return (array * 255.0).round().astype(np.uint8)
    raise InputError(f"unsupported image dtype {array.dtype}")


@dataclass
class PreparedMasks:
    """Masks resized to the model grid, with the indices that could not be used and why."""

    grid_masks: torch.Tensor  # V x S x S float in [0,1], only the valid masks
    valid: np.ndarray  # N bool
    errors: List[Optional[str]]  # N, None for valid masks


def box_mask(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """H x W bool mask of a relative [x, y, w, h] box (FiftyOne's convention), pixel edges rounded."""
    x, y, w, h = box
    left, top = int(round(x * width)), int(round(y * height))
    right, bottom = int(round((x + w) * width)), int(round((y + h) * height))
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
    return mask


def prepare_masks(
    masks: MaskInput, image_size_hw: tuple, size: int, device: Optional[torch.device] = None
) -> PreparedMasks:
    """Validate N binary masks of an HxW image and resize them (bilinear, antialiased) to size x size.

    Raises InputError for malformed input (wrong shape, non-binary, NaN); an empty mask is not an
    error of the call: it is marked invalid with a reason so the other masks are still computed.
    The resizing runs on ``device`` (default: the CPU), where the masks travel as booleans.
    """
    mask_list = _as_mask_list(masks)
    height, width = image_size_hw
    valid = np.zeros(len(mask_list), dtype=bool)
    errors: List[Optional[str]] = [None] * len(mask_list)
    binaries = []
    for k, mask in enumerate(mask_list):
        if mask.shape != (height, width):
            raise InputError(f"mask {k} has shape {mask.shape}, the image is {height}x{width} (HxW)")
        binary = _binary_mask(mask, k)
        if not binary.any():
            errors[k] = "empty mask: no pixel is set"
            continue
        valid[k] = True
        binaries.append(binary)
    resized = [
        _resize_masks(binaries[start: start + RESIZE_BATCH], size, device)
        for start in range(0, len(binaries), RESIZE_BATCH)
    ]
    stacked = torch.cat(resized) if resized else torch.zeros(0, size, size, device=device)
    return PreparedMasks(grid_masks=stacked, valid=valid, errors=errors)


def _resize_masks(binaries: List[np.ndarray], size: int, device: Optional[torch.device]) -> torch.Tensor:
    """B x size x size floats in [0, 1] of B boolean H x W masks, resized on ``device``."""
    batch = to_device(torch.from_numpy(np.stack(binaries)), device).float().unsqueeze(1)
    grid = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return grid[:, 0].clamp_(0.0, 1.0)


def _as_mask_list(masks: MaskInput) -> List[np.ndarray]:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            raise InputError("masks must be N x H x W (got one H x W mask: wrap it in a list)")
        if masks.ndim != 3:
            raise InputError(f"masks must be N x H x W, got shape {masks.shape}")
        return list(masks)
    return [np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m) for m in masks]


def _binary_mask(mask: np.ndarray, index: int) -> np.ndarray:
    """A bool copy of a mask whose values must all be 0 or 1."""
    if mask.dtype == np.bool_:
        return mask
    if not np.issubdtype(mask.dtype, np.number):
        raise InputError(f"mask {index} has dtype {mask.dtype}, expected bool or numbers")
    if np.issubdtype(mask.dtype, np.floating) and np.isnan(mask).any():
        raise InputError(f"mask {index} contains NaN values")
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise InputError(
            f"mask {index} is not binary (found value {mask[bad].flat[0]!r}); "
            "pass booleans or 0/1 values, e.g. mask > 0"
        )
    return mask.astype(bool)
