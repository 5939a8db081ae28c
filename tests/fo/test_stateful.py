"""A stateful property test of run ownership: random sequences of the public calls on a tiny dataset that also
holds the user's own fields and attributes with colliding names, on the dataset, views of it and clones of views;
the follow-ups (relabel, apply, undo, mask review) also start from the views a curator is in: patches views (of the
user's fields too) and the mislabeled and bad-mask views the package opens.

After every step: every field and label attribute the package does not own is byte-identical to the user's last
write (labels change only through apply/undo, exactly as they report); every name the package wrote is owned,
by exactly one run (a derived regions field by the runs of its Segmentation field); with no run left, the schema
is the user's. Hypothesis shrinks a failing sequence and prints it.
"""

import tempfile
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone import ViewField as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from PIL import Image

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo.runs import list_region_runs

from ..helpers import delete_with_heatmaps, make_backbone

pytestmark = pytest.mark.slow
SINGLE = "a photo of a {}."
FIELDS = ("ground_truth", "polys", "seg")
FAMILIES = ("mi_embedding", "mi_b")
USER_COLLISIONS = {  # the user's own data under names the package would choose by default
    "field": ["seg_regions", "relabel_ground_truth_mi_embedding"],
    "attribute": ["ground_truth.detections.mi_b_dice"],
}
BACKBONES = {}
CURATOR_VIEWS = st.sampled_from(["dataset", "match", "patches", "mislabeled", "bad masks", "hiding", "renaming"])


def backbone():
    if not BACKBONES:
        BACKBONES["tiny"] = make_backbone("mi-test-tiny")
    return BACKBONES["tiny"]


def make_dataset() -> fo.Dataset:
    """Three 64 x 80 images, each with instance masks, polygons and a semantic mask, and the user's own fields."""
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="mi-stateful-"))
    dataset = fo.Dataset()
    samples = []
    for i in range(3):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
        dets = []
        for k, (label, box) in enumerate((("cat", [0.1, 0.1, 0.4, 0.5]), ("dog", [0.5, 0.3, 0.4, 0.6]))):
            mask = rng.random((int(64 * box[3]), int(80 * box[2]))) > 0.3
            dets.append(fo.Detection(label=label, bounding_box=box, mask=mask, note=f"annotator {i}.{k}",
                                     mi_b_dice=0.5))
        polys = fo.Polylines(polylines=[fo.Polyline(label="kite", points=[[(.2, .2), (.7, .2), (.5, .8)]],
                                                    closed=True, filled=True, tags=["curator:checked"])])
        semantic = np.zeros((64, 80), dtype=np.uint8)
        semantic[5:40, 10:50], semantic[30:60, 40:78] = 1, 2
        samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=dets), polys=polys,
                                 seg=fo.Segmentation(mask=semantic),
                                 seg_regions=fo.Detections(detections=[d.copy() for d in dets]),
                                 relabel_ground_truth_mi_embedding="the user's own notes"))
    dataset.add_samples(samples, progress=False)
    dataset.mask_targets = {"seg": {1: "cat", 2: "dog"}}
    dataset.save()
    dataset.compute_metadata(progress=False)
    return dataset


def owned_names(dataset):
    """(owned sample fields, owned attributes by their list path) over every run of the dataset."""
    fields, attributes = set(), {}
    for run in list_region_runs(dataset):
        fields.update(run.owned["field"])
        for path in run.owned["attribute"]:
            parent, _, name = path.rpartition(".")
            attributes.setdefault(parent, set()).add(name)
    return fields, attributes


def user_view_of_docs(dataset) -> dict:
    """Every sample document as stored, less what the package owns and FiftyOne's own timestamps."""
    fields, attributes = owned_names(dataset)
    docs = {}
    for doc in dataset._sample_collection.find({}).sort("_id", 1):
        doc = {k: v for k, v in doc.items() if k not in fields and k != "last_modified_at"}
        for parent, names in attributes.items():
            field, _, list_name = parent.partition(".")
            container = doc.get(field)
            for label in (container or {}).get(list_name, []) or []:
                for name in names:
                    label.pop(name, None)
        docs[str(doc["_id"])] = doc
    return docs


def set_label(docs: dict, label_id: str, label: str) -> None:
    """Apply a label change to the expected documents (wherever the label id lives)."""
    for doc in docs.values():
        for value in doc.values():
            if isinstance(value, dict):
                for items in value.values():
                    for item in items if isinstance(items, list) else []:
                        if isinstance(item, dict) and str(item.get("_id")) == label_id:
                            item["label"] = label


