"""Every view the package opens maps back to the user's dataset and the regions it shows, and the plugin's
follow-up operators run from each of them (issue 16, observation 1: they failed with "holds Detection")."""

import fiftyone.operators as foo
import pytest
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo.heatmaps import region_heatmaps_view
from fiftyone_maskinversion.fo.targets import resolve_target

from ..helpers import delete_with_heatmaps, reviewed_coco

pytestmark = pytest.mark.slow
PLUGIN = "@fiftyone-maskinversion/maskinversion"
SINGLE = "a photo of a {}."
PRED = "relabel_ground_truth_mi_embedding"
MISSING = "missing_ground_truth_mi_embedding"


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    dataset, backbone = reviewed_coco(tmp_path_factory.mktemp("weights"))
    yield dataset, backbone
    delete_with_heatmaps(dataset)


def applied_ids(dataset):
    """The regions whose label an apply changed and no undo restored (their relabel history is not empty)."""
    return {d.id for d in dataset.values("ground_truth.detections", unwind=True)
            if d.get_attribute_value("mi_embedding_relabel_to", None)}


def region_ids(dataset, expression):
    """The ids of the ground-truth regions matching ``expression``, read straight from the dataset."""
    return set(dataset.filter_labels("ground_truth", expression).values("ground_truth.detections.id", unwind=True))


def test_a_plain_view_is_its_own_target(reviewed):
    dataset, _ = reviewed
    view = dataset.limit(1)
    target = resolve_target(view)
    assert target.dataset is dataset and target.samples is view and target.label_ids is None
    assert target.regions is view


def test_the_mislabeled_view_maps_to_its_regions_in_rank_order(reviewed):
    dataset, _ = reviewed
    target = resolve_target(mifo.find_mislabeled(dataset, "ground_truth"))
    assert target.dataset.name == dataset.name and target.kind == "patches"
    assert (target.field, target.label_field, target.embeddings_field) == ("ground_truth",) * 2 + ("mi_embedding",)
    ranked = (F("mi_embedding_mistakenness") != None) & (F("mi_embedding_low_fidelity") != True)  # noqa: E711,E712
    expected = region_ids(dataset, ranked)
    assert set(target.label_ids) == expected and len(target.label_ids) == len(expected) > 0
    scores = {d.id: d.mi_embedding_mistakenness for d in dataset.values("ground_truth.detections", unwind=True)}
    assert [scores[i] for i in target.label_ids] == sorted((scores[i] for i in expected), reverse=True)
    # the regions view holds exactly those labels of the user's dataset (not the patches dataset)
    assert set(target.regions.values("ground_truth.detections.id", unwind=True)) == expected
    assert target.regions._dataset.name == dataset.name


def test_a_selection_of_patches_maps_to_the_selected_regions(reviewed):
    dataset, _ = reviewed
    patches = mifo.find_bad_masks(dataset, "ground_truth")
    chosen = patches.skip(1).limit(2)
    target = resolve_target(chosen)
    assert target.label_ids == chosen.values("ground_truth.id")  # a patch holds one region: its own id
    assert set(target.regions.values("ground_truth.detections.id", unwind=True)) == set(target.label_ids)
    assert set(target.samples.values("id")) == set(chosen.values("sample_id"))


def test_the_missing_region_view_maps_to_its_samples_and_the_runs_field(reviewed):
    dataset, _ = reviewed
    patches = mifo.find_missing_regions(dataset, "ground_truth")
    assert len(patches) > 0
    target = resolve_target(patches)
    assert (target.field, target.label_field) == (MISSING, "ground_truth")
    assert set(target.samples.values("id")) == set(dataset.exists(MISSING).match(
        F(f"{MISSING}.detections").length() > 0).values("id"))
    assert target.regions is target.samples  # suggestions are not regions of the field: every region of them


def test_search_results_and_the_heatmaps_dataset_map_back(reviewed):
    dataset, backbone = reviewed
    found = mifo.search_regions(dataset, "ground_truth", text="a dog", k=3, backbone=backbone)
    assert resolve_target(found).label_ids == found.values("ground_truth.id")
    label_ids = sorted(region_ids(dataset, F("mi_embedding").exists()))[:3]
    heat = region_heatmaps_view(dataset, label_ids=label_ids)
    target = resolve_target(heat)
    assert target.kind == "heatmaps" and target.dataset.name == dataset.name
    assert sorted(target.label_ids) == label_ids and target.label_field == "ground_truth"
    assert sorted(target.regions.values("ground_truth.detections.id", unwind=True)) == label_ids


