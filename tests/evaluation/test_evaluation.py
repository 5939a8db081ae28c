"""The evaluation harness: metric definitions on hand-computed cases and a whole run on synthetic data."""

import json

import numpy as np
import pytest

from fiftyone_maskinversion.evaluation import run
from fiftyone_maskinversion.evaluation.tasks import auroc
from fiftyone_maskinversion.synthetic import CLASSES, make_scene, write_coco
from fiftyone_maskinversion.core.zeroshot import mistakenness


def test_auroc_hand_computed():
    scores = np.array([0.9, 0.8, 0.3, 0.8, 0.1])
    positive = np.array([True, False, True, True, False])
    # pairs (pos > neg): 0.9>{0.8,0.1}=2, 0.3>{0.1}=1, 0.8>{0.1}=1 plus tie 0.8=0.8 -> 0.5; total 4.5 / 6
    assert auroc(scores, positive) == pytest.approx(4.5 / 6)
    assert auroc(np.array([1.0, 0.0]), np.array([True, False])) == 1.0


def test_mistakenness_is_the_mass_on_other_classes():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(mistakenness(probs, np.array([0, 0])), [0.3, 0.9])
    assert np.isnan(mistakenness(probs, np.array([-1, 2]))[0])


def test_synthetic_scenes_are_seeded_and_consistent(tmp_path):
    a = make_scene(np.random.default_rng(5))
    b = make_scene(np.random.default_rng(5))
    assert np.array_equal(a.image, b.image) and a.names == b.names
    assert len(set(a.names)) == len(a.names) and all(n in CLASSES for n in a.names)
    assert not (a.masks.sum(axis=0) > 1).any()  # objects do not overlap
    for name in a.names:
        assert name in a.caption
    folder = write_coco(tmp_path / "scenes", seed=5, count=3)
    data = json.loads((folder / "instances.json").read_text())
    assert len(data["images"]) == 3 and all(ann["iscrowd"] == 0 for ann in data["annotations"])
    refs = json.loads((folder / "expressions.json").read_text())
    assert len(refs) == len(data["annotations"])


def test_a_whole_run_writes_table_chart_and_json(tiny, tmp_path):
    folder = write_coco(tmp_path / "scenes", seed=9, count=2)
    results = run(tiny, folder, tmp_path / "out", methods=["maskinversion", "clip"], iterations=2)
    for name in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| maskinversion | ensemble |" in table and "| clip |" in table and "AUROC" in table
    assert set(results["classify"]) == {"maskinversion", "clip"}
    # clip gives every candidate the same embedding, so it always picks the first candidate (argmax of ties)
    refs = json.loads((folder / "expressions.json").read_text())
    first = np.mean([item["target_id"] == item["candidate_ids"][0] for item in refs])
    assert results["refer"]["clip"]["acc@1"] == pytest.approx(first)
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert stored["mislabel"]["clip"]["instances"] == results["instances"]
    assert "Bad-mask finding" in table and "| legrad_dice |" in table
    assert set(stored["badmask"]) == {"maskinversion", "maskinversion_class", "legrad_dice", "clip"}
    assert stored["badmask"]["maskinversion"]["instances"] == results["instances"]
