"""Shared fixtures: tiny randomly initialised open_clip ViTs registered under test-only names."""

import json

import numpy as np
import open_clip
import pytest
import torch

from fiftyone_maskinversion import load_backbone

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS = {
    # plain pre-norm ViT blocks with GELU
    "mi-test-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16},
        "text_cfg": TEXT_CFG,
    },
    # QuickGELU (as OpenAI weights use) and LayerScale in every block
    "mi-test-tiny-ls": {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 48,
            "layers": 3,
            "width": 48,
            "head_width": 8,
            "patch_size": 8,
            "ls_init_value": 0.5,
        },
        "text_cfg": TEXT_CFG,
    },
}


@pytest.fixture(scope="session", autouse=True)
def tiny_model_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_configs")
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return folder


def make_backbone(name="mi-test-tiny", seed=0, **kwargs):
    """A tiny random backbone whose weights depend only on the seed."""
    torch.manual_seed(seed)
    size = kwargs.pop("image_size", TINY_CONFIGS[name]["vision_cfg"]["image_size"])
    return load_backbone(name, pretrained=None, image_size=size, device="cpu", **kwargs)


@pytest.fixture
def tiny():
    return make_backbone("mi-test-tiny")


@pytest.fixture
def tiny_ls():
    return make_backbone("mi-test-tiny-ls")


@pytest.fixture
def scene():
    """A 70x90 random RGB image and three overlapping rectangle masks."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    masks = np.zeros((3, 70, 90), dtype=bool)
    masks[0, 5:40, 10:50] = True
    masks[1, 30:70, 45:90] = True
    masks[2, 0:20, :] = True
    return image, masks
