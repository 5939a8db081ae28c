"""The evaluation harness: metric definitions on hand-computed cases and a whole run on synthetic data."""

import json

import numpy as np
import pytest

from fiftyone_maskinversion.core.badmask import COMPONENTS
from fiftyone_maskinversion.evaluation import run, run_seeds
from fiftyone_maskinversion.evaluation.tasks import auroc
from fiftyone_maskinversion.synthetic import CLASSES, make_scene, scenes, write_coco
from fiftyone_maskinversion.synthetic.scenes import CONTEXT_CLASSES, CONTEXT_OBJECTS, GROUND, SKY
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
    components = {f"mask:{name}" for name in COMPONENTS}
    assert set(stored["badmask"]) == {"maskinversion", "maskinversion_class", "legrad_dice", "clip"} | components
    assert 0 <= stored["badmask"]["maskinversion"]["reason_right"] <= 1
    assert stored["badmask"]["maskinversion"]["instances"] == results["instances"]


def test_context_scenes_name_each_square_by_its_colour_and_band(tmp_path):
    for scene in scenes(11, 10, world="context"):
        background = ~scene.masks.any(axis=0)
        rows = [scene.image[y][background[y]].mean(axis=0) for y in range(scene.image.shape[0])]
        horizon = next(y for y, c in enumerate(rows) if np.abs(c - GROUND).sum() < np.abs(c - SKY).sum())
        assert len(set(scene.names)) == len(scene.names) and all(n in CONTEXT_CLASSES for n in scene.names)
        for mask, name in zip(scene.masks, scene.names):
            ys, xs = np.nonzero(mask)
            assert mask.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # a full square: its box crop shows no context
            colour = min(CONTEXT_OBJECTS, key=lambda c: np.abs(scene.image[mask].mean(axis=0) - c).sum())
            assert ys.max() < horizon or ys.min() >= horizon  # inside one band
            assert name == CONTEXT_OBJECTS[colour][int(ys.min() >= horizon)]
    folder = write_coco(tmp_path / "context", seed=11, count=2, world="context")
    data = json.loads((folder / "instances.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(CONTEXT_CLASSES)
    with pytest.raises(ValueError, match="unknown synthetic world"):
        write_coco(tmp_path / "never", seed=1, count=1, world="moon")
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_run_seeds_writes_one_run_per_seed_and_their_mean(tiny, tmp_path):
    by_seed = run_seeds(tiny, [3, 5], 2, tmp_path / "out", tasks=["badmask"], methods=["maskinversion"], iterations=1)
    stored = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert set(stored) == {"3", "5"} and all((tmp_path / "out" / f"seed-{s}" / "results.md").is_file() for s in (3, 5))
    table = (tmp_path / "out" / "seeds.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    mean = np.nanmean([by_seed[s]["badmask"]["maskinversion"]["auroc"] for s in (3, 5)])
    section = table.split("## ")[1]  # the maskinversion section comes first
    mean_row = next(line for line in section.splitlines() if line.startswith("| mean"))
    assert f"**{mean:.3f}**" == mean_row.split("|")[2].strip()
    assert "3" in rows and "5" in rows
    with pytest.raises(ValueError, match="distinct"):
        run_seeds(tiny, [3, 3], 2, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_eval_command_checks_its_seeds_before_any_work(tmp_path, capsys):
    from fiftyone_maskinversion.cli import main

    for argv, message in [(["--seeds", "7,x", "--synthetic", "2"], "comma-separated integers"),
                          (["--seeds", "7,7", "--synthetic", "2"], "distinct"),
                          (["--seeds", "7", "--coco-dir", str(tmp_path)], "needs --synthetic"),
                          (["--world", "moon", "--synthetic", "2"], "unknown --world"),
                          (["--mask-kinds", "swap", "--synthetic", "2"], "--mask-kinds")]:
        with pytest.raises(SystemExit):
            main(["eval", "badmask", "--out", str(tmp_path / "out"), *argv])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
