"""Test helpers: tiny random open_clip ViTs registered under test-only names, FiftyOne set up against its
own MongoDB (started on first need), COCO sample datasets, ports."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COCO_DIR = REPO.parent / "shared" / "data" / "coco-val2017-mini"

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
            "image_size": 48, "layers": 3, "width": 48, "head_width": 8, "patch_size": 8, "ls_init_value": 0.5,
        },
        "text_cfg": TEXT_CFG,
    },
}


def register_tiny_configs() -> None:
    """Write the test configs and announce them to this process and to every process the tests start."""
    from fiftyone_maskinversion.core.backbone import register_model_configs

    folder = Path(tempfile.mkdtemp(prefix="mi-test-configs-"))
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    os.environ["MASKINVERSION_MODEL_CONFIGS"] = str(folder)
    register_model_configs()


def make_backbone(name="mi-test-tiny", seed=0, **kwargs):
    """A tiny random backbone whose weights depend only on the seed."""
    from fiftyone_maskinversion import load_backbone

    torch.manual_seed(seed)
    size = kwargs.pop("image_size", TINY_CONFIGS[name]["vision_cfg"]["image_size"])
    return load_backbone(name, pretrained=None, image_size=size, device="cpu", **kwargs)


def save_checkpoint(path, name="mi-test-tiny", seed=0) -> str:
    """A tiny model's state_dict as a checkpoint file every process can load."""
    torch.save(make_backbone(name, seed=seed).model.state_dict(), path)
    return str(path)


class Interrupted(Exception):
    """Raised by :func:`interrupt_after` to stop a run half-way, as a kill would."""


def interrupt_after(count: int):
    """A progress callback that interrupts a run once ``count`` samples are done."""
    def progress(done: int, total: int) -> None:
        if done == count:
            raise Interrupted

    return progress


def openai_vit_b16_in_private_hub_cache(monkeypatch, root: Path) -> Path:
    """Random QuickGELU ViT-B-16 weights placed as the 'openai' tag's file in a private, offline
    Hugging Face cache (as the hub would have stored them); returns the file."""
    import open_clip
    from huggingface_hub import constants

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    repo = root / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "snapshots" / "rev1").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    checkpoint = repo / "snapshots" / "rev1" / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), checkpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return checkpoint


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path = None) -> None:
    """Wait until ``proc`` listens on ``port``; fail with its log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                detail = log.read_text()[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{what} did not start on port {port}\n{detail}")
            time.sleep(0.2)


_MONGOD = []


def _stop_mongod(proc: subprocess.Popen, data: str) -> None:
    """Stop the test session's mongod and remove its data dir (each session's is ~300 MB)."""
    proc.kill()
    proc.wait(timeout=60)
    shutil.rmtree(data, ignore_errors=True)


def configure_fiftyone() -> None:
    """Start FiftyOne's own mongod on a fresh data dir and a free port (once per test session) and install
    the plugin as the README says; must run before the first ``import fiftyone``, which reads both."""
    if _MONGOD:
        return
    import atexit
    import importlib.util

    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # no notice about the bundled mongod's age
    # locate the binary without importing fiftyone
    mongod_bin = Path(importlib.util.find_spec("fiftyone").origin).parent / "db" / "bin" / "mongod"
    port = free_port()
    data = tempfile.mkdtemp(prefix="mi-test-mongo-")
    proc = subprocess.Popen(
        [str(mongod_bin), "--dbpath", data, "--port", str(port), "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc, 60, "mongod")
    atexit.register(_stop_mongod, proc, data)
    _MONGOD.append(proc)
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_ADMIN"] = "true"
    plugins = Path(tempfile.mkdtemp(prefix="mi-test-plugins-"))
    (plugins / "maskinversion").symlink_to(REPO, target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(plugins)


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


def delete_with_heatmaps(dataset) -> None:
    """Delete a test dataset and its heatmaps companion."""
    from fiftyone_maskinversion.fo import heatmaps_dataset

    companion = heatmaps_dataset(dataset)
    if companion is not None:
        companion.delete()
    dataset.delete()


def reviewed_coco(folder: Path, samples: int = 2, seed: int = 4):
    """COCO images embedded with a tiny model saved to ``folder`` (so any process, the plugin's operators
    included, reloads it), relabelled and mask-scored with suggestions (one template); returns
    (dataset, the backbone object of those weights)."""
    import fiftyone_maskinversion.fo as mifo

    dataset = load_coco(samples)
    checkpoint = save_checkpoint(Path(folder) / "tiny.pt", seed=seed)
    mifo.compute_region_embeddings(dataset, "ground_truth", model_name="mi-test-tiny", pretrained=checkpoint,
                                   image_size=64, iterations=1)
    backbone = make_backbone(seed=seed)
    mifo.zero_shot_relabel(dataset, "ground_truth", prompt="a photo of a {}.", backbone=backbone)
    mifo.score_masks(dataset, "ground_truth", prompt="a photo of a {}.", min_missing_score=0.0, confirmation=0.0,
                     backbone=backbone)
    return dataset, backbone
