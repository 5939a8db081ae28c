"""Loading backbones: local checkpoints, pretrained tags offline, unsupported models."""

import time

import numpy as np
import open_clip
import pytest
import torch

from fiftyone_maskinversion import WeightsUnavailableError, load_backbone

from ..helpers import make_backbone, openai_vit_b16_in_private_hub_cache


def test_checkpoint_round_trip(tmp_path, scene):
    original = make_backbone("mi-test-tiny", seed=11)
    path = tmp_path / "weights.pt"
    torch.save(original.model.state_dict(), path)
    torch.manual_seed(99)  # a random init, if it happened, would differ
    loaded = load_backbone("mi-test-tiny", pretrained=str(path), image_size=64, device="cpu")
    for (name, a), (_, b) in zip(original.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(original.encode_image(scene[0]).numpy(), loaded.encode_image(scene[0]).numpy())
    assert loaded.pretrained == str(path)


def test_checkpoint_positional_embeddings_are_interpolated_at_load(tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model("mi-test-tiny", pretrained=None)  # 64 px: 4 x 4 grid
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = load_backbone("mi-test-tiny", pretrained=str(path), image_size=128, device="cpu")
    assert loaded.visual.positional_embedding.shape == (1 + 8 * 8, 64)
    assert loaded.grid_size == 8
    # the class token's positional embedding is carried over unchanged
    assert torch.equal(loaded.visual.positional_embedding[0], model.visual.positional_embedding[0])
    # the model object loaded at its own size is untouched by the loader
    assert model.visual.positional_embedding.shape == (17, 64)


def test_frozen_and_in_eval_mode(tiny):
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_missing_checkpoint_and_unknown_tag():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("mi-test-tiny", pretrained="/no/such/weights.pt", image_size=64)
    with pytest.raises(ValueError, match="neither a pretrained tag"):
        load_backbone("ViT-B-32", pretrained="not-a-tag", image_size=224)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_backbone("ViT-Q-99", pretrained=None)


@pytest.mark.parametrize("how", ["offline flag", "unreachable hub"])
def test_pretrained_tag_without_cached_weights_fails_fast(monkeypatch, tmp_path, how):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached here
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    if how == "offline flag":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("ViT-B-32", pretrained="openai", image_size=224)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "ViT-B-32" in message and "openai" in message and "pretrained='/path/to/" in message


def test_cached_pretrained_weights_are_used_offline(monkeypatch, tmp_path):
    """A tag whose file is already in the hub cache loads with no network at all."""
    from huggingface_hub import constants

    cfg = open_clip.get_pretrained_cfg("mi-test-tiny", "fake") or {}
    assert cfg == {}  # test models have no tags: emulate one by registering a cached hub file
    torch.manual_seed(5)
    model = open_clip.create_model("mi-test-tiny", pretrained=None)
    repo = tmp_path / "models--someone--tiny" / "snapshots" / "abc"
    repo.mkdir(parents=True)
    torch.save(model.state_dict(), repo / "open_clip_pytorch_model.bin")
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "mi-test-tiny", {"fake": {"hf_hub": "someone/tiny/"}})
    loaded = load_backbone("mi-test-tiny", pretrained="fake", image_size=64, device="cpu")
    assert torch.equal(loaded.visual.proj, model.visual.proj)


def test_unsupported_image_towers():
    with pytest.raises(ValueError, match="no open_clip ViT image tower"):
        load_backbone("RN50", pretrained=None, image_size=224)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        load_backbone("mi-test-tiny", pretrained=None, image_size=72)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_openai_tag_is_built_with_quick_gelu_as_its_weights_were_trained(monkeypatch, tmp_path):
    """The tag's file in a private hub cache: loading by tag equals open_clip's ViT-B-16-quickgelu on the
    same file, and differs from the GELU build a plain file path would give."""
    checkpoint = openai_vit_b16_in_private_hub_cache(monkeypatch, tmp_path)

    by_tag = load_backbone("ViT-B-16", pretrained="openai", image_size=224, device="cpu")
    quick = load_backbone("ViT-B-16-quickgelu", pretrained=str(checkpoint), image_size=224, device="cpu")
    plain = load_backbone("ViT-B-16", pretrained=str(checkpoint), image_size=224, device="cpu")
    assert (by_tag.activation, quick.activation, plain.activation) == ("quick_gelu", "quick_gelu", "gelu")
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    texts = ["a photo of a dog", "a red circle"]
    assert _relative_error(by_tag.encode_image(image), quick.encode_image(image)) <= 1e-5
    assert _relative_error(by_tag.encode_text(texts), quick.encode_text(texts)) <= 1e-5
    assert _relative_error(plain.encode_image(image), quick.encode_image(image)) > 1e-3  # the check can fail
    assert by_tag.weights_id == quick.weights_id != plain.weights_id
    forced = load_backbone("ViT-B-16", pretrained=str(checkpoint), image_size=224, device="cpu", quick_gelu=True)
    assert _relative_error(forced.encode_image(image), quick.encode_image(image)) <= 1e-5
