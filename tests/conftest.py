"""Shared fixtures: tiny random open_clip ViTs registered under test-only names, FiftyOne's own MongoDB
started for the session, and COCO sample datasets."""

import atexit
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from fiftyone_maskinversion import load_backbone
from fiftyone_maskinversion.backbone import register_model_configs

REPO = Path(__file__).resolve().parents[1]
COCO_DIR = REPO.parent / "shared" / "data" / "coco-val2017-mini"
_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="mi-test-configs-"))

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


def _register_tiny_configs() -> None:
    """Write the test configs and announce them to this process and to every process the tests start."""
    for name, cfg in TINY_CONFIGS.items():
        (_CONFIG_DIR / f"{name}.json").write_text(json.dumps(cfg))
    os.environ["MASKINVERSION_MODEL_CONFIGS"] = str(_CONFIG_DIR)
    register_model_configs()


_register_tiny_configs()


def _install_plugin() -> None:
    """Install the plugin as the README says: the repository linked into $FIFTYONE_PLUGINS_DIR."""
    plugins = Path(tempfile.mkdtemp(prefix="mi-test-plugins-"))
    (plugins / "maskinversion").symlink_to(REPO, target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)


_install_plugin()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_mongod():
    """FiftyOne's own mongod binary on a fresh data dir and a free port; every FiftyOne client of the
    test session (this process, delegated workers, the App server) connects to it."""
    import importlib.util

    # locate the binary without importing fiftyone, which would read its config before the URI is set
    mongod_bin = Path(importlib.util.find_spec("fiftyone").origin).parent / "db" / "bin" / "mongod"
    data_dir = tempfile.mkdtemp(prefix="mi-test-mongo-")
    port = free_port()
    proc = subprocess.Popen(
        [str(mongod_bin), "--dbpath", data_dir, "--port", str(port),
         "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("mongod did not start")
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_ADMIN"] = "true"
    return proc


# Started before any test module imports fiftyone (which reads the database URI at import).
_MONGOD = _start_mongod()
atexit.register(_MONGOD.kill)


@pytest.fixture(scope="session")
def mongod():
    return os.environ["FIFTYONE_DATABASE_URI"]


def load_coco(max_samples: int, name: str = None, persistent: bool = False):
    """The first ``max_samples`` COCO sample images with instance masks, as a new FiftyOne dataset."""
    import fiftyone as fo

    dataset = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(COCO_DIR / "images"),
        labels_path=str(COCO_DIR / "instances.json"),
        label_types=["segmentations"],
        include_annotation_id=True,
        label_field="ground_truth",
        max_samples=max_samples,
        name=name or f"mi-test-{uuid.uuid4().hex[:8]}",
        progress=False,
    )
    dataset.persistent = persistent
    dataset.compute_metadata(progress=False)
    return dataset


@pytest.fixture
def coco_dataset(mongod):
    dataset = load_coco(4)
    yield dataset
    from fiftyone_maskinversion.dataset import heatmaps_dataset_name
    import fiftyone as fo

    if fo.dataset_exists(heatmaps_dataset_name(dataset.name)):
        fo.delete_dataset(heatmaps_dataset_name(dataset.name))
    dataset.delete()


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
