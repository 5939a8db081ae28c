"""The mask review (core.badmask) and the corruptions of the badmask task, against hand-computed cases
and an independent computation from the public LeGrad maps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiftyone_maskinversion import MaskInverter, legrad_maps
from scipy import ndimage

from fiftyone_maskinversion.core.badmask import (
    COMPONENTS,
    EDGE_CLEAN,
    EDGE_PROFILE,
    FITS_BELOW,
    HOT,
    REASONS,
    RESIZE,
    SHIFTS,
    WEIGHTS,
    MissingRegion,
    confirmed,
    edge_profile,
    localisation,
    mask_mistakenness,
    missing_regions,
    pairwise_dice,
    review_masks,
    ring_means,
    wrong_object,
)
from fiftyone_maskinversion.core.inputs import load_rgb, prepare_masks
from fiftyone_maskinversion.core.metrics import soft_dice_loss
from fiftyone_maskinversion.core.zeroshot import class_probabilities
from fiftyone_maskinversion.evaluation.badmask import corrupt, dilated, eroded, shifted


def test_wrong_object_by_hand():
    class_dice = np.array([[0.8, 0.3, 0.9], [0.2, 0.9, 0.0], [0.5, 0.5, 0.5]])
    found = wrong_object(class_dice, np.array([0, 0, -1]), present=[0, 1])
    # column 2 is mapped but not annotated in the image: it never counts as "another class"
    assert found[:2] == pytest.approx([0.0, 0.9 - 0.2]) and np.isnan(found[2])  # 0: its own class fits best
    assert wrong_object(np.array([[0.6]]), np.array([0]), present=[0])[0] == 0  # alone in its image


def test_the_score_is_the_weighted_sum_and_the_reason_its_largest_part():
    components = {name: np.array([0.0, 0.0, 0.0, 0.0, np.nan]) for name in COMPONENTS}
    components["wrong_object"][:2] = [0.6, 0.5 * FITS_BELOW]  # mask 1: another class fits a little better
    components["shifted"][:2] = [1.0, 0.5 / WEIGHTS["shifted"]]  # weighted 0.5: the largest part of mask 1
    components["too_small"][1] = 0.2 / WEIGHTS["too_small"]
    components["too_large"][2] = 0.5 * FITS_BELOW / WEIGHTS["too_large"]  # below the "fits" line
    components["infidelity"][:4] = 0.9  # never a reason
    scores, reasons = mask_mistakenness(components)
    inf = 0.9 * WEIGHTS["infidelity"]
    expected = [0.6 + WEIGHTS["shifted"] + inf, 0.5 * FITS_BELOW + 0.5 + 0.2 + inf, 0.5 * FITS_BELOW + inf, inf]
    assert scores[:4] == pytest.approx(expected) and np.isnan(scores[4])
    # mask 0: a wrong object comes first, whatever else is large
    assert reasons == [REASONS["wrong_object"], REASONS["shifted"], "fits", "fits", None]


def test_pairwise_dice_equals_the_loss_minimised_by_the_inversion():
    generator = torch.Generator().manual_seed(3)
    maps, masks = torch.rand(3, 9, 7, generator=generator), (torch.rand(4, 9, 7, generator=generator) > 0.5).float()
    expected = torch.tensor([[1 - soft_dice_loss(maps[k:k + 1], masks[n:n + 1]).item() for k in range(3)]
                             for n in range(4)])
    torch.testing.assert_close(pairwise_dice(maps, masks), expected)


def _square(top, left, side, size=64):
    out = torch.zeros(size, size)
    out[top:top + side, left:left + side] = 1.0
    return out


def _dice(overlap, map_sum, mask_sum):
    return (2 * overlap + 1) / (map_sum + mask_sum + 1)


def test_localisation_by_hand():
    """The class's evidence is exactly a 16 px square; four masks of it: right, moved, too small, too large."""
    evidence = _square(20, 20, 16)
    masks = torch.stack([_square(20, 20, 16), _square(20, 28, 16), _square(24, 24, 8), _square(16, 16, 24)])
    found = localisation(evidence.expand(4, -1, -1), masks)
    # right: nothing fits better (the shrunk and grown masks are worse)
    assert found["shifted"][0] == 0 and found["too_small"][0] < 0 and found["too_large"][0] < 0
    # moved 8 px (half its width) to the right: moving it back (a quarter-step move) fits exactly
    assert found["shifted"][1] == pytest.approx(1 - _dice(16 * 8, 256, 256))
    # 8 px in the middle: grown by round(0.2 * 8) = 2 px it covers 12 x 12 pixels of the evidence
    assert RESIZE == 0.2 and found["too_small"][2] == pytest.approx(_dice(144, 256, 144) - _dice(64, 256, 64))
    # 24 px around it: shrunk by round(0.2 * 24) = 5 px it is 14 x 14 inside the evidence
    assert found["too_large"][3] == pytest.approx(_dice(196, 256, 196) - _dice(256, 256, 576))
    assert found["too_small"][3] < 0 and found["too_large"][2] < 0
    # boundary: the right mask's border is hot and everything outside cold: below the clean median, 0
    assert found["boundary"][0] == 0 and found["boundary"][3] == 0  # too large: its border is already cold
    # 8 px in the middle: its border and rings 1-4 (1 px each) lie on the evidence, rings 5 and 6 off it
    assert ring_means(evidence, masks[2], 1, 7) == pytest.approx([1, 1, 1, 1, 1, 0, 0])
    assert found["boundary"][2] == pytest.approx(sum(EDGE_PROFILE[:5]) - EDGE_CLEAN)
    # rings two pixels wide: ring 2 (3-4 px out) is the last on the evidence
    assert ring_means(evidence, masks[2], 2, 4) == pytest.approx([1, 1, 1, 0])
    # overshoot: the too-large mask's border and all rings out of it are cold, its profile 0: the most
    # it can be; the right mask's hot border (ring 0) leaves it a little; the too-small mask none
    assert found["overshoot"][3] == pytest.approx(EDGE_CLEAN) and found["overshoot"][2] == 0
    assert found["overshoot"][0] == pytest.approx(EDGE_CLEAN - EDGE_PROFILE[0])
    assert found["overshoot"][0] < found["overshoot"][3]


