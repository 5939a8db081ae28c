"""MaskInverter.invert_many: the masks of several images in one chunk give what per-image invert gives."""

import numpy as np
import pytest
import torch

from fiftyone_maskinversion import InputError, MaskInverter
from fiftyone_maskinversion.core import inversion

# Bounds between invert_many and per-image invert, from the spread measured on an AMD EPYC (2 cores) with
# torch.set_num_threads(1) and (2), both tiny models, blocks None and [0, -1], 10 iterations:
# invert_many vs invert: embeddings |diff| <= 1.1e-5, 1 - cosine <= 1.2e-7, heatmaps <= 2.2e-6, Dice and
# losses <= 1.8e-7, IoU 0; invert vs invert with 1 and 2 threads: embeddings <= 9.5e-6, heatmaps <= 2.4e-6.
# Heatmaps are min-max normalised, so rounding grows where a map is flat: two mathematically equal
# direct computations (one mask per chunk vs 40 per chunk) differed by up to 2.3e-4 here and 2.7e-4 on
# another AMD machine; the heatmap bound keeps a 4x margin over that.
EMBEDDING_ATOL = 1e-4
COSINE_GAP = 1e-6
HEATMAP_ATOL = 1e-3
SCORE_ATOL = 1e-5
# IoU thresholds the maps at 0.5: measured equal; a single pixel crossing 0.5 in a union of >= 100 pixels
# (every mask below covers at least 10 x 10 pixels of the model grid) moves it by at most 1e-2.
IOU_ATOL = 1e-2


