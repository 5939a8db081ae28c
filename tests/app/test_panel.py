"""The plugin without a browser: the MaskInversion panel's data and actions on one region (issue 16,
observations 2 and 3), the operators' summaries (8), the compute form (9) and the first-open look (10).
The panel is driven through its own hooks with a stand-in for the App's context that records what it
asks the App to do; the browser walk is in test_app.py."""

import importlib.util
from types import SimpleNamespace

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo.appearance import HEATMAP_OPACITY, REVIEW_OPACITY, SIDEBAR_GROUP

from ..helpers import REPO, delete_with_heatmaps, reviewed_coco

pytestmark = pytest.mark.slow
URI = "@fiftyone-maskinversion/maskinversion"
PRED = "relabel_ground_truth_mi_embedding"
MISSING = "missing_ground_truth_mi_embedding"


def load_plugin():
    spec = importlib.util.spec_from_file_location("mi_plugin_under_test", REPO / "plugin" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = load_plugin()


class PanelStandIn:
    def __init__(self):
        self.state, self.data = {}, {}

    def set_state(self, key, value=None):
        self.state[key] = value

    def get_state(self, key, default=None):
        return self.state.get(key, default)

    def set_data(self, key, value=None):
        self.data[key] = value


class OpsRecorder:
    """Records every App operation asked for (name, keyword arguments)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def app_context(view, current_sample=None, selected_labels=(), **params):
    dataset = view._root_dataset if view._is_patches else view._dataset
    return SimpleNamespace(dataset=dataset, view=view, current_sample=current_sample,
                           selected_labels=list(selected_labels), selected=[], params=params,
                           panel=PanelStandIn(), ops=OpsRecorder(), trigger=lambda *a, **k: None)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    dataset, backbone = reviewed_coco(tmp_path_factory.mktemp("weights"))
    yield dataset
    delete_with_heatmaps(dataset)


def region_of(dataset, label_id):
    return dataset.select_labels(ids=[label_id]).first().ground_truth.detections[0]


def test_the_panel_shows_a_flagged_regions_results_and_acts_on_that_region_only(reviewed):
    dataset = reviewed
    mislabeled = mifo.find_mislabeled(dataset, "ground_truth")
    patch = next(p for p in mislabeled if mifo.prediction_of(p, PRED).label != p.ground_truth.label)
    prediction, label_id = mifo.prediction_of(patch, PRED), patch.ground_truth.id
    others = {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True) if d.id != label_id}
    ctx = app_context(mislabeled, current_sample=patch.id)
    panel = plugin.RegionPanel()
    panel.on_load(ctx)

    assert ctx.panel.state["region"]["label_id"] == label_id  # the open patch's region
    text = ctx.panel.state["text"]
    assert f"#### {patch.ground_truth.label}  (ground_truth, annotation)" in text
    assert f"Prediction: **{prediction.label}**" in text and "class mistakenness" in text
    assert ctx.panel.data["picture"].startswith("data:image/jpeg;base64,")
    region = region_of(dataset, label_id)
    assert ctx.panel.data["topk"][0]["y"] == region.mi_embedding_topk_labels[::-1]  # most likely at the top
    assert ctx.panel.data["topk"][0]["x"] == region.mi_embedding_topk_scores[::-1]
    rendered = panel.render(ctx).type.properties
    assert {"picture", "text", "topk", "actions", "tags", "new_label", "set_label"} <= set(rendered)

    panel.accept(ctx)
    assert region_of(dataset, label_id).label == prediction.label
    assert {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True) if d.id != label_id} == \
        others  # no other region changed
    assert "Relabelled by the package from" in ctx.panel.state["text"]
    panel.undo(ctx)
    assert region_of(dataset, label_id).label == patch.ground_truth.label
    assert not region_of(dataset, label_id).mi_embedding_relabel_to  # its history is empty again

    ctx.panel.state["new_label"] = "zebra"
    panel.set_label(ctx)
    assert region_of(dataset, label_id).label == "zebra"
    companion = mifo.heatmaps_dataset(dataset)
    assert companion.match(F("source_label_id") == label_id).values("label") == ["zebra"]  # its heatmap follows
    dataset.set_label_values("ground_truth.detections.label", {label_id: patch.ground_truth.label})

    panel.tag_bad_mask(ctx)
    assert region_of(dataset, label_id).tags == ["mi:bad-mask"]
    panel.tag_ok(ctx)  # one verdict at a time
    assert region_of(dataset, label_id).tags == ["mi:ok"]
    assert dataset.count_label_tags() == {"mi:ok": 1}

    ids = mislabeled.values("id")
    ctx.ops.calls.clear()
    panel.next_region(ctx)
    assert ctx.ops.calls == [("open_sample", (), {"id": ids[ids.index(patch.id) + 1]})]


def test_a_region_clicked_in_the_dataset_is_reviewed_and_a_sample_alone_asks_for_a_click(reviewed):
    dataset = reviewed
    sample = dataset.first()
    region = next(d for d in sample.ground_truth.detections if d.has_field("mi_embedding"))
    ctx = app_context(dataset.view(), current_sample=sample.id)
    plugin.RegionPanel().on_load(ctx)
    assert ctx.panel.state["region"] is None and ctx.panel.state["notice"].startswith("Click a region")
    ctx.selected_labels = [{"label_id": region.id, "sample_id": sample.id, "field": "ground_truth"}]
    plugin.RegionPanel().on_change_selected_labels(ctx)
    assert ctx.panel.state["region"]["label_id"] == region.id


def test_a_heatmap_opened_in_the_heatmaps_dataset_is_reviewed_as_its_region(reviewed):
    dataset = reviewed
    region = next(d for d in dataset.first().ground_truth.detections if d.has_field("mi_embedding"))
    companion = mifo.heatmaps_dataset(dataset)
    heat = companion.match(F("source_label_id") == region.id).first()
    ctx = app_context(companion.view(), current_sample=heat.id)
    plugin.RegionPanel().on_load(ctx)
    assert ctx.panel.state["region"] == {"label_id": region.id, "field": "ground_truth", "label_field": "ground_truth",
                                         "embeddings_field": "mi_embedding"}


def test_the_grid_panel_lists_each_run_with_its_counts_and_opens_its_views(reviewed):
    dataset = reviewed
    ctx = app_context(dataset.view())
    panel = plugin.RegionPanel()
    panel.on_load(ctx)
    (run,) = ctx.panel.state["runs"]
    embedded = dataset.count("ground_truth.detections.mi_embedding")
    scored = dataset.count("ground_truth.detections.mi_embedding_mask_mistakenness")
    assert f"{embedded} regions embedded" in run["text"] and f"{scored} masks scored" in run["text"]
    assert PRED in run["text"] and MISSING in run["text"]
    ctx.params = {"label_field": "ground_truth", "embeddings_field": "mi_embedding", "kind": "missing"}
    panel.open_review(ctx)
    ((name, (view,), _),) = [c for c in ctx.ops.calls if c[0] == "set_view"]
    assert view.patches_field == MISSING and len(view) == dataset.count(f"{MISSING}.detections") > 0


def test_operators_end_with_a_readable_summary_and_the_first_open_looks_reviewed(reviewed):
    dataset = reviewed

    def run(operator, **params):
        result = foo.execute_operator(f"{URI}/{operator}", ctx={"dataset": dataset.name, "view": dataset.view(),
                                                                  "params": params}).result
        output = foo.get_operator(f"{URI}/{operator}").resolve_output(SimpleNamespace(results=result))
        return result, output.type.properties["summary"].view.label

    result, text = run("find_mislabeled", label_field="ground_truth")
    assert text.startswith(f"{result['regions']} regions, the most likely mislabeled first (sorted by class "
                           "mistakenness")
    assert "annotation (the label field) and the prediction" in text
    result, text = run("show_missing_regions", label_field="ground_truth")
    assert result == {"regions": dataset.count(f"{MISSING}.detections"), "field": MISSING}
    assert text.startswith(f"{result['regions']} suggested missing regions")
    # the review look: set on first use, and the package's own fields grouped in the sidebar
    dataset.reload()
    assert dataset.app_config.color_scheme.opacity == REVIEW_OPACITY
    (group,) = [g for g in dataset.app_config.sidebar_groups if g.name == SIDEBAR_GROUP]
    assert set(group.paths) == {PRED, MISSING}
    assert all(PRED not in g.paths for g in dataset.app_config.sidebar_groups if g.name != SIDEBAR_GROUP)


def test_the_compute_form_starts_from_the_fields_run_and_offers_only_the_users_fields(reviewed):
    dataset = reviewed
    (record,) = mifo.list_region_runs(dataset)
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    form = foo.get_operator(f"{URI}/compute_region_embeddings").resolve_input(ctx).type.properties
    assert form["label_field"].type.values == ["ground_truth"]  # not the run's predictions or suggestions
    assert dataset.has_sample_field(PRED) and dataset.has_sample_field(MISSING)
    expected = {"model_name": "mi-test-tiny", "pretrained": record.settings["pretrained"], "image_size": 64,
                "iterations": 1}
    assert {k: form[k].default for k in expected} == expected
    # no background run on offer where none is set up; the form says how to set it up instead
    assert not fo.config.allow_legacy_orchestrators
    assert "delegate" not in form and "num_shards" not in form
    assert "fiftyone delegated launch" in form["delegation_help"].view.label


def run_operator(dataset, operator, view=None, **params):
    """Run an operator as the App would on ``view`` (default: the dataset); returns its result dict."""
    view = view if view is not None else dataset.view()
    return foo.execute_operator(f"{URI}/{operator}", ctx={"dataset": dataset.name, "view": view,
                                                          "params": params}).result


def test_reopening_the_bad_mask_view_recomputes_nothing_and_names_the_suggestions(reviewed):
    """Observation 5: re-opening it re-ran the review (107 s) although every region was scored, and the
    suggested missing regions were never mentioned."""
    dataset = reviewed
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    form = foo.get_operator(f"{URI}/find_bad_masks").resolve_input(ctx).type.properties
    assert form["score"].default is False  # every embedded region has its score already
    assert "prompt" not in form and "0 embedded regions have no mask score" in form["score"].view.description
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": {"score": True}})
    form = foo.get_operator(f"{URI}/find_bad_masks").resolve_input(ctx).type.properties
    # a rescore starts from the latest review's settings (others would be refused without overwrite)
    assert (form["prompt"].default, form["min_missing_score"].default, form["confirmation"].default,
            form["suggest_missing"].default) == ("a photo of a {}.", 0.0, 0.0, True)
    before = dataset.values(f"{MISSING}.detections.id", unwind=True)
    result = run_operator(dataset, "find_bad_masks", label_field="ground_truth", score=False)
    assert result["scored"] == 0 and dataset.values(f"{MISSING}.detections.id", unwind=True) == before
    assert result["regions"] == dataset.count("ground_truth.detections.mi_embedding_mask_mistakenness")
    text = foo.get_operator(f"{URI}/find_bad_masks").summary({**result, "suggested": 3, "missing_field": MISSING})
    assert "3 missing regions suggested" in text and "show suggested missing regions" in text


def test_heatmaps_have_a_colour_scale_and_going_back_leaves_no_stale_dialog(reviewed):
    """Observation 4: a faint one-colour tint with no scale and no label or Dice on the tile; going back
    left a dialog "heatmaps: No value provided"."""
    dataset = reviewed
    region = next(d for d in dataset.first().ground_truth.detections if d.has_field("mi_embedding"))
    foo.execute_operator(f"{URI}/show_region_heatmaps", ctx={
        "dataset": dataset.name, "view": dataset.view(), "params": {},
        "selected_labels": [{"label_id": region.id, "sample_id": dataset.first().id, "field": "ground_truth"}]})
    companion = mifo.heatmaps_dataset(dataset)
    companion.reload()
    scheme = companion.app_config.color_scheme
    assert [(c["path"], c["name"]) for c in scheme.colorscales] == [("heatmap", "viridis")]
    assert scheme.opacity == HEATMAP_OPACITY > REVIEW_OPACITY and scheme.color_by == "value"  # the App uses the
    # colour scale for a heatmap only when colouring by value (seen in the App: by field it drew one tint)
    assert {"heatmap", "label", "dice"} <= set(companion.app_config.active_fields.paths)
    operator = foo.get_operator(f"{URI}/show_region_heatmaps")
    back = foo.execute_operator(f"{URI}/show_region_heatmaps", ctx={"dataset": companion.name,
                                                                    "view": companion.view(), "params": {}}).result
    assert back == {"dataset": dataset.name}
    assert operator.resolve_output(SimpleNamespace(results=back)) is None  # no dialog of empty outputs


def test_the_index_operator_makes_search_read_the_query(reviewed):
    """Observation 7: no operator built the region index, so a search's view bar read `Select(ids)`."""
    dataset = reviewed
    result = run_operator(dataset, "build_region_index", label_field="ground_truth")
    embedded = dataset.count("ground_truth.detections.mi_embedding")
    assert result == {"brain_key": "maskinversion_ground_truth_mi_embedding_sim", "regions": embedded, "text": True}
    view = mifo.search_regions(dataset, "ground_truth", text="a red circle", k=3)
    stage = view._stages[-1]
    assert type(stage).__name__ == "SortBySimilarity" and stage.query == "a red circle"


def test_a_bulk_apply_is_previewed_first_and_says_what_changed(reviewed):
    """Observation 2: apply_relabel at 0.9 silently relabelled 6 regions, two of them of low fidelity, with no
    preview and no count."""
    dataset = reviewed
    labels = {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True)}
    expected = {d.id for d in dataset.values("ground_truth.detections", unwind=True)
                if d.get_attribute_value("mi_embedding_predicted_label", None) not in (None, d.label)
                and not d.mi_embedding_low_fidelity}  # every confidence passes threshold 0; low fidelity left out
    result = run_operator(dataset, "apply_relabel", label_field="ground_truth", threshold=0.0, preview=True)
    assert result["preview"] and result["changed"] == len(expected) > 0
    assert {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True)} == labels  # unwritten
    text = foo.get_operator(f"{URI}/apply_relabel").summary(result)
    assert text.startswith(f"Preview, nothing written: would change {len(expected)} label(s)")
    result = run_operator(dataset, "apply_relabel", label_field="ground_truth", threshold=0.0)
    now = {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True)}
    assert {i for i in labels if now[i] != labels[i]} == expected and result["changed"] == len(expected)
    run_operator(dataset, "apply_relabel", label_field="ground_truth", undo=True)
    assert {d.id: d.label for d in dataset.values("ground_truth.detections", unwind=True)} == labels
