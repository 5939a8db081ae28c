"""Pictures of regions' heatmaps for places that show an image rather than a dataset (an operator's
output, the MaskInversion panel): the image with the LeGrad heatmap blended in a colour scale, the
region drawn as an outline (so the object under it stays visible), and the scale beside it."""

from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .appearance import HEATMAP_COLORSCALE
from .regions import LabelError, region_mask, regions_of

PREVIEW_HEIGHT = 240
PANEL_HEIGHT = 420
HEATMAP_WEIGHT = 0.5
MAX_REGIONS = 4
SCALE_WIDTH = 46  # the colour scale strip and its 0 / 1 ticks
OUTLINE = (255, 255, 255)


def draw_region(filepath: str, heatmap: Optional[np.ndarray], mask: Optional[np.ndarray], caption: str,
                height: int = PREVIEW_HEIGHT) -> Image.Image:
    """The image scaled to ``height``, its heatmap (uint8, any size) blended in the colour scale, the
    region's outline and a caption; the colour scale is drawn at the right."""
    from matplotlib import colormaps

    colormap = colormaps[HEATMAP_COLORSCALE]
    image = Image.open(filepath).convert("RGB")
    width = max(1, round(image.width * height / image.height))
    pixels = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    if heatmap is not None:
        heat = np.asarray(Image.fromarray(heatmap).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
        pixels = (1 - HEATMAP_WEIGHT) * pixels + HEATMAP_WEIGHT * 255.0 * colormap(heat)[..., :3]
    picture = Image.new("RGB", (width + SCALE_WIDTH, height), (0, 0, 0))
    picture.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, height // 20))
    if mask is not None:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
        picture.paste(Image.new("RGB", (width, height), OUTLINE), (0, 0), Image.fromarray(outline(small)))
    ramp = colormap(np.linspace(1.0, 0.0, height))[:, :3] * 255.0  # top: 1, bottom: 0
    strip = np.repeat(ramp[:, None, :], 14, axis=1).astype(np.uint8)
    picture.paste(Image.fromarray(strip), (width + 4, 0))
    draw.text((width + 21, 2), "1", fill=OUTLINE, font=font)
    draw.text((width + 21, height - 2), "0", fill=OUTLINE, font=font, anchor="ld")
    draw.text((4, 4), caption, fill=OUTLINE, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return picture


def outline(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """uint8 (0/255) of the pixels of ``mask`` within ``thickness`` pixels of its border."""
    inner = mask.copy()
    for _ in range(thickness):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[[0, -1], :] = False
        shrunk[:, [0, -1]] = False
        inner = shrunk
    return ((mask & ~inner) * 255).astype(np.uint8)


def mask_at_image_size(filepath: str, region) -> Optional[np.ndarray]:
    """The region (mask, polygon or box) as an H x W bool mask of its image; None if it has no shape."""
    with Image.open(filepath) as image:
        width, height = image.size
    try:
        return region_mask(region, width, height)
    except LabelError:
        return None


def heatmap_overlay(companion_sample, height: int = PREVIEW_HEIGHT) -> Image.Image:
    """One companion sample drawn: its image, heatmap, region and label with the inversion's Dice."""
    region = regions_of(companion_sample[companion_sample.source_field])[0]
    return draw_region(companion_sample.filepath, companion_sample.heatmap.get_map(),  # in the document or a file
                       mask_at_image_size(companion_sample.filepath, region),
                       f"{region.label}  dice {companion_sample['dice']:.2f}", height)


def data_uri(picture: Image.Image, kind: str = "png") -> str:
    """A data URI of a picture (what types.ImageView shows): "png" (exact), or "jpeg" (a photo with a
    heatmap: about a tenth of the PNG's size, which the App sends on every panel update)."""
    buffer = io.BytesIO()
    picture.save(buffer, format=kind.upper(), **({"quality": 90} if kind == "jpeg" else {}))
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def preview_data_uri(view, limit: int = MAX_REGIONS) -> str:
    """A PNG data URI of up to ``limit`` companion samples' overlays side by side."""
    pictures = [heatmap_overlay(sample) for sample in view.limit(limit)]
    if not pictures:
        raise ValueError("no heatmap to show")
    strip = Image.new("RGB", (sum(p.width for p in pictures) + 4 * (len(pictures) - 1), PREVIEW_HEIGHT))
    left = 0
    for picture in pictures:
        strip.paste(picture, (left, 0))
        left += picture.width + 4
    return data_uri(strip)
