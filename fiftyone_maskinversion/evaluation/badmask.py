"""The badmask task: corrupt a seeded fraction of masks, score every region, rank by the score.

Corruptions (of an image's own masks): ``swap`` puts another object's mask under the label, ``shift``
moves the mask by half its extent, ``erode`` shrinks it to at most half its area, ``dilate`` grows it
to at least twice its area. The package's score (core.badmask) is the ``maskinversion`` row and each
of its components a ``mask:<component>`` row; ``legrad_dice`` is 1 - the Dice of the region's class
text map alone (the first idea the score improves on); each embedding method gives 1 - p(annotated
class | its region embedding), e.g. the crop's class probability.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from .. import defaults
from ..core.backbone import Backbone
from ..core.badmask import COMPONENTS, review_masks, translate
from ..core.inputs import load_rgb
from ..core.inversion import MaskInverter
from ..core.zeroshot import class_probabilities, mistakenness
from .baselines import region_embeddings
from .tasks import Instances, auroc

# share of each kind among corrupted masks: issue 17's protocol, and the same with over-segmentation
CORRUPTIONS = {"swap": 0.5, "shift": 0.25, "erode": 0.25}
WITH_DILATE = {"swap": 0.4, "shift": 0.2, "erode": 0.2, "dilate": 0.2}
MIXES = {"swap,shift,erode": CORRUPTIONS, "swap,shift,erode,dilate": WITH_DILATE}
# the component that should name each kind (the reason the review gives)
EXPECTED_REASON = {"swap": "wrong object", "shift": "shifted", "erode": "too small", "dilate": "too large"}


def shifted(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask moved by half its extent in a random direction (what leaves the image is cut)."""
    ys, xs = np.nonzero(mask)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    angle = rng.uniform(0, 2 * np.pi)
    return translate(mask, int(round(np.sin(angle) * extent / 2)), int(round(np.cos(angle) * extent / 2)))


def _morph_step(mask: np.ndarray, grow: bool) -> np.ndarray:
    """One 3 x 3 dilation (``grow``) or erosion of a boolean mask."""
    padded = np.pad(mask, 1)
    windows = [padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] for dy in range(3) for dx in range(3)]
    return np.logical_or.reduce(windows) if grow else np.logical_and.reduce(windows)


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask eroded (3 x 3) until at most half its area is left, never to nothing."""
    target, current = mask.sum() / 2, mask
    while current.sum() > target:
        smaller = _morph_step(current, grow=False)
        if not smaller.any():
            break
        current = smaller
    return current


def dilated(mask: np.ndarray) -> np.ndarray:
    """The mask dilated (3 x 3) until it has at least twice its area (or fills the image)."""
    target, current = 2 * mask.sum(), mask
    while current.sum() < target and not current.all():
        current = _morph_step(current, grow=True)
    return current


def corrupt(masks: List[np.ndarray], rng: np.random.Generator, noise: float, mix: Dict[str, float] = CORRUPTIONS) -> tuple:
    """(masks, kinds): each mask corrupted with probability ``noise`` (kind "ok" otherwise), the kind
    drawn with the shares of ``mix``; an image with one object cannot swap, so it shifts instead."""
    kinds_all, shares = list(mix), np.array(list(mix.values()))
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
        elif kind == "dilate":
            out.append(dilated(mask))
        else:
            out.append(mask)
        kinds.append(kind)
    return out, kinds


def badmask(backbone: Backbone, data: Instances, methods: Sequence[str], text: torch.Tensor,
            noise: float = defaults.BADMASK_NOISE, seed: int = 0, mix: Dict[str, float] = CORRUPTIONS,
            **inverter) -> Dict[str, dict]:
    """AUROC and precision@k of every score over all regions (and AUROC per corruption kind); the
    ``maskinversion`` row also gives the share of corrupted masks whose reason names their kind."""
    scores, kinds, reasons = region_scores(backbone, data, methods, text, noise, seed, mix, **inverter)
    corrupted = kinds != "ok"
    results = {}
    for method, values in scores.items():
        usable = ~np.isnan(values)
        results[method] = _ranking(values[usable], corrupted[usable], kinds[usable], list(mix))
    named = [reason == EXPECTED_REASON[kind] for kind, reason in zip(kinds, reasons) if kind != "ok"]
    results["maskinversion"]["reason_right"] = float(np.mean(named)) if named else float("nan")
    return results


def region_scores(backbone: Backbone, data: Instances, methods: Sequence[str], text: torch.Tensor,
                  noise: float = defaults.BADMASK_NOISE, seed: int = 0, mix: Dict[str, float] = CORRUPTIONS,
                  **inverter) -> tuple:
    """(score name -> one value per region, each region's corruption kind, each region's reason) with
    a seeded fraction ``noise`` of the masks corrupted: the raw material of :func:`badmask`."""
    rng = np.random.default_rng(seed)
    names = data.class_names
    baselines = [m for m in methods if m != "maskinversion"]
    parts = [f"mask:{name}" for name in COMPONENTS]
    scores: Dict[str, list] = {m: [] for m in ["maskinversion", *parts, "maskinversion_class", "legrad_dice", *baselines]}
    kinds: list = []
    reasons: list = []
    for image_id in data.image_ids:
        anns = data.annotations(image_id)
        masks, kind = corrupt([data.coco.annToMask(a) > 0 for a in anns], rng, noise, mix)
        labels = [names.index(data.class_of(a)) for a in anns]
        image = load_rgb(data.image_path(image_id))
        inverted = MaskInverter(backbone, **inverter).invert(image, masks)
        review = review_masks(backbone, image, masks, labels, text, inverted.dice, blocks=inverter.get("blocks"),
                              min_missing_score=None)
        scores["maskinversion"].append(review.mask_mistakenness)
        for name in COMPONENTS:
            scores[f"mask:{name}"].append(review.components[name])
        reasons += review.reasons
        scores["legrad_dice"].append(1.0 - review.class_dice)
        scores["maskinversion_class"].append(_class_mistakenness(backbone, inverted.embeddings, text, labels))
        for method in baselines:
            embeddings = region_embeddings(backbone, image, masks, method=method)
            scores[method].append(_class_mistakenness(backbone, embeddings, text, labels))
        kinds += kind
    return {name: np.concatenate(values) for name, values in scores.items()}, np.array(kinds), reasons


def _class_mistakenness(backbone: Backbone, embeddings: np.ndarray, text: torch.Tensor, labels: list) -> np.ndarray:
    out = np.full(len(labels), np.nan)
    usable = ~np.isnan(embeddings).any(axis=1)
    if usable.any():
        probs = class_probabilities(backbone, embeddings[usable], text)
        out[usable] = mistakenness(probs, np.asarray(labels)[usable])
    return out


def _ranking(values: np.ndarray, corrupted: np.ndarray, kinds: np.ndarray, mix: list) -> dict:
    k = int(corrupted.sum())
    top = np.argsort(-values, kind="stable")[:k]
    row = {"auroc": auroc(values, corrupted), f"precision@{k}": float(corrupted[top].mean()) if k else float("nan"),
           "corrupted": k, "instances": int(len(values))}
    for kind in mix:
        chosen = (kinds == kind) | (kinds == "ok")
        row[f"auroc_{kind}"] = auroc(values[chosen], corrupted[chosen])
    return row
