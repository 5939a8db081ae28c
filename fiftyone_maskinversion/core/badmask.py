"""Bad masks and missing regions from class-text LeGrad maps (a mask review that needs no detector).

A region's mask mistakenness is

    max over the image's other annotated classes c' of Dice(E_c', m)  -  Dice(E_c, m)
    + MASK_FIDELITY_WEIGHT * (1 - the inversion's own Dice for m)

with E_c the LeGrad map of the text embedding of the region's class c, m its mask and Dice the soft
Dice coefficient MaskInversion optimises. The first part is high when another class of the image
explains the mask better than its own (a mask on the wrong object); the second when no embedding
could make its map match the mask (a shifted or sloppy mask). A missing region is a hot part of a
class map (E >= HOT) that no annotated region covers, in an image the zero-shot classifier thinks
shows that class; its score is p(class | image) times the mean map value over that part. A min-max
normalised map always has a hot part, so each candidate is then confirmed by the method itself: the
MaskInversion embedding of its box must give the class a zero-shot probability >= ``confirmation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import defaults
from .backbone import Backbone
from .block_state import ImageState, capture_image_state, resolve_blocks
from .inputs import ImageInput, MaskInput, box_mask, load_rgb, prepare_masks
from .inversion import MaskInverter
from .legrad import make_engine, relevance_to_maps
from .metrics import soft_dice_loss
from .zeroshot import class_probabilities

MASK_FIDELITY_WEIGHT = 0.3  # chosen on synthetic scenes of seed 2024; held out on seeds 7 and 4242
HOT = 0.5  # a class map's value above which a pixel belongs to a candidate missing region
UNCOVERED = 0.5  # the least share of a candidate that no annotated region may cover
CANDIDATE_CLASSES = 5  # classes the image is most likely to show, mapped besides its annotated ones


@dataclass
class MissingRegion:
    """A suggested region: a vocabulary index, a relative [x, y, w, h] box and a score in [0, 1]."""

    class_index: int
    box: List[float]
    score: float
    confirmation: float = float("nan")  # p(class | the MaskInversion embedding of the box)


@dataclass
class MaskReview:
    """Per-mask results of one image (NaN where a mask is unusable or its class not in the vocabulary):
    the score and the Dice of the mask with its own class's map; the suggested missing regions, best first."""

    mask_mistakenness: np.ndarray
    class_dice: np.ndarray
    missing: List[MissingRegion] = field(default_factory=list)


def mask_mistakenness(class_dice: np.ndarray, own: np.ndarray, inversion_dice: np.ndarray,
                      present: Sequence[int]) -> np.ndarray:
    """Scores of N masks from their Dice with K class maps (N x K), their own class's column ``own``
    (-1: not mapped), the inversion's Dice and the columns of the classes annotated in the image."""
    scores = np.full(len(own), np.nan, dtype=np.float64)
    for row, column in enumerate(own):
        if column < 0:
            continue
        others = [class_dice[row, k] for k in present if k != column]
        best_other = max(others) if others else 0.0
        scores[row] = best_other - class_dice[row, column] + MASK_FIDELITY_WEIGHT * (1.0 - inversion_dice[row])
    return scores


def missing_regions(maps: np.ndarray, classes: Sequence[int], image_probs: np.ndarray, covered: np.ndarray,
                    min_score: float) -> List[MissingRegion]:
    """Connected hot parts of each class map (K x S x S, class indices ``classes``) that annotated
    regions (``covered``: S x S bool) leave mostly uncovered, scored and kept from ``min_score``."""
    size = maps.shape[-1]
    found = []
    for class_map, index in zip(maps, classes):
        parts, count = ndimage.label(class_map >= HOT)
        for part in range(1, count + 1):
            pixels = parts == part
            if (pixels & covered).sum() > (1.0 - UNCOVERED) * pixels.sum():
                continue
            score = float(image_probs[index] * class_map[pixels].mean())
            if score < min_score:
                continue
            ys, xs = np.nonzero(pixels)
            box = [xs.min() / size, ys.min() / size, (xs.max() + 1 - xs.min()) / size, (ys.max() + 1 - ys.min()) / size]
            found.append(MissingRegion(int(index), [float(v) for v in box], score))
    return sorted(found, key=lambda region: -region.score)