def run_operator(operator, view, selected=(), **params):
    """Run a plugin operator as the App does from ``view`` (its dataset: the root of a patches view)."""
    ctx = {"dataset": view._root_dataset.name if view._is_patches else view._dataset.name,
           "view": view, "params": params, "selected": list(selected)}
    return foo.execute_operator(f"{PLUGIN}/{operator}", ctx=ctx).result


def test_follow_up_operators_run_from_every_view_the_package_opens(reviewed):
    """Observation 1: from the mislabeled view, find_bad_masks (current and base view) and apply_relabel on
    a selected patch failed with "field 'ground_truth' of '<patches dataset>' holds Detection"."""
    dataset, _ = reviewed
    mislabeled = mifo.find_mislabeled(dataset, "ground_truth")
    for target in ("CURRENT_VIEW", "BASE_VIEW"):
        result = run_operator("find_bad_masks", mislabeled, label_field="ground_truth", prompt=SINGLE,
                              min_missing_score=0.0, confirmation=0.0, view_target=target)  # the review's settings
        assert result["failed"] == 0 and result["missing_field"] == MISSING
    first = mislabeled.first()
    prediction = mifo.prediction_of(first, PRED)
    result = run_operator("apply_relabel", mislabeled, selected=[first.id], label_field="ground_truth",
                          threshold=0.0, view_target="SELECTED_SAMPLES")
    region = dataset.select_labels(ids=[first.ground_truth.id]).first().ground_truth.detections[0]
    changed = prediction.label != first.ground_truth.label
    assert result["changed"] == int(changed) and region.label == prediction.label
    others = applied_ids(dataset)
    assert others == ({region.id} if changed else set())  # that one region, no other
    run_operator("apply_relabel", mislabeled, selected=[first.id], label_field="ground_truth", undo=True,
                 view_target="SELECTED_SAMPLES")
    assert not applied_ids(dataset)

    heat = region_heatmaps_view(dataset, label_ids=[first.ground_truth.id])
    result = run_operator("search_regions", heat, label_field="ground_truth", text="", k=2)
    assert result == {"regions": 2}  # no text, nothing selected: the heatmap's region is the query


def test_every_follow_up_from_every_view(reviewed):
    """Each follow-up (score, relabel, apply preview-free at an unreachable threshold, the review views,
    search, heatmaps, layout) from each view the package opens, targeting that view: each acts on the
    user's dataset, and only on the view's samples where it writes."""
    dataset, _ = reviewed
    label_ids = sorted(region_ids(dataset, F("mi_embedding").exists()))
    views = {
        "mislabeled": mifo.find_mislabeled(dataset, "ground_truth"),
        "bad masks": mifo.find_bad_masks(dataset, "ground_truth"),
        "missing": mifo.find_missing_regions(dataset, "ground_truth"),
        "search": mifo.search_regions(dataset, "ground_truth", text="a dog", k=3, backbone=reviewed[1]),
        "heatmaps": region_heatmaps_view(dataset, label_ids=label_ids[:3]),
        "selection": mifo.find_bad_masks(dataset, "ground_truth").limit(2),
    }
    follow_ups = {
        "find_bad_masks": dict(score=False),
        "find_mislabeled": {},
        "show_missing_regions": {},
        "search_regions": dict(text="a cat", k=2),
        "zero_shot_relabel": dict(prompt=SINGLE, overwrite=True, view_target="CURRENT_VIEW"),
        "apply_relabel": dict(threshold=1.0, view_target="CURRENT_VIEW"),
    }
    relabelled = region_ids(dataset, F("mi_embedding_predicted_label").exists())
    for name, view in views.items():
        for operator, params in follow_ups.items():
            try:
                result = run_operator(operator, view, label_field="ground_truth", **params)
            except Exception as error:
                raise AssertionError(f"{operator} from the {name} view: {error}") from error
            assert result.get("failed", 0) == 0, (name, operator, result)
        assert region_ids(dataset, F("mi_embedding_predicted_label").exists()) == relabelled  # nothing lost
    assert not applied_ids(dataset)  # threshold 1.0: nothing applied
