"""The region index the App searches with: it ranks as search_regions does (plain cosine, checked
against numpy, where brain's stock sklearn index differs), embeds text with the run's own model, and
loads in any process that has the package installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fiftyone.brain as fob
import numpy as np
import open_clip
import pytest
import torch

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo.region_index import RegionSimilarityIndex
from fiftyone_maskinversion.fo.runs import backbone_for, find_run, update_run

from ..helpers import delete_with_heatmaps, load_coco, openai_vit_b16_in_private_hub_cache, save_checkpoint

pytestmark = pytest.mark.slow

QUERY = "a chair"


def _regions(dataset):
    """(label ids, embedding matrix) of every embedded region, read straight from the dataset."""
    ids, vectors = [], []
    for sample in dataset:
        for region in sample.ground_truth.detections:
            if region.has_field("mi_embedding") and region.mi_embedding is not None:
                ids.append(region.id)
                vectors.append(np.asarray(region.mi_embedding, dtype=np.float64))
    return ids, np.stack(vectors)


def _run_text(dataset, query=QUERY):
    """The query embedded by the run's own backbone (what the index's text model must reproduce)."""
    return backbone_for(find_run(dataset, "ground_truth", "mi_embedding")).encode_text([query])[0].numpy()


def _numpy_order(ids, matrix, query):
    """Region ids by plain cosine to ``query``, best first: the reference, written independently."""
    cosines = matrix @ query / np.linalg.norm(matrix, axis=1) / np.linalg.norm(query)
    return [ids[i] for i in np.argsort(-cosines, kind="stable")]


@pytest.fixture
def indexed(tmp_path):
    """A dataset embedded with weights in a checkpoint file (so its text model can be reloaded), indexed."""
    dataset = load_coco(4, persistent=True)
    path = save_checkpoint(tmp_path / "tiny.pt", seed=7)
    mifo.compute_region_embeddings(dataset, "ground_truth", model_name="mi-test-tiny", pretrained=path,
                                   image_size=64, iterations=2)
    results = mifo.build_region_index(dataset, "ground_truth")
    yield dataset, results, path
    delete_with_heatmaps(dataset)


def test_the_index_ranks_by_plain_cosine_as_search_regions_does(indexed):
    dataset, results, _ = indexed
    assert isinstance(results, RegionSimilarityIndex) and results.supports_prompts
    ids, matrix = _regions(dataset)
    text = _run_text(dataset)
    expected = _numpy_order(ids, matrix, text)
    patches = dataset.to_patches("ground_truth")
    assert patches.sort_by_similarity(QUERY, k=len(ids), brain_key=results.key).values("id") == expected
    region = ids[3]
    by_region = patches.sort_by_similarity(region, k=len(ids), brain_key=results.key).values("id")
    assert by_region == _numpy_order(ids, matrix, matrix[3])

    # brain's stock sklearn index centres the embeddings first: another order, which the App showed before
    stock = fob.compute_similarity(dataset, patches_field="ground_truth", embeddings="mi_embedding",
                                   backend="sklearn", metric="cosine", brain_key="stock", progress=False)
    assert patches.sort_by_similarity(region, k=len(ids), brain_key=stock.key).values("id") != by_region

    view = mifo.search_regions(dataset, "ground_truth", text=QUERY, k=5)  # the operator's view
    stage = view._stages[-1]
    assert type(stage).__name__ == "SortBySimilarity" and stage.query == QUERY  # the view bar reads the words
    assert view.values("id") == expected[:5]
    assert mifo.search_regions(dataset, "ground_truth", region_id=region, k=3).values("id") == by_region[:3]


PLAIN_PROCESS_QUERY = """
import sys, json, fiftyone as fo
dataset = fo.load_dataset(sys.argv[1])
view = dataset.to_patches("ground_truth").sort_by_similarity(sys.argv[3], k=4, brain_key=sys.argv[2])
print(json.dumps(view.values("id")))
"""


def test_a_process_that_never_imported_the_package_searches_the_index_or_says_what_is_missing(indexed, tmp_path):
    """The App server and a notebook load the index's classes by their stored path; on a machine
    without the run's weights the text query fails naming the missing file."""
    dataset, results, path = indexed
    ids, matrix = _regions(dataset)
    text = _run_text(dataset)

    def query():
        return subprocess.run([sys.executable, "-c", PLAIN_PROCESS_QUERY, dataset.name, results.key, QUERY],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300, env=dict(os.environ))

    plain = query()
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout.strip().splitlines()[-1]) == _numpy_order(ids, matrix, text)[:4]

    Path(path).rename(tmp_path / "elsewhere.pt")  # a teammate's machine without the weights file
    missing = query()
    assert missing.returncode != 0 and path in missing.stderr