def review_masks(
    backbone: Backbone,
    image: ImageInput,
    masks: MaskInput,
    labels: Sequence[int],
    text: torch.Tensor,
    inversion_dice: Sequence[float],
    blocks: Optional[Sequence[int]] = defaults.BLOCKS,
    min_missing_score: Optional[float] = defaults.MIN_MISSING_SCORE,
    inverter: Optional[MaskInverter] = None,
    confirmation: float = defaults.MISSING_CONFIRMATION,
) -> MaskReview:
    """Mask mistakenness of N masks of one image and (unless ``min_missing_score`` is None) the
    missing regions, from one image forward (and, for candidates, one inversion of their boxes by
    ``inverter``, keeping those it confirms). ``labels``: each mask's row in ``text`` (C x D unit class
    embeddings; -1 = not in the vocabulary); ``inversion_dice``: the MaskInversion Dice of each mask."""
    rgb = load_rgb(image, min_side=backbone.patch_size)
    prepared = prepare_masks(masks, (rgb.height, rgb.width), backbone.image_size)
    labels = np.asarray(labels, dtype=int)
    review = MaskReview(np.full(len(labels), np.nan), np.full(len(labels), np.nan))
    explained = resolve_blocks(backbone, blocks)
    state = capture_image_state(backbone, backbone.pixels(rgb), explained)
    valid_labels = labels[prepared.valid]
    mapped = set(int(c) for c in valid_labels if c >= 0)
    if min_missing_score is not None:  # the classes the image most likely shows are candidates too
        image_probs = class_probabilities(backbone, state.image_embedding.cpu().numpy(), text)[0]
        mapped |= set(int(c) for c in np.argsort(-image_probs)[:CANDIDATE_CLASSES])
    if not mapped:
        return review
    classes = sorted(mapped)
    engine = make_engine(defaults.ENGINE, backbone, state)
    with torch.no_grad():
        relevance = engine.relevance(F.normalize(text[classes].to(backbone.device), dim=-1))
        maps = relevance_to_maps(relevance, backbone.grid_size, backbone.patch_size)
        grid_masks = prepared.grid_masks.to(maps.device)
        pairs = len(grid_masks) * len(classes)
        dice = 1.0 - soft_dice_loss(maps.repeat(len(grid_masks), 1, 1),
                                    grid_masks.repeat_interleave(len(classes), dim=0)) if pairs else maps.new_zeros(0)
    class_dice = dice.reshape(len(grid_masks), len(classes)).cpu().numpy()
    column = {index: k for k, index in enumerate(classes)}
    own = np.array([column.get(int(c), -1) for c in valid_labels], dtype=int)
    present = sorted({column[int(c)] for c in valid_labels if c >= 0})
    rows = np.flatnonzero(prepared.valid)
    fidelity = np.asarray(inversion_dice, dtype=np.float64)[rows]
    review.mask_mistakenness[rows] = mask_mistakenness(class_dice, own, fidelity, present)
    review.class_dice[rows] = np.where(own >= 0, class_dice[np.arange(len(own)), np.clip(own, 0, None)], np.nan)
    if min_missing_score is not None:
        covered = (grid_masks >= 0.5).any(dim=0).cpu().numpy() if len(grid_masks) else np.zeros(maps.shape[1:], bool)
        review.missing = missing_regions(maps.cpu().numpy(), classes, image_probs, covered, min_missing_score)
        if inverter is not None and review.missing:
            same_forward = state if inverter.blocks == explained else None  # one image forward for both
            review.missing = confirmed(inverter, rgb, review.missing, text, confirmation, same_forward)
    return review


def confirmed(inverter: MaskInverter, image, candidates: List[MissingRegion], text: torch.Tensor,
              least: float, state: Optional[ImageState] = None) -> List[MissingRegion]:
    """The candidates whose box's MaskInversion embedding gives their class a probability >= ``least``
    (``state``: the image's forward for the inverter's blocks, if already captured)."""
    boxes = np.stack([box_mask(candidate.box, image.width, image.height) for candidate in candidates])
    embeddings = inverter.invert(image, boxes, state=state).embeddings
    usable = np.flatnonzero(~np.isnan(embeddings).any(axis=1))
    probs = class_probabilities(inverter.backbone, embeddings[usable], text) if len(usable) else []
    kept = []
    for row, p in zip(usable, probs):
        candidate = candidates[row]
        candidate.confirmation = float(p[candidate.class_index])
        if candidate.confirmation >= least:
            kept.append(candidate)
    return kept
