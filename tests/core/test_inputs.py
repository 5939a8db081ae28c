"""Images and masks that are not fine: a clear error or the documented conversion, never a silent wrong answer."""

import numpy as np
import pytest
import torch
from PIL import Image

from fiftyone_maskinversion import InputError, MaskInverter


@pytest.fixture
def inverter(tiny):
    return MaskInverter(tiny, iterations=3)


def test_empty_mask_is_skipped_with_a_reason_and_others_are_unchanged(inverter, scene):
    image, masks = scene
    with_empty = np.concatenate([masks[:1], np.zeros_like(masks[:1]), masks[1:]])
    result = inverter.invert(image, with_empty)
    reference = inverter.invert(image, masks)
    assert list(result.valid) == [True, False, True, True]
    assert "empty mask" in result.errors[1]
    assert np.isnan(result.embeddings[1]).all() and np.isnan(result.dice[1])
    np.testing.assert_allclose(result.embeddings[[0, 2, 3]], reference.embeddings, atol=1e-6)


def test_all_empty_masks_need_no_forward(inverter, scene, tiny):
    calls = []
    handle = tiny.visual.register_forward_hook(lambda *_: calls.append(1))
    result = inverter.invert(scene[0], np.zeros((2, 70, 90), dtype=bool))
    handle.remove()
    assert calls == [] and not result.valid.any() and result.embeddings.shape == (2, 32)


def test_no_masks_gives_an_empty_result(inverter, scene):
    result = inverter.invert(scene[0], [])
    assert result.embeddings.shape == (0, 32) and result.heatmaps.shape[0] == 0


def test_all_ones_mask_is_computed(inverter, scene):
    result = inverter.invert(scene[0], np.ones((1, 70, 90), dtype=bool))
    assert result.valid[0] and np.isfinite(result.embeddings).all()


def test_mask_of_the_wrong_size(inverter, scene):
    image, masks = scene
    with pytest.raises(InputError, match=r"mask 1 has shape \(70, 91\), the image is 70x90"):
        inverter.invert(image, [masks[0], np.ones((70, 91), bool)])


def test_non_binary_and_nan_masks(inverter, scene):
    image, masks = scene
    with pytest.raises(InputError, match="mask 0 is not binary .*255"):
        inverter.invert(image, masks.astype(np.uint8) * 255)
    soft = masks.astype(np.float32)
    soft[2, 0, 0] = np.nan
    with pytest.raises(InputError, match="mask 2 contains NaN"):
        inverter.invert(image, soft)
    # 0/1 numbers are binary
    np.testing.assert_allclose(
        inverter.invert(image, masks.astype(np.float64)).embeddings, inverter.invert(image, masks).embeddings
    )


def test_single_hxw_mask_is_rejected(inverter, scene):
    with pytest.raises(InputError, match="wrap it in a list"):
        inverter.invert(scene[0], scene[1][0])


def test_grayscale_rgba_and_16bit_images_are_converted(inverter, scene):
    image, masks = scene
    gray = image[..., 0]
    np.testing.assert_array_equal(
        inverter.invert(gray, masks).embeddings, inverter.invert(np.stack([gray] * 3, -1), masks).embeddings
    )
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(inverter.invert(rgba, masks).embeddings, inverter.invert(image, masks).embeddings)
    deep = image.astype(np.uint16) * 257
    np.testing.assert_array_equal(inverter.invert(deep, masks).embeddings, inverter.invert(image, masks).embeddings)
    np.testing.assert_array_equal(
        inverter.invert(Image.fromarray(image).convert("RGBA"), masks).embeddings,
        inverter.invert(image, masks).embeddings,
    )


def test_image_smaller_than_a_patch(inverter):
    with pytest.raises(InputError, match="smaller than one patch"):
        inverter.invert(np.zeros((10, 40, 3), np.uint8), np.ones((1, 10, 40), bool))


def test_unreadable_and_missing_image_files(inverter, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        inverter.invert(corrupt, np.ones((1, 4, 4), bool))
    with pytest.raises(InputError, match="missing.jpg"):
        inverter.invert(tmp_path / "missing.jpg", np.ones((1, 4, 4), bool))


def test_path_input_equals_array_input(inverter, scene, tmp_path):
    image, masks = scene
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(inverter.invert(path, masks).embeddings, inverter.invert(image, masks).embeddings)


def test_very_large_image(inverter):
    """8000 x 6000: everything happens at the working resolution; the mask is resized, not the work."""
    image = np.zeros((6000, 8000, 3), np.uint8)
    image[:, :4000] = 200
    mask = np.zeros((1, 6000, 8000), bool)
    mask[:, :, :4000] = True
    result = inverter.invert(image, mask)
    small = inverter.invert(np.asarray(Image.fromarray(image).resize((64, 48))), mask[:, ::125, ::125])
    assert result.valid[0] and np.isfinite(result.embeddings).all()
    # same content at another resolution: squashed to the same grid, so (nearly) the same embedding
    cos = (result.embeddings * small.embeddings).sum() / np.linalg.norm(result.embeddings) / np.linalg.norm(small.embeddings)
    assert cos > 0.99


def test_masks_resized_in_batches_equal_each_mask_resized_alone():
    """The batched resize (RESIZE_BATCH masks at a time, empty ones left out) against F.interpolate of
    each mask on its own, for more masks than one batch holds."""
    import torch.nn.functional as F

    from fiftyone_maskinversion.core.inputs import RESIZE_BATCH, prepare_masks

    rng = np.random.default_rng(3)
    masks = rng.random((RESIZE_BATCH + 5, 37, 53)) > 0.6
    masks[4] = False
    prepared = prepare_masks(masks, (37, 53), 24)
    assert prepared.valid.sum() == len(masks) - 1 and not prepared.valid[4]
    expected = [
        F.interpolate(torch.from_numpy(m).float()[None, None], size=(24, 24), mode="bilinear",
                      align_corners=False, antialias=True)[0, 0].clamp(0, 1)
        for m in masks[prepared.valid]
    ]
    torch.testing.assert_close(prepared.grid_masks, torch.stack(expected), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked copies are used on CUDA only")
def test_page_locked_copies_keep_every_value():
    from fiftyone_maskinversion.core.transfer import to_device, to_host

    values = torch.randn(7, 33, 33)
    on_gpu = to_device(values, "cuda")
    assert on_gpu.device.type == "cuda"
    np.testing.assert_array_equal(to_host(on_gpu * 2.0), values.numpy() * 2.0)
