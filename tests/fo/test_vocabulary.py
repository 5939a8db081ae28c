"""Class text embeddings are computed once per (weights, vocabulary, prompts), stored with the run and read by
every later step in any process (relabel with the 80-template ensemble took minutes, in every process)."""

import numpy as np
import pytest

import fiftyone_maskinversion.fo as mifo
import fiftyone_maskinversion.fo.vocabulary as vocabulary_module
from fiftyone_maskinversion.core.zeroshot import class_embeddings
from fiftyone_maskinversion.fo.runs import find_run, list_region_runs, stored_text_embeddings
from fiftyone_maskinversion.fo.vocabulary import text_key, vocabulary

pytestmark = pytest.mark.slow
SINGLE = "a photo of a {}."


def test_the_vocabulary_is_embedded_once_and_read_back_by_later_steps(coco_dataset, tiny, monkeypatch):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    seen = []
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny,
                           progress=lambda done, total: seen.append((done, total)))
    classes = sorted(coco_dataset.distinct("ground_truth.detections.label"))
    assert seen[-1] == (len(classes), len(classes)) and len(seen) == -(-len(classes) // 8)
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    direct = class_embeddings(tiny, classes, [SINGLE]).numpy()
    _, _, text, _ = vocabulary(coco_dataset, run, None, SINGLE, tiny)
    np.testing.assert_allclose(text.numpy(), direct, atol=1e-6)  # the stored copy is the text tower's answer

    monkeypatch.setattr(vocabulary_module, "class_embeddings", lambda *a, **k: pytest.fail("embedded again"))
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny, overwrite=True)
    mifo.score_masks(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny, suggest_missing=False)
    assert all("text_cache" not in str(r) for r in list_region_runs(coco_dataset))  # never loaded with the record


def test_only_the_last_few_vocabularies_are_kept(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    keys = []
    for n in range(6):
        vocabulary(coco_dataset, run, [f"class {n}", "dog"], SINGLE, tiny)
        keys.append(text_key(run, [f"class {n}", "dog"], [SINGLE]))
    kept = [stored_text_embeddings(run, key) is not None for key in keys]
    assert kept == [False, False, True, True, True, True]


def test_the_template_ensemble_is_stored_too(coco_dataset, tiny):
    """The default prompt is CLIP's 80-template ensemble (templates given as functions): stored and read back."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    _, classes, text, _ = vocabulary(coco_dataset, run, ["cat", "dog"], "ensemble", tiny)
    from fiftyone_maskinversion.core.zeroshot import templates_for

    stored = stored_text_embeddings(run, text_key(run, classes, templates_for("ensemble")))
    np.testing.assert_allclose(stored, class_embeddings(tiny, classes, templates_for("ensemble")).numpy(), atol=1e-6)
    np.testing.assert_allclose(stored, text.numpy(), atol=1e-6)
