"""Runs in other processes against one database: kill -9 and resume, two delegated workers, the plugin."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.delegated  # noqa: F401  (the delegated operation service)
import pytest
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.core.badmask import COMPONENTS

from ..helpers import delete_with_heatmaps, load_coco, save_checkpoint

pytestmark = pytest.mark.slow
PLUGIN = "@fiftyone-maskinversion/maskinversion"
FIFTYONE_CLI = str(Path(sys.executable).with_name("fiftyone"))


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny model saved as a checkpoint file: every process can load the same weights by path."""
    return save_checkpoint(tmp_path / "tiny.pt", seed=3)


@pytest.fixture
def orchestrator(monkeypatch):
    """Delegated runs set up as the README says: FiftyOne's legacy orchestrator allowed (this process queues,
    `fiftyone delegated launch` processes run them)."""
    import fiftyone as fo

    monkeypatch.setenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)


@pytest.fixture
def persistent_coco():
    dataset = load_coco(6, persistent=True)
    yield dataset
    delete_with_heatmaps(dataset)


def expected_regions(dataset):
    return dataset.filter_labels("ground_truth", F("iscrowd") != 1).count("ground_truth.detections")


def assert_every_region_once(dataset, expected=None):
    total = expected_regions(dataset) if expected is None else expected
    assert dataset.count("ground_truth.detections.mi_embedding") == total
    heat = mifo.heatmaps_dataset(dataset)
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


