"""Baseline region embeddings: properties each method must have, independent of any training."""

import numpy as np
import pytest

from fiftyone_maskinversion.evaluation.baselines import METHODS, region_embeddings


def test_every_method_returns_one_row_per_mask_and_nan_for_empty(tiny, scene):
    image, masks = scene
    with_empty = np.concatenate([masks, np.zeros_like(masks[:1])])
    for method in METHODS:
        kwargs = {"iterations": 2} if method == "maskinversion" else {}
        emb = region_embeddings(tiny, image, with_empty, method=method, **kwargs)
        assert emb.shape == (4, tiny.embed_dim), method
        assert np.isfinite(emb[:3]).all() and np.isnan(emb[3]).all(), method


def test_clip_is_the_image_embedding(tiny, scene):
    image, masks = scene
    emb = region_embeddings(tiny, image, masks, method="clip")
    np.testing.assert_allclose(emb, np.repeat(tiny.encode_image(image).numpy(), 3, 0), atol=1e-5)


def test_crop_is_the_embedding_of_the_box(tiny, scene):
    image, masks = scene
    emb = region_embeddings(tiny, image, masks[:1], method="crop")
    box = image[5:40, 10:50]  # masks[0] is the rectangle rows 5..39, cols 10..49
    np.testing.assert_allclose(emb[0], tiny.encode_image(box).numpy()[0], atol=1e-5)


def test_whole_image_mask_reduces_to_the_image_for_context_methods(tiny, scene):
    image, _ = scene
    full = np.ones((1,) + image.shape[:2], bool)
    reference = tiny.encode_image(image).numpy()
    for method in ("token_mask", "blur", "masked_crop", "crop"):
        np.testing.assert_allclose(region_embeddings(tiny, image, full, method=method), reference, atol=1e-4, err_msg=method)
    assert np.abs(region_embeddings(tiny, image, full, method="red_circle") - reference).max() > 1e-3


def test_token_mask_depends_on_the_mask(tiny, scene):
    # (it does NOT ignore outside pixels: the blocks before the masked ones mix every token)
    image, masks = scene
    emb = region_embeddings(tiny, image, masks, method="token_mask")
    assert np.abs(emb[0] - emb[1]).max() > 1e-4


def test_masked_crop_ignores_pixels_outside_the_mask(tiny, scene):
    image, masks = scene
    mask = masks[0].copy()  # an L shape: its box (rows 5..39, cols 10..49) holds pixels outside the mask
    mask[5:20, 30:50] = False
    other = image.copy()
    other[~mask] = 255 - other[~mask]  # every pixel outside the mask changed
    before = region_embeddings(tiny, image, mask[None], method="masked_crop")
    after = region_embeddings(tiny, other, mask[None], method="masked_crop")
    np.testing.assert_allclose(before, after, atol=1e-6)
    crop_before = region_embeddings(tiny, image, masks[:1], method="crop")
    crop_after = region_embeddings(tiny, other, masks[:1], method="crop")
    assert np.abs(crop_before - crop_after).max() > 1e-3  # the plain crop does see them


def test_unknown_method(tiny, scene):
    with pytest.raises(ValueError, match="unknown method"):
        region_embeddings(tiny, scene[0], scene[1], method="magic")
