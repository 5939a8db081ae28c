"""Runs in other processes against one database: kill -9 and resume, two delegated workers, the plugin."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
import torch
from fiftyone import ViewField as F

import fiftyone_maskinversion as fmi

from .conftest import load_coco, make_backbone

pytestmark = pytest.mark.slow
PLUGIN = "@fiftyone-maskinversion/maskinversion"
FIFTYONE_CLI = str(Path(sys.executable).with_name("fiftyone"))


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny model saved as a checkpoint file: every process can load the same weights by path."""
    path = tmp_path / "tiny.pt"
    torch.save(make_backbone("mi-test-tiny", seed=3).model.state_dict(), path)
    return str(path)


@pytest.fixture
def persistent_coco(mongod):
    dataset = load_coco(6, persistent=True)
    yield dataset
    name = fmi.heatmaps_dataset(dataset).name
    fo.delete_dataset(name)
    dataset.delete()


def expected_regions(dataset):
    return dataset.filter_labels("ground_truth", F("iscrowd") != 1).count("ground_truth.detections")


def assert_every_region_once(dataset):
    total = expected_regions(dataset)
    assert dataset.count("ground_truth.detections.mi_embedding") == total
    heat = fmi.heatmaps_dataset(dataset)
    assert len(heat) == total == len(set(heat.values("source_label_id")))


def test_kill_9_half_way_then_resume(persistent_coco, checkpoint):
    cmd = [
        sys.executable, "-m", "fiftyone_maskinversion.cli", "compute", persistent_coco.name,
        "--label-field", "ground_truth", "--model", "mi-test-tiny", "--pretrained", checkpoint,
        "--image-size", "64", "--iterations", "60", "--batch-size", "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while persistent_coco.count("ground_truth.detections.mi_embedding") == 0:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = persistent_coco.count("ground_truth.detections.mi_embedding")
    assert 0 < done_before < expected_regions(persistent_coco)

    resumed = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(resumed.stdout)
    assert f"skipped (already done) {done_before}" in resumed.stdout
    assert_every_region_once(persistent_coco)


def test_two_delegated_workers_share_the_shards(persistent_coco, checkpoint, tmp_path):
    params = {
        "label_field": "ground_truth", "model_name": "mi-test-tiny", "pretrained": checkpoint,
        "image_size": 64, "iterations": 3, "num_shards": 4, "target": "DATASET",
    }
    queued = foo.execute_operator(
        f"{PLUGIN}/compute_region_embeddings", ctx={"dataset": persistent_coco.name, "params": params}
    )
    assert queued.result == {"queued_shards": 4}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [
        subprocess.Popen([FIFTYONE_CLI, "delegated", "launch"], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
        for log in logs
    ]
    service = foo.delegated.DelegatedOperationService()
    try:
        deadline = time.monotonic() + 240
        while True:
            ops = service.list_operations(dataset_name=persistent_coco.name)
            states = [op.run_state for op in ops]
            if all(state in ("completed", "failed") for state in states):
                break
            assert time.monotonic() < deadline, (states, [(tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2)])
            time.sleep(1)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGKILL)
    assert len(ops) == 4 and all(op.run_state == "completed" for op in ops), [op.result for op in ops]
    results = [op.result.result for op in ops]
    print(results)
    assert sum(r["computed"] for r in results) == expected_regions(persistent_coco)
    assert len({r["worker"] for r in results}) == 2  # both workers took shards
    assert_every_region_once(persistent_coco)
    for op in ops:
        service.delete_operation(op.id)


def test_plugin_is_installed_and_its_operators_run(coco_dataset, checkpoint):
    listing = subprocess.run(
        [FIFTYONE_CLI, "operators", "list"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("compute_region_embeddings", "zero_shot_relabel", "apply_relabel", "find_mislabeled",
                 "search_regions", "delete_region_results"):
        assert f"{PLUGIN}/{name}" in listing

    ctx = {"dataset": coco_dataset.name, "view": coco_dataset.view()}
    params = {"label_field": "ground_truth", "model_name": "mi-test-tiny", "pretrained": checkpoint,
              "image_size": 64, "iterations": 2, "target": "DATASET"}
    result = foo.execute_operator(f"{PLUGIN}/compute_region_embeddings", ctx={**ctx, "params": params}).result
    assert result["computed"] == coco_dataset.count("ground_truth.detections.mi_embedding") > 0
    result = foo.execute_operator(
        f"{PLUGIN}/zero_shot_relabel", ctx={**ctx, "params": {"label_field": "ground_truth", "prompt": "a photo of a {}."}}
    ).result
    assert result["regions"] == result_regions(coco_dataset)
    result = foo.execute_operator(
        f"{PLUGIN}/apply_relabel", ctx={**ctx, "params": {"label_field": "ground_truth", "threshold": 0.0}}
    ).result
    assert result["changed"] == coco_dataset.count("ground_truth.detections.mi_original_label")
    result = foo.execute_operator(
        f"{PLUGIN}/apply_relabel", ctx={**ctx, "params": {"label_field": "ground_truth", "undo": True}}
    ).result
    assert coco_dataset.count("ground_truth.detections.mi_original_label") == 0
    result = foo.execute_operator(
        f"{PLUGIN}/search_regions", ctx={**ctx, "params": {"label_field": "ground_truth", "text": "a dog", "k": 4}}
    ).result
    assert result["regions"] == 4
    result = foo.execute_operator(
        f"{PLUGIN}/find_mislabeled", ctx={**ctx, "params": {"label_field": "ground_truth"}}
    ).result
    assert result["regions"] == result_regions(coco_dataset)
    result = foo.execute_operator(
        f"{PLUGIN}/delete_region_results", ctx={**ctx, "params": {"label_field": "ground_truth"}}
    ).result
    assert not coco_dataset.has_field("ground_truth.detections.mi_embedding")


def result_regions(dataset):
    return dataset.count("ground_truth_mi_relabel.detections")
