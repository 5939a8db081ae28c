"""The mask review (core.badmask) and the corruptions of the badmask task, against hand-computed cases
and an independent computation from the public LeGrad maps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiftyone_maskinversion import MaskInverter, legrad_maps
from fiftyone_maskinversion.core.badmask import (
    HOT,
    MASK_FIDELITY_WEIGHT,
    MissingRegion,
    confirmed,
    mask_mistakenness,
    missing_regions,
    review_masks,
)
from fiftyone_maskinversion.core.inputs import load_rgb
from fiftyone_maskinversion.core.zeroshot import class_probabilities
from fiftyone_maskinversion.core.inputs import prepare_masks
from fiftyone_maskinversion.evaluation.badmask import corrupt, eroded, shifted


def test_mask_mistakenness_by_hand():
    class_dice = np.array([[0.8, 0.3, 0.9], [0.2, 0.9, 0.0], [0.5, 0.5, 0.5]])
    own = np.array([0, 0, -1])
    scores = mask_mistakenness(class_dice, own, np.array([1.0, 0.5, 0.7]), present=[0, 1])
    # column 2 is mapped but not annotated in the image: it never counts as "another class"
    assert scores[0] == pytest.approx(0.3 - 0.8)
    assert scores[1] == pytest.approx(0.9 - 0.2 + MASK_FIDELITY_WEIGHT * 0.5)
    assert np.isnan(scores[2])  # class not in the vocabulary
    alone = mask_mistakenness(np.array([[0.6]]), np.array([0]), np.array([0.9]), present=[0])
    assert alone[0] == pytest.approx(0.0 - 0.6 + MASK_FIDELITY_WEIGHT * 0.1)


def test_missing_regions_by_hand():
    maps = np.zeros((3, 8, 8))
    maps[0, 0:2, 0:4] = 0.8  # class 3: hot, nothing covers it
    maps[1, 4:8, 4:8] = 1.0  # class 5: hot, covered by an annotated region
    maps[2, 6:8, 0:2] = 0.6  # class 7: hot and uncovered, but the image does not look like it
    covered = np.zeros((8, 8), bool)
    covered[4:8, 3:8] = True
    probs = np.zeros(10)
    probs[[3, 5, 7]] = [0.9, 0.9, 0.1]
    found = missing_regions(maps, [3, 5, 7], probs, covered, min_score=0.2)
    assert len(found) == 1
    assert found[0].class_index == 3 and found[0].box == [0.0, 0.0, 0.5, 0.25]
    assert found[0].score == pytest.approx(0.9 * 0.8)
    assert [m.class_index for m in missing_regions(maps, [3, 5, 7], probs, covered, min_score=0.0)] == [3, 7]
    assert HOT <= 0.6


def _soft_dice(a, b, smooth=1.0):
    return (2 * (a * b).sum() + smooth) / (a.sum() + b.sum() + smooth)


def test_review_masks_equals_an_independent_computation(tiny, scene):
    image, masks = scene
    text = F.normalize(torch.randn(4, tiny.embed_dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    labels = [2, 0, -1]
    inversion_dice = np.array([0.7, 0.2, 0.5])
    review = review_masks(tiny, image, masks, labels, text, inversion_dice, blocks=[-2, -1], min_missing_score=None)

    maps = legrad_maps(tiny, image, text, blocks=[-2, -1])  # its own forward, the public entry point
    grid = prepare_masks(masks, masks.shape[1:], tiny.image_size).grid_masks.numpy()
    dice = np.array([[_soft_dice(maps[c], m) for c in range(4)] for m in grid])
    for row, label in enumerate(labels[:2]):
        other = dice[row, [c for c in (0, 2) if c != label]].max()
        expected = other - dice[row, label] + MASK_FIDELITY_WEIGHT * (1 - inversion_dice[row])
        assert review.mask_mistakenness[row] == pytest.approx(expected, abs=1e-5)
        assert review.class_dice[row] == pytest.approx(dice[row, label], abs=1e-5)
    assert np.isnan(review.mask_mistakenness[2]) and review.missing == []


def test_review_masks_marks_unusable_masks_and_suggests_from_candidates(tiny, scene):
    image, masks = scene
    masks = np.concatenate([masks, np.zeros_like(masks[:1])])  # an empty mask: no score, the others go on
    text = F.normalize(torch.randn(6, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    review = review_masks(tiny, image, masks, [0, 1, 2, 3], text, np.ones(4), min_missing_score=0.0)
    assert np.isfinite(review.mask_mistakenness[:3]).all() and np.isnan(review.mask_mistakenness[3])
    scores = [m.score for m in review.missing]
    assert scores == sorted(scores, reverse=True)
    for region in review.missing:
        assert 0 <= region.class_index < 6 and all(0 <= v <= 1 for v in region.box) and 0 <= region.score <= 1


def test_a_suggestion_is_kept_when_its_boxs_own_embedding_confirms_its_class(tiny, scene):
    image = load_rgb(scene[0])
    text = F.normalize(torch.randn(3, tiny.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    candidates = [MissingRegion(0, [0.0, 0.0, 0.5, 0.5], 0.9), MissingRegion(2, [0.4, 0.2, 0.6, 0.8], 0.3)]
    inverter = MaskInverter(tiny, iterations=2)
    kept = confirmed(inverter, image, [MissingRegion(**vars(c)) for c in candidates], text, least=0.0)
    boxes = np.zeros((2, image.height, image.width), bool)  # the boxes, rasterised here by hand
    boxes[0, :round(0.5 * image.height), :round(0.5 * image.width)] = True
    boxes[1, round(0.2 * image.height):, round(0.4 * image.width):] = True
    probs = class_probabilities(tiny, MaskInverter(tiny, iterations=2).invert(image, boxes).embeddings, text)
    assert [k.confirmation for k in kept] == pytest.approx([probs[0, 0], probs[1, 2]], abs=1e-6)
    threshold = (probs[0, 0] + probs[1, 2]) / 2
    strict = confirmed(inverter, image, [MissingRegion(**vars(c)) for c in candidates], text, least=threshold)
    assert [k.class_index for k in strict] == [0 if probs[0, 0] >= threshold else 2]


def _blob(size=40, box=(10, 10, 22, 26)):
    mask = np.zeros((size, size), bool)
    mask[box[0]:box[2], box[1]:box[3]] = True
    return mask


def test_corruptions_do_what_they_say():
    mask = _blob()
    moved = shifted(mask, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    ys2, xs2 = np.nonzero(moved)
    distance = np.hypot(ys2.mean() - ys.mean(), xs2.mean() - xs.mean())
    assert moved.sum() == mask.sum() and distance == pytest.approx(8, abs=1.0)  # half the extent (16)
    small = eroded(mask)
    assert 0 < small.sum() <= mask.sum() / 2 and not (small & ~mask).any()
    tiny_mask = np.zeros((9, 9), bool)
    tiny_mask[4, 4] = True
    assert eroded(tiny_mask).sum() == 1  # never eroded to nothing

    other = _blob(box=(0, 0, 5, 5))
    masks, kinds = corrupt([mask, other], np.random.default_rng(3), noise=1.0)
    for out, kind, original, partner in zip(masks, kinds, [mask, other], [other, mask]):
        assert kind in ("swap", "shift", "erode")
        if kind == "swap":
            assert (out == partner).all()
    single, kinds = corrupt([mask] * 1, np.random.default_rng(0), noise=1.0)
    assert kinds[0] != "swap"
    untouched, kinds = corrupt([mask, other], np.random.default_rng(0), noise=0.0)
    assert kinds == ["ok", "ok"] and (untouched[0] == mask).all()
