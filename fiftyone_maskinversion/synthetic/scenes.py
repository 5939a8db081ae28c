"""Synthetic multi-object scenes with exact masks, object names and captions (seeded, reproducible).

Two worlds. ``objects``: each scene has 2-4 non-overlapping objects, each of one of 12 classes (its
own colour and shape) drawn with a little texture on a noisy background, so an object is named by its
own pixels. ``context``: a dark sky band above a green ground band, and 2-4 squares of three colours
whose name depends on the band they are in (the same white square is "a moon" in the sky and "a
ball" on the ground), so a region's pixels alone cannot name it. Names are unique within a scene; the
caption lists them all. A small CLIP trained on such captions is the offline stand-in for pretrained
weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import numpy as np
from PIL import Image, ImageDraw

# Each class has its own colour and shape, so a region's name follows from its appearance alone: a
# model this small cannot learn which colour goes with which shape from scene captions, and that
# binding problem is not what localized embeddings are about.
OBJECTS = {
    "red circle": ((220, 30, 30), "circle"),
    "green square": ((30, 170, 40), "square"),
    "blue triangle": ((40, 60, 220), "triangle"),
    "yellow cross": ((235, 215, 30), "cross"),
    "purple circle": ((140, 40, 170), "circle"),
    "orange square": ((245, 130, 20), "square"),
    "cyan triangle": ((30, 210, 220), "triangle"),
    "pink cross": ((250, 120, 200), "cross"),
    "white circle": ((250, 250, 250), "circle"),
    "black square": ((15, 15, 15), "square"),
    "brown triangle": ((120, 70, 20), "triangle"),
    "lime cross": ((170, 250, 60), "cross"),
}
CLASSES = tuple(OBJECTS)
SCENE_SIZE = 64

# The context world: a square's colour gives two names, one per band. Squares fill their bounding box,
# so a box crop shows the object and nothing of its surroundings.
CONTEXT_OBJECTS = {
    (250, 250, 250): ("moon", "ball"),
    (235, 215, 30): ("sun", "lemon"),
    (220, 30, 30): ("kite", "tent"),
}
SKY, GROUND = (25, 30, 80), (50, 140, 60)
CONTEXT_CLASSES = tuple(name for pair in zip(*CONTEXT_OBJECTS.values()) for name in pair)
WORLDS = ("objects", "context")


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray  # N x H x W bool
    names: List[str]  # N object names, unique in the scene
    caption: str


def _shape_mask(shape: str, box: tuple, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    else:  # cross
        w, h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=255)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=255)
    return np.asarray(mask) > 0


def make_scene(rng: np.random.Generator, size: int = SCENE_SIZE, min_objects: int = 2, max_objects: int = 4) -> Scene:
    """One random scene with min_objects to max_objects objects."""
    background = rng.integers(60, 200, 3)
    image = np.clip(background + rng.normal(0, 18, (size, size, 3)), 0, 255)
    count = int(rng.integers(min_objects, max_objects + 1))
    names, masks, occupied = [], [], np.zeros((size, size), bool)
    for _ in range(50):
        if len(names) == count:
            break
        name = CLASSES[rng.integers(len(CLASSES))]
        color, shape = OBJECTS[name]
        extent = int(rng.integers(size // 5, size * 2 // 5))
        x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
        mask = _shape_mask(shape, (x0, y0, x0 + extent - 1, y0 + extent - 1), size)
        if name in names or (mask & occupied).any():
            continue
        _paint(image, mask, color, rng)
        names.append(name)
        masks.append(mask)
        occupied |= mask
    return _finish(image, masks, names, rng)


def make_context_scene(rng: np.random.Generator, size: int = SCENE_SIZE, min_objects: int = 2,
                       max_objects: int = 4) -> Scene:
    """One random scene of the context world: sky over ground, squares named by colour and band."""
    horizon = int(rng.integers(size * 2 // 5, size * 3 // 5 + 1))
    image = np.empty((size, size, 3))
    image[:horizon], image[horizon:] = SKY, GROUND
    image = np.clip(image + rng.normal(0, 18, (size, size, 3)), 0, 255)
    count = int(rng.integers(min_objects, max_objects + 1))
    colours = list(CONTEXT_OBJECTS)
    names, masks, occupied = [], [], np.zeros((size, size), bool)
    for _ in range(50):
        if len(names) == count:
            break
        colour, ground = colours[rng.integers(len(colours))], int(rng.integers(2))
        name = CONTEXT_OBJECTS[colour][ground]
        extent = int(rng.integers(size // 5, size * 3 // 10))
        top = int(rng.integers(horizon, size - extent + 1)) if ground else int(rng.integers(0, horizon - extent + 1))
        left = int(rng.integers(0, size - extent + 1))
        mask = np.zeros((size, size), bool)
        mask[top:top + extent, left:left + extent] = True
        if name in names or (mask & occupied).any():
            continue
        _paint(image, mask, colour, rng)
        names.append(name)
        masks.append(mask)
        occupied |= mask
    return _finish(image, masks, names, rng)


def _paint(image: np.ndarray, mask: np.ndarray, colour: tuple, rng: np.random.Generator) -> None:
    """Fill the mask with the colour at a random shade, with a little texture."""
    shade = np.array(colour) * rng.uniform(0.85, 1.1)
    texture = rng.normal(0, 10, image.shape)
    image[mask] = np.clip(shade + texture[mask], 0, 255)


def _finish(image: np.ndarray, masks: list, names: list, rng: np.random.Generator) -> Scene:
    """The scene with a caption naming its objects in random order."""
    order = rng.permutation(len(names))
    caption = "a photo of " + ", ".join(f"a {names[i]}" for i in order) + "."
    return Scene(image.astype(np.uint8), np.stack(masks), names, caption)


SCENE_MAKERS = {"objects": make_scene, "context": make_context_scene}


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; choose one of {WORLDS}")


def world_classes(world: str) -> tuple:
    """The class names of a world (``objects`` or ``context``)."""
    _check_world(world)
    return CLASSES if world == "objects" else CONTEXT_CLASSES


def scenes(seed: int, count: int, size: int = SCENE_SIZE, min_objects: int = 2, world: str = "objects") -> Iterator[Scene]:
    """``count`` scenes of one world from one seed (training uses other seeds than evaluation)."""
    _check_world(world)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield SCENE_MAKERS[world](rng, size, min_objects=min_objects)


def write_coco(folder: Path, seed: int, count: int, world: str = "objects") -> Path:
    """Write ``count`` scenes of a world as a COCO instances dataset (images/, instances.json) plus
    referring expressions (expressions.json, the refcocos-val2017 format: "the <name>"); returns ``folder``."""
    from pycocotools import mask as mask_utils

    _check_world(world)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(world_classes(world))]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations, expressions = [], [], []
    for index, scene in enumerate(scenes(seed, count, world=world)):
        file_name = f"{index:06d}.png"
        Image.fromarray(scene.image).save(folder / "images" / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": scene.image.shape[0], "width": scene.image.shape[1]})
        ids = []
        for mask, name in zip(scene.masks, scene.names):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            ann_id = len(annotations) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[name], "segmentation": rle,
                                "area": float(mask.sum()), "bbox": [x, y, w, h], "iscrowd": 0})
            ids.append(ann_id)
        for ann_id, name in zip(ids, scene.names):
            expressions.append({"expression": f"the {name}", "image": f"images/{file_name}", "image_id": image_id,
                                "target_id": ann_id, "candidate_ids": ids})
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (folder / "expressions.json").write_text(json.dumps(expressions))
    return folder
