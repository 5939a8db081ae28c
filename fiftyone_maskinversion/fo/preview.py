"""A picture of regions' heatmaps for places that show an image rather than a dataset (an operator's
output): each region's image with its LeGrad heatmap blended in and the region's box and label drawn."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

from .regions import regions_of

PREVIEW_HEIGHT = 240
HEATMAP_WEIGHT = 0.5
MAX_REGIONS = 4


def heatmap_overlay(companion_sample, height: int = PREVIEW_HEIGHT) -> Image.Image:
    """One companion sample drawn: its image, the heatmap (jet colours) blended in, the region's box and label."""
    from matplotlib import colormaps

    image = Image.open(companion_sample.filepath).convert("RGB")
    width = max(1, round(image.width * height / image.height))
    image = image.resize((width, height), Image.BILINEAR)
    heat = Image.fromarray(companion_sample.heatmap.map).resize((width, height), Image.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    blended = (1 - HEATMAP_WEIGHT) * np.asarray(image, dtype=np.float32) + HEATMAP_WEIGHT * 255.0 * colours
    picture = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for region in regions_of(companion_sample[companion_sample.source_field]):
        if region.bounding_box:
            x, y, w, h = region.bounding_box
            draw.rectangle((x * width, y * height, (x + w) * width, (y + h) * height), outline=(255, 255, 255), width=2)
        draw.text((4, 4), f"{region.label}  dice {companion_sample['dice']:.2f}", fill=(255, 255, 255))
    return picture


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
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