class OwnershipMachine(RuleBasedStateMachine):
    """Random sequences of the public calls; the user's data must only change as the user or apply/undo say."""

    @initialize()
    def start(self):
        self.dataset = make_dataset()
        self.user_schema = set(self.dataset.get_field_schema(flat=True))
        self.expected = user_view_of_docs(self.dataset)
        self.edits = 0

    def teardown(self):
        delete_with_heatmaps(self.dataset)

    def target(self, which: str):
        return {"dataset": self.dataset, "skip": self.dataset.skip(1), "limit": self.dataset.limit(2),
                "match": self.dataset.match(F("filepath").ends_with("0.png"))}[which]

    def view_of_the_curator(self, which: str, field: str, family: str):
        """Where a curator may be when starting a follow-up: the dataset, a view, a view that hides the curator's
        attributes and tags or shows other label names (which must never be written back), a patches view of a
        field (the user's ``seg_regions`` too, which is not the run's), or the mislabeled / bad-mask views the
        package opened (the dataset where such a view does not exist yet)."""
        opened = {"mislabeled": lambda: mifo.find_mislabeled(self.dataset, field, embeddings_field=family),
                  "bad masks": lambda: mifo.find_bad_masks(self.dataset, field, family),
                  "patches": lambda: self.dataset.to_patches({"seg": "seg_regions"}.get(field, field))}
        if which == "hiding":
            return self.dataset.exclude_fields("ground_truth.detections.note").set_field("polys.polylines.tags", [])
        if which == "renaming":
            return self.dataset.map_labels("ground_truth", {"cat": "VIEW ONLY"}).set_field("polys.polylines.label", "x")
        if which not in opened:
            return self.target(which)
        try:
            return opened[which]()
        except ValueError:
            return self.dataset

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES),
          where=st.sampled_from(["dataset", "skip", "limit", "match"]), iterations=st.sampled_from([1, 2]),
          overwrite=st.booleans(), regions_field=st.sampled_from([None, "seg_mi"]))
    def compute(self, field, family, where, iterations, overwrite, regions_field):
        try:
            mifo.compute_region_embeddings(self.target(where), field, backbone=backbone(), iterations=iterations,
                                           embeddings_field=family, overwrite=overwrite,
                                           regions_field=regions_field if field == "seg" else None)
        except ValueError as err:  # refused: other settings without overwrite, or a name holding the user's data
            assert any(words in str(err) for words in ("other settings", "no MaskInversion run wrote",
                                                      "keeps its regions in", "belongs to")), err

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES), pred_field=st.sampled_from([None, "preds_a"]),
          overwrite=st.booleans(), where=CURATOR_VIEWS)
    def relabel(self, field, family, pred_field, overwrite, where):
        try:
            mifo.zero_shot_relabel(self.view_of_the_curator(where, field, family), field, family, prompt=SINGLE,
                                   pred_field=pred_field, overwrite=overwrite, backbone=backbone())
        except ValueError as err:
            assert any(words in str(err) for words in ("no region embeddings", "already exists", "no MaskInversion",
                                                      "belongs to", "backbone differs")), err

    @rule(field=st.sampled_from(["ground_truth", "polys"]), which=st.integers(0, 20))
    def user_edit(self, field, which):
        path = f"{field}.{'detections' if field == 'ground_truth' else 'polylines'}"
        ids = self.dataset.values(f"{path}.id", unwind=True)
        label_id = ids[which % len(ids)]
        self.edits += 1
        new = f"edited-{self.edits}"
        sample = self.dataset.match(F(f"{path}._id").contains(ObjectId(label_id))).first()
        for label in sample[field][path.split(".")[1]]:
            if label.id == label_id:
                label.label = new
        sample.save()
        set_label(self.expected, label_id, new)

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES), one=st.booleans(),
          low=st.booleans(), where=CURATOR_VIEWS)
    def apply(self, field, family, one, low, where):
        try:
            label_ids = None
            if one:
                run = [r for r in list_region_runs(self.dataset) if r.label_field == field
                       and r.embeddings_field == family]
                label_ids = self.dataset.values(f"{run[0].regions_field}.detections.id", unwind=True)[:1] if (
                    run and run[0].regions_field != "polys") else None
            changes = mifo.apply_relabel(self.view_of_the_curator(where, field, family), field,
                                         embeddings_field=family, threshold=0.0,
                                         label_ids=label_ids, include_low_fidelity=low)
        except ValueError as err:
            assert "no predictions" in str(err) or "no region embeddings" in str(err), err
            return
        for label_id, (_, after) in changes.changed.items():
            set_label(self.expected, label_id, after)

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES), where=CURATOR_VIEWS)
    def undo(self, field, family, where):
        try:
            changes = mifo.undo_relabel(self.view_of_the_curator(where, field, family), field, embeddings_field=family)
        except ValueError as err:
            assert "no region embeddings" in str(err), err
            return
        for label_id, (_, after) in changes.changed.items():
            set_label(self.expected, label_id, after)

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES), missing=st.booleans(),
          overwrite=st.booleans(), where=CURATOR_VIEWS)
    def review_masks(self, field, family, missing, overwrite, where):
        try:
            mifo.score_masks(self.view_of_the_curator(where, field, family), field, family, prompt=SINGLE,
                             suggest_missing=missing, overwrite=overwrite,
                             backbone=backbone())
        except ValueError as err:
            assert any(words in str(err) for words in ("no region embeddings", "other settings", "belongs to",
                                                      "backbone differs")), err
            return
        before = user_view_of_docs(self.dataset), [r.owned for r in list_region_runs(self.dataset)]
        mifo.find_bad_masks(self.dataset, field, family)  # a view: writes nothing at all
        assert (user_view_of_docs(self.dataset), [r.owned for r in list_region_runs(self.dataset)]) == before

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES))
    def index(self, field, family):
        try:
            mifo.build_region_index(self.dataset, field, family, overwrite=True)
        except ValueError as err:
            assert "no region embeddings" in str(err) or "no embedded region" in str(err), err

    @rule(field=st.sampled_from(FIELDS), family=st.sampled_from(FAMILIES), discard=st.booleans())
    def delete(self, field, family, discard):
        try:
            mifo.delete_region_results(self.dataset, field, family, discard_relabel_history=discard)
        except ValueError as err:
            assert "no region embeddings" in str(err) or "carry applied relabels" in str(err), err

    @rule(which=st.sampled_from(["skip", "limit"]))
    def clone_and_work_there(self, which):
        before = user_view_of_docs(self.dataset)
        clone = self.target(which).clone()
        try:
            mifo.adopt_region_runs(clone)
            for run in list_region_runs(clone):
                mifo.delete_region_results(clone, run.label_field, run.embeddings_field, discard_relabel_history=True)
            left = set(clone.get_field_schema(flat=True)) - self.user_schema
            # the clone's own runs removed cleanly; a view clone also copies the declarations of attributes that
            # none of its labels holds (nothing to adopt): those stay declared, empty
            assert all(clone.count(path) == 0 for path in left), left
        finally:
            delete_with_heatmaps(clone)
        assert user_view_of_docs(self.dataset) == before

    @rule()
    def rename_and_back(self):
        self.dataset.rename_sample_field("ground_truth", "gt_renamed")
        try:
            with pytest.raises(ValueError):
                mifo.zero_shot_relabel(self.dataset, "gt_renamed", prompt=SINGLE, backbone=backbone())
        finally:
            self.dataset.rename_sample_field("gt_renamed", "ground_truth")

    @rule(flag=st.booleans())
    def persistence(self, flag):
        self.dataset.persistent = flag

    @invariant()
    def users_data_is_what_the_user_and_apply_left(self):
        if hasattr(self, "dataset"):
            assert user_view_of_docs(self.dataset) == self.expected

    @invariant()
    def every_written_name_has_exactly_one_owner(self):
        if not hasattr(self, "dataset"):
            return
        runs = list_region_runs(self.dataset)
        seen = {}
        for run in runs:
            for kind, names in run.owned.items():
                for name in names:
                    shared = kind == "field" and name == run.regions_field and run.derived
                    key = (kind, name)
                    if key in seen and not (shared and seen[key].label_field == run.label_field):
                        raise AssertionError(f"{key} owned by {seen[key].describe()} and {run.describe()}")
                    seen[key] = run
        for kind, names in USER_COLLISIONS.items():
            assert not any((kind, n) in seen for n in names), "a user's name was claimed"
        schema = set(self.dataset.get_field_schema(flat=True))
        owned_fields = {n for (k, n) in seen if k == "field"}
        owned_attributes = {n for (k, n) in seen if k == "attribute"}
        for path in schema - self.user_schema:
            assert path in owned_attributes or path.split(".")[0] in owned_fields, f"{path} is owned by no run"
        if not runs:
            assert schema == self.user_schema


OwnershipMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None,
                                              suppress_health_check=list(HealthCheck), derandomize=True)
TestOwnership = OwnershipMachine.TestCase
