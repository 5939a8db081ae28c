"""LeGrad maps of both engines against the plain per-query autograd reference in tests/reference.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiftyone_maskinversion import legrad_maps
from fiftyone_maskinversion.core.block_state import capture_image_state

from . import reference
from ..helpers import make_backbone


@pytest.mark.parametrize("name", ["mi-test-tiny", "mi-test-tiny-ls"])
@pytest.mark.parametrize("blocks", [None, [-2, -1], [0]])
@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_maps_match_plain_autograd_reference(name, blocks, engine, scene):
    backbone = make_backbone(name)
    image, _ = scene
    queries = F.normalize(torch.randn(4, backbone.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    maps = legrad_maps(backbone, image, queries, blocks=blocks, engine=engine)

    pixels = backbone.pixels(image)
    explained = [i % backbone.num_blocks for i in (blocks or [-1])]
    inputs = {i: reference.block_input(backbone.model, pixels, i) for i in explained}
    expected = np.stack(
        [
            reference.legrad_map(backbone.model, inputs, q, explained, backbone.patch_size).detach().numpy()
            for q in queries
        ]
    )
    assert maps.shape == (4, backbone.image_size, backbone.image_size)
    np.testing.assert_allclose(maps, expected, atol=2e-5)


def test_reference_block_reproduces_the_model(tiny_ls, scene):
    """The reference re-runs a block from raw weights; it must equal what the model computes."""
    pixels = tiny_ls.pixels(scene[0])
    captured = {}
    block = tiny_ls.visual.transformer.resblocks[-1]

    def keep(_module, _args, out):
        captured["z"] = out[0]

    handle = block.register_forward_hook(keep)
    x = reference.block_input(tiny_ls.model, pixels, -1)
    handle.remove()
    _, z = reference.run_block(block, x)
    torch.testing.assert_close(z, captured["z"], atol=1e-5, rtol=1e-5)
    state = capture_image_state(tiny_ls, pixels, [tiny_ls.num_blocks - 1])
    torch.testing.assert_close(state.blocks[0].outputs, captured["z"], atol=1e-5, rtol=1e-5)


def test_maps_are_min_max_normalised_and_query_dependent(tiny, scene):
    queries = F.normalize(torch.randn(3, tiny.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    maps = legrad_maps(tiny, scene[0], queries)
    assert np.allclose(maps.reshape(3, -1).min(axis=1), 0) and np.allclose(maps.reshape(3, -1).max(axis=1), 1)
    assert np.abs(maps[0] - maps[1]).max() > 0.05


def test_query_norm_does_not_matter(tiny, scene):
    query = torch.randn(1, tiny.embed_dim, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(legrad_maps(tiny, scene[0], query), legrad_maps(tiny, scene[0], 7 * query), atol=1e-6)


def test_bad_queries_and_blocks(tiny, scene):
    with pytest.raises(ValueError, match="queries must be Q x 32"):
        legrad_maps(tiny, scene[0], torch.ones(2, 5))
    with pytest.raises(ValueError, match="block 5 does not exist"):
        legrad_maps(tiny, scene[0], torch.ones(1, 32), blocks=[5])
    with pytest.raises(ValueError, match="unknown engine"):
        legrad_maps(tiny, scene[0], torch.ones(1, 32), engine="magic")


def test_the_folded_weight_follows_weights_changed_in_place(tiny, scene):
    image, _ = scene
    queries = tiny.encode_text(["a photo of a cat"])
    before = legrad_maps(tiny, image, queries)
    other = make_backbone(seed=9)
    tiny.model.load_state_dict(other.model.state_dict())  # in place: same modules, new weights
    np.testing.assert_allclose(legrad_maps(tiny, image, queries), legrad_maps(other, image, queries), atol=1e-5)
    assert np.abs(before - legrad_maps(tiny, image, queries)).max() > 1e-3
