"""Bad masks and missing regions from class-text LeGrad maps (a mask review that needs no detector).

A region's mask mistakenness is a weighted sum of components, each saying what may be wrong with it
(E_c: the LeGrad map of the text embedding of the region's class c, computed once per image; m: its
mask; Dice: the soft Dice coefficient MaskInversion optimises):

* ``wrong_object``: max over the image's other annotated classes c' of Dice(E_c', m) - Dice(E_c, m),
  or 0 when no other class explains the mask better than its own (a mask on the wrong object).
* ``shifted``: the best Dice(E_c, m moved) - Dice(E_c, m) over a grid of moves of up to 3/4 of the
  mask's height and width (>= 0: how much better a nearby mask fits the class's evidence).
* ``too_small`` / ``too_large``: Dice(L_c, m grown / shrunk by RESIZE of its extent) - Dice(L_c, m),
  with L_c the class map min-max normalised in a window around the mask (its box grown by its extent
  a side), so that the object's evidence, not the whole image's, sets the scale. Positive: a larger
  (smaller) mask fits the evidence better, i.e. the mask is under- (over-) segmented.
  These searches run over the maps already computed, at most about SEARCH_SIZE pixels a side: no
  new forward, a few hundred small products per region.
* ``boundary``: where the class's evidence falls off around the mask's border. The mean of E_c on
  rings 0, 1, ..., 6 ring-widths out of the mask (ring 0: the mask's own outermost pixels; a ring is
  an eighth of a patch wide) is weighed by EDGE_PROFILE (hot on and just outside the border counts for,
  hot five or six ring-widths out counts against); the component is that sum minus EDGE_CLEAN (its
  median on correct masks), floored at 0. Positive: the evidence is still hot past the mask's border
  and only falls off further out, i.e. the object's edge lies outside the mask (under-segmentation,
  an eroded or sloppy-small mask). Seven means per region: no new forward, no search.
* ``overshoot``: the other side of the same sum: EDGE_CLEAN minus it, floored at 0. Positive: the
  evidence is already cold on the mask's own border, i.e. the object's edge lies inside the mask
  (over-segmentation, a dilated or sloppy-large mask).
* ``infidelity``: 1 - the inversion's own Dice for m (no embedding could make its map match the mask).

The weights (WEIGHTS), EDGE_PROFILE and EDGE_CLEAN were chosen on synthetic scenes of seed 2024 only
(400 scenes: EDGE_PROFILE is a logistic fit of eroded vs correct masks there, normalised to unit L1;
the weights a random search: first the best overall-plus-worst-kind AUROC of swap / shift / erode; then,
with ``overshoot`` added, the best overall-plus-dilate AUROC of a mix with dilated masks, keeping each
of swap / shift / erode within 0.01 of before on the mix without them); the held-out seeds are in
docs/evaluation.md. A region's reason is "wrong object" when that part reaches FITS_BELOW, else its
largest weighted localisation part ("shifted", "too small" from too_small or boundary, "too large" from too_large or
overshoot) if that does, else "fits". A missing region is a hot part of a class map (E >= HOT) that no annotated
region covers, in an image the zero-shot classifier thinks shows that class; its score is
p(class | image) times the mean map value over that part. A min-max normalised map always has a hot
part, so each candidate is then confirmed by the method itself: the MaskInversion embedding of its
box must give the class a zero-shot probability >= ``confirmation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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
from .metrics import DICE_SMOOTH
from .zeroshot import class_probabilities

COMPONENTS = ("wrong_object", "shifted", "too_small", "too_large", "boundary", "overshoot", "infidelity")
# chosen on synthetic scenes of seed 2024 only (400 scenes; a random search for the best overall + dilate
# AUROC of a mix with dilated masks, keeping swap / shift / erode within 0.01 of the previous weights
# 1, 1.5, 0.05, 0.2, 1.1, -, 0.13 on the mix without them; held-out seeds in docs/evaluation.md)
WEIGHTS = {"wrong_object": 1.0, "shifted": 3.5, "too_small": 0.08, "too_large": 0.55, "boundary": 3.5, "overshoot": 1.5,
           "infidelity": 0.35}
REASONS = {"wrong_object": "wrong object", "shifted": "shifted", "too_small": "too small", "too_large": "too large",
           "boundary": "too small", "overshoot": "too large"}
FITS_BELOW = 0.05  # a weighted part below this is no reason (chosen on seed 2024; 72.5 % of its corrupted masks named right)
SHIFTS = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)  # moves tried, in fractions of the mask's height / width
RESIZE = 0.2  # how far a mask is grown / shrunk for too_small / too_large, in fractions of its larger side
EDGE_PROFILE = (0.2, 0.18, 0.16, 0.1, 0.01, -0.1, -0.24)  # weights of the ring means 0..6 (seed 2024 fit)
EDGE_CLEAN = 0.251  # the median profile sum of correct masks of seed 2024: boundary's and overshoot's zero
EDGE_RING = 8  # rings per patch: the ring profile reads maps and masks at EDGE_RING pixels per patch, rings 1 px wide
SEARCH_SIZE = 112  # maps and masks are average-pooled to at most about this many pixels a side for the search
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
    """Per-mask results of one image (NaN, or reason None, where a mask is unusable or its class not in
    the vocabulary): ``mask_mistakenness`` (N floats, higher = more likely bad); ``components``
    (name -> N floats, see COMPONENTS and the module doc; the score is their WEIGHTS-weighted sum);
    ``reasons`` (N short strings: "wrong object", "shifted", "too small", "too large" or "fits"); ``class_dice`` (N floats: Dice of the mask with its own class's map); ``missing``: the
    suggested missing regions, best first."""

    mask_mistakenness: np.ndarray
    class_dice: np.ndarray
    components: Dict[str, np.ndarray] = field(default_factory=dict)
    reasons: List[Optional[str]] = field(default_factory=list)
    missing: List[MissingRegion] = field(default_factory=list)


def wrong_object(class_dice: np.ndarray, own: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """Per mask, how much better the best other annotated class's map fits it than its own class's
    (0 if none does; NaN where ``own`` is -1), from the N x K Dice table and the columns ``present``."""
    out = np.full(len(own), np.nan, dtype=np.float64)
    for row, column in enumerate(own):
        if column >= 0:
            others = [class_dice[row, k] for k in present if k != column]
            out[row] = max(0.0, (max(others) if others else 0.0) - class_dice[row, column])
    return out


def mask_mistakenness(components: Dict[str, np.ndarray]) -> Tuple[np.ndarray, List[Optional[str]]]:
    """The WEIGHTS-weighted sum of the components (name -> N floats) and each mask's reason (None
    where the score is NaN): "wrong object" when that weighted part reaches FITS_BELOW, else the
    largest weighted localisation part if it does, else "fits" (infidelity is never a reason: every
    mask has some)."""
    weighted = {name: WEIGHTS[name] * np.asarray(components[name], dtype=np.float64) for name in COMPONENTS}
    scores = np.sum([weighted[name] for name in COMPONENTS], axis=0)
    located = np.stack([weighted[name] for name in REASONS if name != "wrong_object"])
    reasons: List[Optional[str]] = []
    for row, score in enumerate(scores):
        largest = int(np.argmax(located[:, row]))
        if np.isnan(score):
            reasons.append(None)
        elif weighted["wrong_object"][row] >= FITS_BELOW:
            reasons.append(REASONS["wrong_object"])
        else:
            reasons.append(list(REASONS.values())[1 + largest] if located[largest, row] >= FITS_BELOW else "fits")
    return scores, reasons


def pairwise_dice(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice of every mask (N x S x S) with every map (K x S x S): N x K, from one product."""
    overlap = masks.flatten(1) @ maps.flatten(1).T
    return (2.0 * overlap + DICE_SMOOTH) / (masks.flatten(1).sum(1)[:, None] + maps.flatten(1).sum(1)[None] + DICE_SMOOTH)


