"""Fixtures every test may use: tiny random open_clip ViTs (registered under test-only names) and a small
scene. FiftyOne and its database are set up only by the fo/ and app/ test folders that need them."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from .helpers import make_backbone, register_tiny_configs

register_tiny_configs()


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