def test_boundary_ranks_an_eroded_mask_above_the_right_one_on_a_blurred_map():
    """A smooth evidence blob (a Gaussian-blurred 16 px square, as LeGrad maps are smooth): the mask
    eroded to its inner half gets a positive boundary, the right mask none."""
    evidence = torch.from_numpy(ndimage.gaussian_filter(_square(20, 20, 16).numpy(), 3.0))
    evidence = evidence / evidence.max()
    found = localisation(evidence.expand(2, -1, -1), torch.stack([_square(20, 20, 16), _square(24, 24, 8)]))
    assert found["boundary"][1] > 0.1 and found["boundary"][0] < found["boundary"][1]


def _moved(mask, dy, dx):
    out = np.zeros_like(mask)
    rows, cols = np.nonzero(np.ones_like(mask, dtype=bool))
    keep = (rows + dy >= 0) & (rows + dy < mask.shape[0]) & (cols + dx >= 0) & (cols + dx < mask.shape[1])
    out[rows[keep] + dy, cols[keep] + dx] = mask[rows[keep], cols[keep]]
    return out


def _ring_reference(class_map, mask, ring, count):
    """Mean map values on the rings of the module doc (square neighbourhoods, numpy and scipy)."""
    inside = (mask >= 0.5).astype(np.float64)
    levels = [ndimage.minimum_filter(inside, size=2 * ring + 1, mode="constant", cval=np.inf), inside]
    levels += [ndimage.maximum_filter(inside, size=2 * ring * d + 1, mode="constant", cval=-np.inf) for d in range(1, count)]
    return [(class_map * (b - a)).sum() / (b - a).sum() for a, b in zip(levels, levels[1:])]


def _block_mean(image, size):
    """The image (S x S, S a multiple of size) averaged over blocks: size x size."""
    factor = image.shape[-1] // size
    return image.reshape(size, factor, size, factor).mean(axis=(1, 3))