def images_with_masks(seed=0):
    """Five images of different sizes with 3, 0, 5, 1 and 4 rectangles, each followed by an empty mask
    (so the second image has no valid mask at all)."""
    rng = np.random.default_rng(seed)
    items = []
    for count, height, width in [(3, 70, 90), (0, 50, 50), (5, 64, 64), (1, 80, 60), (4, 48, 100)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        masks = np.zeros((count + 1, height, width), dtype=bool)
        for mask in masks[:count]:
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[top: top + rng.integers(height // 4, height // 2), left: left + rng.integers(width // 4, width // 2)] = True
        items.append((image, masks))
    return items


def assert_same_results(many, single, cosine_gap=COSINE_GAP, close=True):
    """Same valid rows, errors and NaN rows; embeddings within ``cosine_gap`` of 1 in cosine and, if
    ``close``, every output within the bounds above."""
    assert len(many) == len(single)
    for got, expected in zip(many, single):
        np.testing.assert_array_equal(got.valid, expected.valid)
        assert got.errors == expected.errors
        assert (got.image_embedding is None) == (expected.image_embedding is None)
        rows = expected.valid
        for name in ("embeddings", "heatmaps", "dice", "iou"):
            assert np.isnan(getattr(got, name)[~rows]).all()
        assert np.isnan(got.loss_history[:, ~rows]).all()
        a, b = got.embeddings[rows], expected.embeddings[rows]
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert (1 - cosine <= cosine_gap).all(), 1 - cosine
        if not close:
            continue
        if rows.any():
            np.testing.assert_allclose(got.image_embedding, expected.image_embedding, rtol=0, atol=EMBEDDING_ATOL)
        np.testing.assert_allclose(a, b, rtol=0, atol=EMBEDDING_ATOL)
        np.testing.assert_allclose(got.heatmaps[rows], expected.heatmaps[rows], rtol=0, atol=HEATMAP_ATOL)
        np.testing.assert_allclose(got.dice[rows], expected.dice[rows], rtol=0, atol=SCORE_ATOL)
        np.testing.assert_allclose(got.loss_history[:, rows], expected.loss_history[:, rows], rtol=0, atol=SCORE_ATOL)
        np.testing.assert_allclose(got.iou[rows], expected.iou[rows], rtol=0, atol=IOU_ATOL)


def engines_built(monkeypatch):
    """Record the number of images of every engine the inverter builds."""
    sizes = []
    make = inversion.make_engine

    def recording(name, backbone, states, precision="fp32"):
        sizes.append(len(states))
        return make(name, backbone, states, precision)

    monkeypatch.setattr(inversion, "make_engine", recording)
    return sizes


@pytest.mark.parametrize("model", ["tiny", "tiny_ls"])
@pytest.mark.parametrize("blocks", [None, [0, -1]])
def test_invert_many_equals_per_image_invert(model, blocks, request, monkeypatch):
    backbone = request.getfixturevalue(model)
    items = images_with_masks()
    inverter = MaskInverter(backbone, iterations=10, lr=0.5, blocks=blocks, precision="fp32")
    single = [inverter.invert(image, masks) for image, masks in items]
    sizes = engines_built(monkeypatch)
    many = inverter.invert_many(items)
    assert sizes == [4]  # the four images with valid masks shared one chunk
    assert [r.valid.sum() for r in many] == [3, 0, 5, 1, 4] and not many[1].valid.any()
    assert many[0].errors[-1] == "empty mask: no pixel is set"
    assert_same_results(many, single)


@pytest.mark.parametrize("model", ["tiny", "tiny_ls"])
def test_invert_many_in_bf16_mixed_precision(model, request):
    """bf16 operands round each mask's q the same way in both paths; only the fp32 accumulation order
    differs. Measured (1 and 2 threads, blocks [0, -1]): 1 - cosine <= 6e-8, embeddings <= 9.6e-5,
    heatmaps <= 3.1e-5; bounds: the fp32 cosine gap and heatmap bound above."""
    backbone = request.getfixturevalue(model)
    items = images_with_masks()
    inverter = MaskInverter(backbone, iterations=10, blocks=[0, -1], precision="bf16-mixed")
    single = [inverter.invert(image, masks) for image, masks in items]
    many = inverter.invert_many(items)
    assert_same_results(many, single, close=False)
    for got, expected in zip(many, single):
        np.testing.assert_allclose(got.heatmaps[got.valid], expected.heatmaps[expected.valid], rtol=0, atol=HEATMAP_ATOL)


def test_invert_many_with_the_autograd_engine(tiny_ls, monkeypatch):
    items = images_with_masks(seed=1)[:3]
    inverter = MaskInverter(tiny_ls, iterations=5, lr=0.5, engine="autograd")
    single = [inverter.invert(image, masks) for image, masks in items]
    sizes = engines_built(monkeypatch)
    many = inverter.invert_many(items)
    assert sizes == [2]
    assert_same_results(many, single)


def test_small_memory_splits_images_over_chunks_without_changing_results(tiny):
    items = images_with_masks(seed=2)
    inverter = MaskInverter(tiny, iterations=5, memory_budget=1)  # one mask per chunk, one image per group
    roomy = MaskInverter(tiny, iterations=5)
    assert_same_results(inverter.invert_many(items), roomy.invert_many(items))


def test_image_groups_follow_the_memory_plan(tiny, monkeypatch):
    """Hand-computed with 10 bytes per mask and 100 per image in 350 bytes: 3 masks + 0 masks (230 bytes)
    fit, adding 5 more (380) does not; 5 + 1 (260) fit; an image of 40 masks (>= the linear map's batch)
    goes alone, and the next image starts a new group."""
    monkeypatch.setattr(inversion, "chunk_memory", lambda engine, backbone, blocks, images: (10, 100))
    inverter = MaskInverter(tiny, memory_budget=350)
    assert inverter._image_groups([3, 0, 5, 1, 40, 2, 2]) == [[0, 1], [2, 3], [4], [5, 6]]


def test_chunk_memory_covers_what_the_engine_holds(tiny_ls):
    """The planner's per-image estimate is at least the tensors an image's state and fast-engine constants
    hold, and its per-mask estimate is the engine's own."""
    from fiftyone_maskinversion.core.block_state import capture_image_state
    from fiftyone_maskinversion.core.legrad import chunk_memory, make_engine

    blocks = [0, 2]
    per_mask, per_image = chunk_memory("fast", tiny_ls, blocks, images=2)
    states = [capture_image_state(tiny_ls, tiny_ls.pixels(image), blocks) for image, _ in images_with_masks()[:2]]
    engine = make_engine("fast", tiny_ls, states)
    assert per_mask == engine.bytes_per_query()
    held = sum(t.numel() * 4 for b in states[0].blocks for t in (b.inputs, b.attn, b.values, b.hidden, b.outputs))
    for block in engine.blocks:  # one image's share of the stacked constants
        constants = (block.act_grad, block.xhat_out, block.inv_sigma, block.values, block.pool_jacobian,
                     block.a1_weight, block.a2_weight)
        held += sum(t.numel() * 4 // block.images for t in constants)
    assert per_image >= held


@pytest.mark.parametrize("model", ["tiny", "tiny_ls"])
def test_batched_forward(model, request):
    """One forward for all images of a chunk: its rounding differs from the one-image forward (measured
    <= 4.8e-7 in the block outputs) and ten AdamW steps can amplify that: min cosine to per-image results
    measured 0.99983 (tiny_ls, blocks [0, -1]); the bound keeps a 6x margin on 1 - cosine."""
    backbone = request.getfixturevalue(model)
    items = images_with_masks(seed=3)
    inverter = MaskInverter(backbone, iterations=10, blocks=[0, -1], precision="fp32")
    calls = []
    handle = backbone.visual.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    try:
        batched = inverter.invert_many(items, batch_forward=True)
        assert calls == [4]
        calls.clear()
        single = [inverter.invert(image, masks) for image, masks in items]
        assert calls == [1, 1, 1, 1]  # one forward per image with a valid mask
    finally:
        handle.remove()
    assert_same_results(batched, single, cosine_gap=1e-3, close=False)


def test_every_input_is_checked_before_any_work(tiny):
    items = images_with_masks()
    bad = np.full((1, 50, 50), 0.5)  # not binary
    calls = []
    handle = tiny.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match="not binary"):
            MaskInverter(tiny, iterations=2).invert_many(items[:3] + [(items[1][0], bad)])
    finally:
        handle.remove()
    assert not calls
    assert MaskInverter(tiny, iterations=2).invert_many([]) == []


def test_groups_on_cuda_are_planned_from_memory_pytorch_can_use(tiny, monkeypatch):
    """mem_get_info excludes PyTorch's own cache: as the cache grows by what it frees on the device, the
    memory a chunk may use (and so the chunk and the linear-map decision) must not change."""
    import dataclasses

    from fiftyone_maskinversion.core.block_state import capture_image_state
    from fiftyone_maskinversion.core.legrad import make_engine

    gib = 1 << 30
    memory = {"free": 10 * gib, "reserved": 2 * gib, "allocated": 1 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory["free"], 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: memory["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: memory["allocated"])
    fake_gpu = dataclasses.replace(tiny, device=torch.device("cuda"))
    inverter = MaskInverter(fake_gpu, precision="fp32")
    before = inverter._work_memory()
    assert before == int(11 * gib * inversion.CUDA_FREE_MEMORY_SHARE)
    memory.update(free=7 * gib, reserved=5 * gib)  # PyTorch's cache took 3 GiB more, all of it unallocated
    after = inverter._work_memory()
    assert after == before
    state = capture_image_state(tiny, tiny.pixels(images_with_masks()[0][0]), [tiny.num_blocks - 1])
    plans = [make_engine("fast", tiny, state).plan(40, 21, work) for work in (before, after)]
    assert plans[0] == plans[1]
