"""The badmask task: corrupt a seeded fraction of masks, score every region, rank by the score.

Corruptions (of an image's own masks): ``swap`` puts another object's mask under the label, ``shift``
moves the mask by half its extent, ``erode`` shrinks it to at most half its area. The package's score
(core.badmask) is the ``maskinversion`` row; ``legrad_dice`` is 1 - the Dice of the region's class
text map alone (the first idea the score improves on); each embedding method gives 1 - p(annotated
class | its region embedding), e.g. the crop's class probability.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from .. import defaults
from ..core.backbone import Backbone
from ..core.badmask import review_masks
from ..core.inputs import load_rgb
from ..core.inversion import MaskInverter
from ..core.zeroshot import class_probabilities, mistakenness
from .baselines import region_embeddings
from .tasks import Instances, auroc

CORRUPTIONS = {"swap": 0.5, "shift": 0.25, "erode": 0.25}  # share of each kind among corrupted masks


def shifted(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask moved by half its extent in a random direction (what leaves the image is cut)."""
    ys, xs = np.nonzero(mask)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = int(round(np.sin(angle) * extent / 2)), int(round(np.cos(angle) * extent / 2))
    height, width = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask eroded (3 x 3) until at most half its area is left, never to nothing."""
    target, current = mask.sum() / 2, mask
    while current.sum() > target:
        padded = np.pad(current, 1)
        smaller = np.ones_like(current)
        for dy in range(3):
            for dx in range(3):
                smaller &= padded[dy:dy + current.shape[0], dx:dx + current.shape[1]]
        if not smaller.any():
            break
        current = smaller
    return current


def corrupt(masks: List[np.ndarray], rng: np.random.Generator, noise: float) -> tuple:
    """(masks, kinds): each mask corrupted with probability ``noise`` (kind "ok" otherwise); an image
    with one object cannot swap, so it shifts instead."""
    kinds_all, shares = list(CORRUPTIONS), np.array(list(CORRUPTIONS.values()))
    out, kinds = [], []
    for index, mask in enumerate(masks):
        kind = "ok" if rng.random() >= noise else str(rng.choice(kinds_all, p=shares))
        if kind == "swap" and len(masks) < 2:
            kind = "shift"
        if kind == "swap":
            other = (index + 1 + int(rng.integers(len(masks) - 1))) % len(masks)
            out.append(masks[other])
        elif kind == "shift":
            out.append(shifted(mask, rng))
        elif kind == "erode":
            out.append(eroded(mask))
        else:
            out.append(mask)
        kinds.append(kind)
    return out, kinds


def badmask(backbone: Backbone, data: Instances, methods: Sequence[str], text: torch.Tensor,
            noise: float = defaults.BADMASK_NOISE, seed: int = 0, **inverter) -> Dict[str, dict]:
    """AUROC and precision@k of every score over all regions (and AUROC per corruption kind)."""
    rng = np.random.default_rng(seed)
    names = data.class_names
    baselines = [m for m in methods if m != "maskinversion"]
    scores: Dict[str, list] = {m: [] for m in ["maskinversion", "maskinversion_class", "legrad_dice", *baselines]}
    kinds: list = []
    for image_id in data.image_ids:
        anns = data.annotations(image_id)
        masks, kind = corrupt([data.coco.annToMask(a) > 0 for a in anns], rng, noise)
        labels = [names.index(data.class_of(a)) for a in anns]
        image = load_rgb(data.image_path(image_id))
        inverted = MaskInverter(backbone, **inverter).invert(image, masks)
        review = review_masks(backbone, image, masks, labels, text, inverted.dice, blocks=inverter.get("blocks"),
                              min_missing_score=None)
        scores["maskinversion"].append(review.mask_mistakenness)
        scores["legrad_dice"].append(1.0 - review.class_dice)
        scores["maskinversion_class"].append(_class_mistakenness(backbone, inverted.embeddings, text, labels))
        for method in baselines:
            embeddings = region_embeddings(backbone, image, masks, method=method)
            scores[method].append(_class_mistakenness(backbone, embeddings, text, labels))
        kinds += kind
    kinds = np.array(kinds)
    corrupted = kinds != "ok"
    results = {}
    for method, parts in scores.items():
        values = np.concatenate(parts)
        usable = ~np.isnan(values)
        results[method] = _ranking(values[usable], corrupted[usable], kinds[usable])
    return results


def _class_mistakenness(backbone: Backbone, embeddings: np.ndarray, text: torch.Tensor, labels: list) -> np.ndarray:
    out = np.full(len(labels), np.nan)
    usable = ~np.isnan(embeddings).any(axis=1)
    if usable.any():
        probs = class_probabilities(backbone, embeddings[usable], text)
        out[usable] = mistakenness(probs, np.asarray(labels)[usable])
    return out


def _ranking(values: np.ndarray, corrupted: np.ndarray, kinds: np.ndarray) -> dict:
    k = int(corrupted.sum())
    top = np.argsort(-values, kind="stable")[:k]
    row = {"auroc": auroc(values, corrupted), f"precision@{k}": float(corrupted[top].mean()) if k else float("nan"),
           "corrupted": k, "instances": int(len(values))}
    for kind in CORRUPTIONS:
        chosen = (kinds == kind) | (kinds == "ok")
        row[f"auroc_{kind}"] = auroc(values[chosen], corrupted[chosen])
    return row