def test_the_shipped_model_index_needs_nothing_but_the_installed_package(tmp_path):
    """The shipped tag (mi-synth-vit / synthetic) registers itself through the package's entry point, so a
    plain process with no model configs announced runs the App's text query on its index."""
    dataset = load_coco(2, persistent=True)
    try:
        mifo.compute_region_embeddings(dataset, "ground_truth", model_name="mi-synth-vit", pretrained="synthetic",
                                       image_size=64, iterations=1)
        results = mifo.build_region_index(dataset, "ground_truth")
        assert results.supports_prompts
        ids, matrix = _regions(dataset)
        text = _run_text(dataset, "a red circle")
        env = {k: v for k, v in os.environ.items() if k != "MASKINVERSION_MODEL_CONFIGS"}
        plain = subprocess.run([sys.executable, "-c", PLAIN_PROCESS_QUERY, dataset.name, results.key, "a red circle"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
        assert plain.returncode == 0, plain.stderr
        assert json.loads(plain.stdout.strip().splitlines()[-1]) == _numpy_order(ids, matrix, text)[:4]
    finally:
        delete_with_heatmaps(dataset)


def test_an_index_without_a_loadable_text_model_still_searches_by_region(coco_dataset, tiny, caplog):
    """A run whose weights cannot be loaded here (an uncached tag, offline) gets an index without text
    queries; its region-to-region search still works, and search_regions still searches by text."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    update_run(coco_dataset, run, set_={"settings": {**run.settings, "model_name": "ViT-B-32", "pretrained": "openai",
                                                     "activation": "quick_gelu"}})
    results = mifo.build_region_index(coco_dataset, "ground_truth")
    assert "has no text model" in caplog.text and not results.supports_prompts
    assert coco_dataset.list_brain_runs() == [results.key] == [find_run(coco_dataset, "ground_truth",
                                                                         "mi_embedding").brain_key]
    ids, matrix = _regions(coco_dataset)
    view = mifo.search_regions(coco_dataset, "ground_truth", region_id=ids[0], k=3)
    assert type(view._stages[-1]).__name__ == "SortBySimilarity"
    assert view.values("id") == _numpy_order(ids, matrix, matrix[0])[:3]
    with pytest.raises(ValueError, match="prompts"):
        coco_dataset.to_patches("ground_truth").sort_by_similarity(QUERY, k=3, brain_key=results.key)


def test_the_index_of_an_openai_tag_embeds_text_with_the_quickgelu_model(monkeypatch, tmp_path):
    """The App's text box embeds queries with the index's model: for the 'openai' tag it must be the
    QuickGELU architecture the weights were trained with (reference: open_clip's ViT-B-16-quickgelu)."""
    checkpoint = openai_vit_b16_in_private_hub_cache(monkeypatch, tmp_path)
    dataset = load_coco(1)
    try:
        mifo.compute_region_embeddings(dataset, "ground_truth", model_name="ViT-B-16", pretrained="openai",
                                       image_size=224, iterations=1)
        assert find_run(dataset, "ground_truth", "mi_embedding").settings["activation"] == "quick_gelu"
        results = mifo.build_region_index(dataset, "ground_truth")
        ours = results.get_model().embed_prompt("a dog on a sofa")
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=str(checkpoint)).eval()
        with torch.no_grad():
            reference = model.encode_text(open_clip.get_tokenizer("ViT-B-16-quickgelu")(["a dog on a sofa"]))[0]
        reference = (reference / reference.norm()).numpy()
        assert np.abs(ours - reference).max() <= 1e-5
        plain = open_clip.create_model("ViT-B-16", pretrained=str(checkpoint)).eval()  # GELU: the check can fail
        with torch.no_grad():
            gelu = plain.encode_text(open_clip.get_tokenizer("ViT-B-16")(["a dog on a sofa"]))[0]
        assert np.abs(ours - (gelu / gelu.norm()).numpy()).max() > 1e-4
    finally:
        delete_with_heatmaps(dataset)


def test_a_clone_searches_through_its_own_copy_of_the_index(indexed):
    dataset, results, _ = indexed
    clone = dataset.clone()
    try:
        assert clone.list_brain_runs() == [results.key]
        ids, matrix = _regions(clone)
        text = _run_text(clone)
        view = mifo.search_regions(clone, "ground_truth", text=QUERY, k=6)
        assert type(view._stages[-1]).__name__ == "SortBySimilarity" and view._root_dataset.name == clone.name
        assert view.values("id") == _numpy_order(ids, matrix, text)[:6]
        mifo.delete_region_results(clone, "ground_truth")  # the clone's index goes, the original's stays
        assert clone.list_brain_runs() == [] and dataset.list_brain_runs() == [results.key]
    finally:
        delete_with_heatmaps(clone)


def test_search_never_disagrees_with_an_index_older_than_a_deleted_label(indexed):
    """The index still holds a label the user deleted since: the search still returns k live regions."""
    dataset, results, _ = indexed
    text = _run_text(dataset)
    top = mifo.search_regions(dataset, "ground_truth", text=QUERY, k=1).values("id")[0]
    dataset.delete_labels(ids=[top])
    ids, matrix = _regions(dataset)
    view = mifo.search_regions(dataset, "ground_truth", text=QUERY, k=3)
    assert view.values("id") == _numpy_order(ids, matrix, text)[:3]