def run_delegated(dataset, tmp_path, workers=2):
    """Start ``workers`` `fiftyone delegated launch` processes until every queued operation has ended."""
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(workers)]
    procs = [subprocess.Popen([FIFTYONE_CLI, "delegated", "launch"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True) for log in logs]
    service = foo.delegated.DelegatedOperationService()
    try:
        deadline = time.monotonic() + 240
        while True:
            ops = service.list_operations(dataset_name=dataset.name)
            states = [op.run_state for op in ops]
            if all(state in ("completed", "failed") for state in states):
                break
            assert time.monotonic() < deadline, (states, [(tmp_path / f"worker{i}.log").read_text()[-3000:]
                                                          for i in range(workers)])
            time.sleep(1)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
    for op in ops:
        service.delete_operation(op.id)
    return ops


def test_queued_shards_keep_the_selected_samples(persistent_coco, checkpoint, tmp_path, orchestrator):
    selected = persistent_coco.skip(1).first().id
    params = {"label_field": "ground_truth", "model_name": "mi-test-tiny", "pretrained": checkpoint,
              "image_size": 64, "iterations": 2, "num_shards": 2, "view_target": "SELECTED_SAMPLES"}
    queued = foo.execute_operator(f"{PLUGIN}/compute_region_embeddings",
                                  ctx={"dataset": persistent_coco.name, "selected": [selected], "params": params})
    assert queued.result == {"queued_shards": 2}
    ops = run_delegated(persistent_coco, tmp_path, workers=1)
    assert all(op.run_state == "completed" for op in ops), [op.result for op in ops]
    assert sum(op.result.result["samples"] for op in ops) == 1  # the selection, not the 6 samples
    chosen = persistent_coco.select(selected)
    assert persistent_coco.count("ground_truth.detections.mi_embedding") == expected_regions(chosen) > 0


def test_two_delegated_workers_share_the_shards(persistent_coco, checkpoint, tmp_path, orchestrator):
    params = {
        "label_field": "ground_truth", "model_name": "mi-test-tiny", "pretrained": checkpoint,
        "image_size": 64, "iterations": 3, "num_shards": 4, "view_target": "DATASET",
    }
    queued = foo.execute_operator(
        f"{PLUGIN}/compute_region_embeddings", ctx={"dataset": persistent_coco.name, "params": params}
    )
    assert queued.result == {"queued_shards": 4}
    ops = run_delegated(persistent_coco, tmp_path)
    assert len(ops) == 4 and all(op.run_state == "completed" for op in ops), [op.result for op in ops]
    results = [op.result.result for op in ops]
    print(results)
    assert sum(r["computed"] for r in results) == expected_regions(persistent_coco)
    assert len({r["worker"] for r in results}) == 2  # both workers took shards
    assert_every_region_once(persistent_coco)


def test_plugin_is_installed_and_its_operators_run(coco_dataset, checkpoint):
    listing = subprocess.run(
        [FIFTYONE_CLI, "operators", "list"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("compute_region_embeddings", "zero_shot_relabel", "apply_relabel", "find_mislabeled",
                 "find_bad_masks", "show_region_heatmaps", "search_regions", "visualize_regions",
                 "delete_region_results"):
        assert f"{PLUGIN}/{name}" in listing

    def run(operator, dataset=coco_dataset, selected_labels=(), selected=(), **params):
        ctx = {"dataset": dataset.name, "view": dataset.view(), "params": params,
               "selected_labels": list(selected_labels), "selected": list(selected)}
        return foo.execute_operator(f"{PLUGIN}/{operator}", ctx=ctx).result

    regions = expected_regions(coco_dataset)
    result = run("compute_region_embeddings", label_field="ground_truth", model_name="mi-test-tiny",
                 pretrained=checkpoint, image_size=64, iterations=2, blocks="-2,-1")
    assert result["computed"] == regions == coco_dataset.count("ground_truth.detections.mi_embedding")
    assert result["samples"] == len(coco_dataset) and result["failed"] == 0
    (record,) = mifo.list_region_runs(coco_dataset)
    assert record.settings["blocks"] == [0, 1] and record.settings["iterations"] == 2  # the form's values arrived

    result = run("zero_shot_relabel", label_field="ground_truth", prompt="a photo of a {}.")
    pred_field = "relabel_ground_truth_mi_embedding"
    assert result == {"pred_field": pred_field, "regions": regions,
                      "changed": sum(p.label != p.gt_label for p in coco_dataset.values(f"{pred_field}.detections",
                                                                                    unwind=True))}
    result = run("apply_relabel", label_field="ground_truth", threshold=0.0, include_low_fidelity=True)
    assert result["changed"] == coco_dataset.count("ground_truth.detections.mi_embedding_relabel_to") == \
        sum(p.label != p.gt_label for p in coco_dataset.values(f"{pred_field}.detections", unwind=True))
    restored = result["changed"]
    result = run("apply_relabel", label_field="ground_truth", undo=True)
    assert result["changed"] == restored and coco_dataset.count("ground_truth.detections.mi_embedding_relabel_to") == 0
    assert coco_dataset.distinct("ground_truth.detections.label") == sorted(
        {p.gt_label for p in coco_dataset.values(f"{pred_field}.detections", unwind=True)}
        | set(coco_dataset.filter_labels("ground_truth", F("iscrowd") == 1).distinct("ground_truth.detections.label")))
    assert run("search_regions", label_field="ground_truth", text="a dog", k=4) == {"regions": 4}
    low = len(coco_dataset.filter_labels("ground_truth", F("mi_embedding_low_fidelity") == True).values(  # noqa: E712
        "ground_truth.detections", unwind=True))
    assert run("find_mislabeled", label_field="ground_truth") == {"regions": regions - low}
    result = run("find_bad_masks", label_field="ground_truth", prompt="a photo of a {}.", min_missing_score=0.0,
                 confirmation=0.0)
    assert result["scored"] == regions == coco_dataset.count("ground_truth.detections.mi_embedding_mask_mistakenness")
    assert result["suggested"] == coco_dataset.count(f"{result['missing_field']}.detections") > 0
    assert coco_dataset.app_config.color_scheme.opacity < 0.5  # the views it opens let the object show through
    region = coco_dataset.first().ground_truth.detections[0]
    shown = run("show_region_heatmaps", selected_labels=[{"label_id": region.id, "sample_id": coco_dataset.first().id,
                                                          "field": "ground_truth"}])
    companion = mifo.heatmaps_dataset(coco_dataset)
    assert (shown["dataset"], shown["heatmaps"]) == (companion.name, 1)
    assert shown["preview"].startswith("data:image/png;base64,")
    assert shown["open"] == f"/datasets/{companion.name}?view=selection"
    assert companion.load_saved_view("selection").values("source_label_id") == [region.id]
    assert run("show_region_heatmaps", dataset=companion) == {"dataset": coco_dataset.name}
    layout = run("visualize_regions", label_field="ground_truth", method="pca")
    assert layout == {"brain_key": "maskinversion_ground_truth_mi_embedding_viz", "regions": regions}
    assert coco_dataset.list_brain_runs() == [layout["brain_key"]]

    result = run("delete_region_results", label_field="ground_truth")
    # 5 attributes of the inversion (embedding, dice, iou, error, run) + 5 of the relabel review on the field
    # (predicted label, top-k labels and scores, mistakenness, low fidelity) + the relabel history (from, to)
    # + the mask review (score, review stamp, reason, one per part of the score)
    assert result == {"deleted_attributes": 5 + 5 + 2 + 3 + len(COMPONENTS), "deleted_heatmaps": regions,
                      "deleted_pred_fields": 2}
    assert not coco_dataset.has_field("ground_truth.detections.mi_embedding")
    assert mifo.heatmaps_dataset(coco_dataset) is None and not coco_dataset.has_sample_field(pred_field)


def test_the_operators_keep_heatmaps_as_files_and_index_in_lancedb(coco_dataset, checkpoint, tmp_path):
    """Issue 18 from the App: the compute form stores heatmaps as files, the index operator builds on LanceDB."""
    def run(operator, **params):
        result = foo.execute_operator(f"{PLUGIN}/{operator}", ctx={"dataset": coco_dataset.name, "params": params})
        assert result.error is None, result.error
        return result.result

    run("compute_region_embeddings", label_field="ground_truth", model_name="mi-test-tiny", pretrained=checkpoint,
        image_size=64, iterations=1, heatmaps="files", heatmaps_dir=str(tmp_path / "maps"))
    paths = mifo.heatmaps_dataset(coco_dataset).values("heatmap.map_path")
    assert len(paths) == expected_regions(coco_dataset) and all(os.path.isfile(p) for p in paths)
    built = run("build_region_index", label_field="ground_truth", backend="lancedb", uri=str(tmp_path / "lance"))
    assert coco_dataset.get_brain_info(built["brain_key"]).config.method == "lancedb"
    assert built["regions"] == expected_regions(coco_dataset) and built["text"]