def _localisation_reference(class_map, mask, grid=None):
    """The module doc's definition, written again with numpy and scipy (float64); the ring profile at 8
    pixels a patch (``grid`` patches a side) with one-pixel rings, or on the map as it is (no grid)."""
    ys, xs = np.nonzero(mask >= 0.5)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    extent = max(height, width)
    shifts = [_soft_dice(class_map, _moved(mask, round(fy * height), round(fx * width))) for fy in SHIFTS for fx in SHIFTS]
    top, bottom = max(0, ys.min() - extent), min(mask.shape[0], ys.max() + 1 + extent)
    left, right = max(0, xs.min() - extent), min(mask.shape[1], xs.max() + 1 + extent)
    window = class_map[top:bottom, left:right]
    local = np.zeros_like(class_map)
    local[top:bottom, left:right] = (window - window.min()) / (window.max() - window.min())
    side = 2 * max(1, round(RESIZE * extent)) + 1
    grown = ndimage.maximum_filter(mask, size=side, mode="constant", cval=-np.inf)
    shrunk = ndimage.minimum_filter(mask, size=side, mode="constant", cval=np.inf)
    base = _soft_dice(local, mask)
    edge_map, edge_mask = (_block_mean(class_map, 8 * grid), _block_mean(mask, 8 * grid)) if grid else (class_map, mask)
    edge = float(np.dot(EDGE_PROFILE, _ring_reference(edge_map, edge_mask, 1, len(EDGE_PROFILE))))
    return {"shifted": max(shifts) - _soft_dice(class_map, mask),
            "too_small": _soft_dice(local, grown) - base, "too_large": _soft_dice(local, shrunk) - base,
            "boundary": max(0.0, edge - EDGE_CLEAN), "overshoot": max(0.0, EDGE_CLEAN - edge)}


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

    maps = legrad_maps(tiny, image, text, blocks=[-2, -1]).astype(np.float64)  # its own forward, the public entry
    grid = prepare_masks(masks, masks.shape[1:], tiny.image_size).grid_masks.numpy().astype(np.float64)
    dice = np.array([[_soft_dice(maps[c], m) for c in range(4)] for m in grid])
    for row, label in enumerate(labels[:2]):
        expected = _localisation_reference(maps[label], grid[row], tiny.grid_size)
        expected["wrong_object"] = max(0, dice[row, [c for c in (0, 2) if c != label]].max() - dice[row, label])
        expected["infidelity"] = 1 - inversion_dice[row]
        # float32 maps and products against this float64 reference: 1e-5 leaves room for the rounding
        # differences between CPUs (largest difference measured: 2.1e-7, on this AMD EPYC; Intel rounds differently)
        for name in COMPONENTS:
            assert review.components[name][row] == pytest.approx(expected[name], abs=1e-5), name
        assert review.mask_mistakenness[row] == pytest.approx(sum(WEIGHTS[n] * expected[n] for n in COMPONENTS), abs=1e-5)
        assert review.class_dice[row] == pytest.approx(dice[row, label], abs=1e-5)
        assert review.reasons[row] in [*REASONS.values(), "fits"]
    assert np.isnan(review.mask_mistakenness[2]) and review.missing == [] and review.reasons[2] is None
    assert all(np.isnan(review.components[name][2]) for name in COMPONENTS)


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
    grown = dilated(mask)
    assert grown.sum() >= 2 * mask.sum() and (grown & mask).sum() == mask.sum()
    assert dilated(np.ones((4, 4), bool)).all()  # a mask that fills the image stays as it is
    _, kinds = corrupt([mask, other], np.random.default_rng(3), noise=1.0, mix={"dilate": 1.0})
    assert kinds == ["dilate", "dilate"]
    single, kinds = corrupt([mask] * 1, np.random.default_rng(0), noise=1.0)
    assert kinds[0] != "swap"
    untouched, kinds = corrupt([mask, other], np.random.default_rng(0), noise=0.0)
    assert kinds == ["ok", "ok"] and (untouched[0] == mask).all()


def test_a_large_boundary_part_reads_too_small():
    components = {name: np.zeros(2) for name in COMPONENTS}
    components["boundary"][:] = [2 * FITS_BELOW / WEIGHTS["boundary"], 0.5 * FITS_BELOW / WEIGHTS["boundary"]]
    scores, reasons = mask_mistakenness(components)
    assert scores == pytest.approx([2 * FITS_BELOW, 0.5 * FITS_BELOW]) and reasons == ["too small", "fits"]


def test_rings_of_a_tiny_pooled_mask_start_at_its_fullest_cells():
    """A mask pooled below one cell (values < 0.5 everywhere) has rings around its fullest cells."""
    evidence = _square(20, 20, 16)
    tiny = torch.zeros(64, 64)
    tiny[27, 27] = 0.25
    tiny[27, 28] = 0.1
    full = torch.zeros(64, 64)
    full[27, 27] = 1.0
    assert ring_means(evidence, tiny, 1, 7) == pytest.approx(ring_means(evidence, full, 1, 7))
    assert np.isnan(ring_means(evidence, torch.zeros(64, 64), 1, 3)).all()


def test_boundary_rings_are_an_eighth_of_a_patch_at_the_default_models_geometry():
    """ViT-B-16 at 448 px (28 patches of 16 px): the rings are 2 px wide there, so a scene drawn at 448 px has the
    boundary of the same scene drawn at 224 px (8 px a patch) with one-pixel rings, not the boundary of its
    quarter-patch rings (the 112 px the other parts search on)."""
    mask = _square(80, 80, 64, size=224)
    evidence = _square(77, 77, 70, size=224)  # hot on the mask and 3 px (3/8 of a patch) past its border
    twice = lambda image: image.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    expected = edge_profile(evidence, mask) - EDGE_CLEAN
    assert expected == pytest.approx(0.2 + 0.18 + 0.16 + 0.1 - EDGE_CLEAN) and expected > 0  # rings 0-3 hot, 4-6 cold
    found = localisation(twice(evidence)[None], twice(mask)[None], grid_size=28)["boundary"][0]
    assert found == pytest.approx(expected, abs=1e-6)
    quarter = edge_profile(F.avg_pool2d(evidence[None, None], 2)[0, 0], F.avg_pool2d(mask[None, None], 2)[0, 0]) \
        - EDGE_CLEAN
    assert abs(quarter - expected) > 0.1  # the scene tells the two ring widths apart


def test_a_large_overshoot_part_reads_too_large():
    components = {name: np.zeros(2) for name in COMPONENTS}
    components["overshoot"][:] = [2 * FITS_BELOW / WEIGHTS["overshoot"], 0.5 * FITS_BELOW / WEIGHTS["overshoot"]]
    scores, reasons = mask_mistakenness(components)
    assert scores == pytest.approx([2 * FITS_BELOW, 0.5 * FITS_BELOW]) and reasons == ["too large", "fits"]