def translate(mask, dy: int, dx: int):
    """The mask (H x W array or tensor) moved by dy rows and dx columns; what leaves the image is cut."""
    height, width = mask.shape[-2:]
    out = mask * 0
    out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        mask[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def _grown(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilation of a soft mask (H x W) by a square of side 2 radius + 1 (two 1-D max filters)."""
    side = 2 * radius + 1
    rows = F.max_pool2d(mask[None, None], (side, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(rows, (1, side), stride=1, padding=(0, radius))[0, 0]


def localisation(maps: torch.Tensor, masks: torch.Tensor, grid_size: Optional[int] = None) -> Dict[str, np.ndarray]:
    """``shifted``, ``too_small``, ``too_large``, ``boundary`` and ``overshoot`` of N masks (N x S x S) against their
    own class maps (N x S x S); see the module doc. ``grid_size``: patches per side of the model (sets
    the ring width of ``boundary`` / ``overshoot``; None: rings one pixel wide)."""
    edge_maps, edge_masks = (_resized(maps, EDGE_RING * grid_size), _resized(masks, EDGE_RING * grid_size)) \
        if grid_size else (maps, masks)  # boundary / overshoot: rings one pixel, an eighth of a patch, wide
    factor = max(1, maps.shape[-1] // SEARCH_SIZE)
    if factor > 1:
        maps, masks = F.avg_pool2d(maps[:, None], factor)[:, 0], F.avg_pool2d(masks[:, None], factor)[:, 0]
    out = {name: np.full(len(masks), np.nan) for name in ("shifted", "too_small", "too_large", "boundary", "overshoot")}
    for row, (class_map, mask) in enumerate(zip(maps, masks)):
        ys, xs = torch.nonzero(mask >= min(0.5, float(mask.max())), as_tuple=True)  # a tiny mask: its fullest cells
        if not float(mask.max()):
            continue
        height, width = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        moved = torch.stack([translate(mask, round(fy * height), round(fx * width)) for fy in SHIFTS for fx in SHIFTS])
        dice = pairwise_dice(class_map[None], moved)[:, 0]
        out["shifted"][row] = float(dice.max() - dice[len(SHIFTS) ** 2 // 2])  # the middle move is no move
        extent = max(height, width)
        local = _local_map(class_map, (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1), extent)
        radius = max(1, round(RESIZE * extent))
        sized = torch.stack([mask, _grown(mask, radius), 1.0 - _grown(1.0 - mask, radius)])
        dice = pairwise_dice(local[None], sized)[:, 0]
        out["too_small"][row], out["too_large"][row] = float(dice[1] - dice[0]), float(dice[2] - dice[0])
        profile = edge_profile(edge_maps[row], edge_masks[row])
        out["boundary"][row], out["overshoot"][row] = max(0.0, profile - EDGE_CLEAN), max(0.0, EDGE_CLEAN - profile)
    return out


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """N x S x S maps or masks at ``size`` pixels a side: area averages (exact for whole pooling factors)."""
    return images if images.shape[-1] == size else F.interpolate(images[:, None], size=(size, size), mode="area")[:, 0]


def ring_means(class_map: torch.Tensor, mask: torch.Tensor, ring: int, count: int) -> List[float]:
    """The mean map value on ``count`` rings around the mask (S x S, binarised at 0.5, or a tiny
    pooled mask at its fullest cells): ring 0 its outermost ``ring`` pixels, ring d > 0 the pixels
    between d - 1 and d ring-widths outside it (square neighbourhoods). An empty ring (the mask fills
    the image there, or is empty) is NaN."""
    inside = (mask >= min(0.5, float(mask.max()))).float() if float(mask.max()) > 0 else torch.zeros_like(mask)
    levels = [inside - _grown(1.0 - inside, ring).clamp(max=1.0) * inside, inside]  # the mask without its border, the mask
    levels += [_grown(inside, ring * d) for d in range(1, count)]
    means = []
    for inner, outer in zip(levels, levels[1:]):
        band = (outer - inner).clamp_min(0.0)
        total = float(band.sum())
        means.append(float((class_map * band).sum()) / total if total else float("nan"))
    return means


def edge_profile(class_map: torch.Tensor, mask: torch.Tensor, ring: int = 1) -> float:
    """The EDGE_PROFILE-weighted ring means (empty rings count 0): ``boundary`` and ``overshoot``
    are how far it lies above / below EDGE_CLEAN, floored at 0 (see the module doc)."""
    means = np.nan_to_num(ring_means(class_map, mask, ring, len(EDGE_PROFILE)), nan=0.0)
    return float(np.dot(EDGE_PROFILE, means))


def _local_map(class_map: torch.Tensor, box: Tuple[int, int, int, int], pad: int) -> torch.Tensor:
    """The map min-max normalised within the box grown by ``pad`` pixels a side, and 0 outside it:
    the class's evidence around one region, on the region's own scale."""
    top, bottom, left, right = box
    height, width = class_map.shape
    top, left, bottom, right = max(0, top - pad), max(0, left - pad), min(height, bottom + pad), min(width, right + pad)
    window = class_map[top:bottom, left:right]
    local = torch.zeros_like(class_map)
    local[top:bottom, left:right] = (window - window.min()) / (window.max() - window.min()).clamp_min(1e-6)
    return local


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
    review = MaskReview(np.full(len(labels), np.nan), np.full(len(labels), np.nan),
                        {name: np.full(len(labels), np.nan) for name in COMPONENTS}, [None] * len(labels))
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
        class_dice = pairwise_dice(maps, grid_masks).cpu().numpy()
        column = {index: k for k, index in enumerate(classes)}
        own = np.array([column.get(int(c), -1) for c in valid_labels], dtype=int)
        located = localisation(maps[np.clip(own, 0, None)], grid_masks, backbone.grid_size)
    present = sorted({column[int(c)] for c in valid_labels if c >= 0})
    rows = np.flatnonzero(prepared.valid)
    components = {"wrong_object": wrong_object(class_dice, own, present),
                  **{name: np.where(own >= 0, values, np.nan) for name, values in located.items()},
                  "infidelity": np.where(own >= 0, 1.0 - np.asarray(inversion_dice, dtype=np.float64)[rows], np.nan)}
    scores, reasons = mask_mistakenness(components)
    review.mask_mistakenness[rows] = scores
    for name in COMPONENTS:
        review.components[name][rows] = components[name]
    for row, reason in zip(rows, reasons):
        review.reasons[row] = reason
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
