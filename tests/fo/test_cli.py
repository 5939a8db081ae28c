"""The ``maskinversion`` command as a user types it: a whole run by name, and one clear line per error."""

import subprocess
import sys

import pytest
from fiftyone import ViewField as F

from fiftyone_maskinversion.core.badmask import COMPONENTS

from ..helpers import delete_with_heatmaps, load_coco, save_checkpoint

pytestmark = pytest.mark.slow


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fiftyone_maskinversion.cli", *args], capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("maskinversion: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture
def dataset():
    dataset = load_coco(2, persistent=True)
    yield dataset
    delete_with_heatmaps(dataset)


def test_a_run_by_name_then_its_follow_up_commands(dataset, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", seed=2)
    name = dataset.name
    computed = cli("compute", name, "--label-field", "ground_truth", "--model", "mi-test-tiny", "--pretrained",
                   checkpoint, "--image-size", "64", "--iterations", "2", "--blocks=-1", "--shard", "0/1")
    assert computed.returncode == 0, computed.stderr
    regions = dataset.filter_labels("ground_truth", F("iscrowd") != 1).count("ground_truth.detections")
    assert f"computed {regions} " in computed.stdout and "ground_truth.mi_embedding_dice" in computed.stdout
    relabel = cli("relabel", name, "--label-field", "ground_truth", "--prompt", "a photo of a {}.")
    assert relabel.returncode == 0 and f"wrote {regions} predictions" in relabel.stdout, relabel.stderr
    search = cli("search", name, "--label-field", "ground_truth", "--text", "a dog", "--k", "3")
    assert search.returncode == 0 and len(search.stdout.strip().splitlines()) == 3, search.stderr
    scores = [float(line.split()[0]) for line in search.stdout.strip().splitlines()]
    assert scores == sorted(scores, reverse=True)
    crowd = dataset.filter_labels("ground_truth", F("iscrowd") == 1).values("ground_truth.detections.id", unwind=True)
    not_embedded = crowd[0] if crowd else "0" * 24
    assert_one_line_error(cli("search", name, "--label-field", "ground_truth", "--region-id", not_embedded),
                          "has no embedding")
    layout = cli("visualize", name, "--label-field", "ground_truth", "--method", "pca")
    assert layout.returncode == 0 and f"pca layout 'maskinversion_ground_truth_mi_embedding_viz' of {regions} " \
        "regions" in layout.stdout, layout.stderr
    mislabeled = cli("mislabeled", name, "--label-field", "ground_truth", "--limit", "2")
    rows = mislabeled.stdout.strip().splitlines()[1:]
    assert mislabeled.returncode == 0 and len(rows) == 2, mislabeled.stderr
    assert {row.split()[-1] for row in rows} <= set(dataset.values("ground_truth.detections.id", unwind=True))
    bad = cli("badmasks", name, "--label-field", "ground_truth", "--prompt", "a photo of a {}.", "--limit", "3",
              "--min-missing-score", "0")
    assert bad.returncode == 0 and f"scored {regions} regions (0 unscorable, 0 already reviewed with these settings)" \
        in bad.stdout, bad.stderr
    header, listing = bad.stdout.split("sample / label id\n")
    listed = [float(line.split()[0]) for line in listing.splitlines()[:3]]
    stored = dataset.values("ground_truth.detections.mi_embedding_mask_mistakenness", unwind=True)
    assert listed == pytest.approx(sorted((v for v in stored if v is not None), reverse=True)[:3], abs=1e-3)
    assert header.splitlines()[-1].split()[-len(COMPONENTS):] == list(COMPONENTS)  # each score's parts, named
    first = dataset.values("ground_truth.detections.id", unwind=True).index(listing.splitlines()[0].split()[-1])
    parts = [float(v) for v in listing.splitlines()[0].split()[-3 - len(COMPONENTS):-3]]  # before "sample / label"
    assert parts == pytest.approx([dataset.values(f"ground_truth.detections.mi_embedding_mask_{part}", unwind=True)[first]
                                   for part in COMPONENTS], abs=1e-3)
    assert "suggested missing regions (field 'missing_ground_truth_mi_embedding')" in bad.stdout
    index = cli("index", name, "--label-field", "ground_truth", "--backend", "lancedb", "--option",
                f"uri={tmp_path / 'lance'}")
    assert index.returncode == 0 and f"(lancedb) over {regions} regions" in index.stdout, index.stderr
    assert_one_line_error(cli("index", name, "--label-field", "ground_truth", "--option", "uri"), "KEY=VALUE")
    runs = cli("runs", name)
    assert runs.returncode == 0 and "mi-test-tiny" in runs.stdout and "relabel_ground_truth_mi_embedding" in runs.stdout


@pytest.mark.parametrize("shard", ["3", "1", "2/2", "a/b"])
def test_bad_shards_are_one_line_errors(dataset, shard):
    assert_one_line_error(cli("compute", dataset.name, "--label-field", "ground_truth", "--shard", shard), "--shard")


def test_other_errors_are_one_line_too(dataset):
    assert_one_line_error(cli("compute", "no-such-dataset", "--label-field", "ground_truth"), "no FiftyOne dataset")
    assert_one_line_error(cli("compute", dataset.name, "--label-field", "ground_truth", "--model", "mi-test-tiny",
                              "--pretrained", "", "--image-size", "64"), "random weights")
    assert_one_line_error(cli("relabel", dataset.name, "--label-field", "ground_truth"), "no region embeddings")
    assert_one_line_error(cli("badmasks", dataset.name, "--label-field", "ground_truth"), "no region embeddings")
    assert dataset.list_runs() == []


def test_the_demo_runs_end_to_end_and_finds_the_moved_masks_first():
    """The README's main command (offline: synthetic scenes with the model trained here): the whole loop runs with
    the default prompts (CLIP's template ensemble), and the masks moved on purpose are the top of the bad-mask list,
    each with the reason of its score."""
    import re

    import fiftyone as fo

    demo = cli("demo", "--synthetic")
    try:
        assert demo.returncode == 0, demo.stderr[-3000:]
        ranks = [int(r) for r in re.search(r"the moved masks rank \[([\d, ]+)\]", demo.stdout).group(1).split(",")]
        assert ranks and max(ranks) <= 5, demo.stdout
        reasons = re.findall(r"^\s+[\d.]+ \[([a-z ]+)\]: ", demo.stdout, flags=re.M)
        assert len(reasons) == 6 and set(reasons) <= {"wrong object", "shifted", "too small", "too large", "fits"}
    finally:
        if fo.dataset_exists("maskinversion-demo"):
            delete_with_heatmaps(fo.load_dataset("maskinversion-demo"))
