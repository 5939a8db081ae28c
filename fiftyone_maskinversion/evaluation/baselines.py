"""Region embeddings by MaskInversion and by the usual baselines, behind one ``method=`` argument.

* ``maskinversion``: the localized embedding learned through LeGrad (this package).
* ``clip``: the global image embedding, the same for every region.
* ``crop``: the embedding of the region's bounding-box crop.
* ``masked_crop``: the box crop with pixels outside the mask set to the model's mean colour.
* ``red_circle``: the full image with a red ellipse drawn around the region's box.
* ``blur``: the full image with everything outside the mask heavily blurred.
* ``token_mask``: in the last two blocks the class token may only attend to itself and to the
  patches the mask covers (at least half), in the style of zero-shot referring segmentation (RIS).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from ..core.backbone import Backbone
from ..core.block_state import capture_image_state
from ..core.inputs import ImageInput, load_rgb, prepare_masks
from ..core.inversion import MaskInverter

METHODS = ("maskinversion", "clip", "crop", "masked_crop", "red_circle", "blur", "token_mask")
TOKEN_MASK_BLOCKS = 2
ENCODE_BATCH = 16


def supported_methods(backbone: Backbone) -> tuple:
    """The methods that apply to a backbone (token_mask needs a class-token image tower)."""
    visual = backbone.visual
    class_token = getattr(visual, "pool_type", "tok") == "tok" and not getattr(visual, "final_ln_after_pool", False)
    return METHODS if class_token else tuple(m for m in METHODS if m != "token_mask")


def region_embeddings(
    backbone: Backbone, image: ImageInput, masks: Sequence[np.ndarray], method: str = "maskinversion", **kwargs
) -> np.ndarray:
    """N x D embeddings of N binary masks of one image by ``method`` (NaN rows for empty masks).

    ``kwargs`` go to MaskInverter for ``maskinversion`` (iterations, lr, alpha, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    rgb = load_rgb(image, min_side=backbone.patch_size)
    if method == "maskinversion":
        return MaskInverter(backbone, **kwargs).invert(rgb, masks).embeddings
    prepared = prepare_masks(masks, (rgb.height, rgb.width), backbone.image_size)
    out = np.full((len(prepared.valid), backbone.embed_dim), np.nan, dtype=np.float32)
    valid = [np.asarray(m, dtype=bool) for m, ok in zip(masks, prepared.valid) if ok]
    if not valid:
        return out
    if method == "token_mask":
        rows = _token_masked(backbone, rgb, prepared.grid_masks)
    else:
        views = [_IMAGE_VIEWS[method](backbone, rgb, mask) for mask in valid]
        rows = _encode(backbone, views)
    out[prepared.valid] = rows
    return out


def _encode(backbone: Backbone, images: List[Image.Image]) -> np.ndarray:
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), ENCODE_BATCH):
            pixels = torch.cat([backbone.pixels(im) for im in images[start : start + ENCODE_BATCH]])
            chunks.append(backbone.model.encode_image(pixels).float().cpu().numpy())
    return np.concatenate(chunks)


def _box(mask: np.ndarray, min_side: int) -> tuple:
    """The mask's bounding box (left, top, right, bottom), grown (and shifted inside the image) to at
    least min_side pixels per side, so that every crop is at least one patch."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape

    def span(low: int, high: int, limit: int) -> tuple:
        size = min(max(high - low, min_side), limit)
        start = min(max(0, (low + high - size) // 2), limit - size)
        return start, start + size

    left, right = span(int(xs.min()), int(xs.max()) + 1, width)
    top, bottom = span(int(ys.min()), int(ys.max()) + 1, height)
    return left, top, right, bottom


def _mean_colour(backbone: Backbone) -> tuple:
    return tuple(int(round(255 * c)) for c in backbone.mean)


def _crop(backbone: Backbone, rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    return rgb.crop(_box(mask, backbone.patch_size))


def _masked_crop(backbone: Backbone, rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    background = Image.new("RGB", rgb.size, _mean_colour(backbone))
    composed = Image.composite(rgb, background, Image.fromarray(mask.astype(np.uint8) * 255))
    return composed.crop(_box(mask, backbone.patch_size))


def _red_circle(backbone: Backbone, rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    left, top, right, bottom = _box(mask, 1)
    pad_x, pad_y = 0.1 * (right - left) + 2, 0.1 * (bottom - top) + 2
    drawn = rgb.copy()
    width = max(2, round(0.01 * max(rgb.size)))
    ImageDraw.Draw(drawn).ellipse((left - pad_x, top - pad_y, right + pad_x, bottom + pad_y), outline=(255, 0, 0), width=width)
    return drawn


def _blur(backbone: Backbone, rgb: Image.Image, mask: np.ndarray) -> Image.Image:
    blurred = rgb.filter(ImageFilter.GaussianBlur(radius=max(2.0, 0.05 * max(rgb.size))))
    return Image.composite(rgb, blurred, Image.fromarray(mask.astype(np.uint8) * 255))


_IMAGE_VIEWS: Dict[str, Callable] = {
    "clip": lambda backbone, rgb, mask: rgb,
    "crop": _crop,
    "masked_crop": _masked_crop,
    "red_circle": _red_circle,
    "blur": _blur,
}


@torch.no_grad()
def _token_masked(backbone: Backbone, rgb: Image.Image, grid_masks: torch.Tensor) -> np.ndarray:
    """The class token of the last blocks restricted to the masked patches, one row per mask."""
    visual = backbone.visual
    if "token_mask" not in supported_methods(backbone):
        raise ValueError(f"token_mask needs a class-token image tower; {backbone.model_name} pools otherwise")
    first = backbone.num_blocks - TOKEN_MASK_BLOCKS
    state = capture_image_state(backbone, backbone.pixels(rgb), [first])
    tokens = state.blocks[0].inputs  # n x width, input of the first masked block
    covered = F.avg_pool2d(grid_masks[:, None].to(tokens.device), backbone.patch_size)[:, 0].flatten(1) >= 0.5  # M x grid^2
    covered |= ~covered.any(dim=1, keepdim=True)  # a mask smaller than half a patch: keep every patch
    count, n = covered.shape[0], tokens.shape[0]
    heads = visual.transformer.resblocks[first].attn.num_heads
    allowed = torch.ones(count, n, n, dtype=torch.bool, device=tokens.device)
    allowed[:, 0, 1:] = covered
    bias = torch.zeros(count, n, n, device=tokens.device).masked_fill(~allowed, float("-inf"))
    bias = bias.repeat_interleave(heads, dim=0)
    x = tokens.expand(count, n, -1)
    batch_first = getattr(visual.transformer, "batch_first", True)
    for block in visual.transformer.resblocks[first:]:
        x = block(x if batch_first else x.transpose(0, 1), attn_mask=bias)
        x = x if batch_first else x.transpose(0, 1)
    return (visual.ln_post(x[:, 0]) @ visual.proj).float().cpu().numpy()
