"""Region-embedding runs as FiftyOne custom runs: one per (dataset, label field, embeddings field).

A run's record holds the settings that decide its embeddings (model identity, weights digest,
activation, method) and their digest ``settings_id``, a ``run_uid`` drawn when the run was first
started (labels carry ``<run_uid>.<settings_id>``, the run's *stamp*, so a label says which run and
which settings made it, and a clone's labels say where they came from), where its regions live (the
label field, or the Detections field derived from a Segmentation field), the dataset it was computed
on (a dataset clone copies the record under another dataset id) and every name it owns (see
:mod:`.ownership`).

Records are read straight from the database and every change is one atomic update of one record
(never a rewrite from an in-memory copy), so processes that add outputs to one run at once keep each
other's. Reading a record never writes anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import fiftyone.core.odm as foo
import numpy as np
from bson import ObjectId

from ..core.backbone import Backbone, load_backbone
from ..core.badmask import COMPONENTS
from .regions import REGION_TYPES, label_type, list_path

METHOD = "maskinversion"
TEXT_CACHE = "config.text_cache"  # class text embeddings of recent vocabularies (see vocabulary); never loaded whole
TEXT_CACHE_KEEP = 4
OWNED_KINDS = ("attribute", "field", "brain_key", "folder")  # what a run can own (see ownership)
DEFAULT_HEATMAPS = {"storage": "database", "folder": None}  # of a record that names none (made before runs chose)


@dataclass(frozen=True)
class RegionRun:
    """A snapshot of one run's record (see module docstring); change it only through this module."""

    key: str
    label_field: str
    regions_field: str
    embeddings_field: str
    settings: dict
    settings_id: str
    run_uid: str
    dataset_id: str
    owned: Dict[str, List[str]] = field(default_factory=dict)
    roles: Dict[str, str] = field(default_factory=dict)  # role -> owned name (brain_key, visualization_key)
    mask_review: Optional[dict] = None  # the settings of the latest score_masks
    heatmaps: dict = field(default_factory=lambda: dict(DEFAULT_HEATMAPS))  # storage and files folder (see heatmaps)
    version: str = ""
    doc_id: object = None

    @property
    def derived(self) -> bool:
        """Whether the regions live in a Detections field derived from a Segmentation field."""
        return self.regions_field != self.label_field

    @property
    def stamp(self) -> str:
        """What every label embedded by this run with its current settings holds in ``<embeddings>_run``."""
        return f"{self.run_uid}.{self.settings_id}"

    @property
    def pred_fields(self) -> List[str]:
        """The sample fields of predictions and suggestions the run owns (all but its regions field)."""
        return [f for f in self.owned.get("field", []) if f != self.regions_field]

    @property
    def brain_key(self) -> Optional[str]:
        return self.roles.get("brain_key")

    @property
    def visualization_key(self) -> Optional[str]:
        return self.roles.get("visualization_key")

    def owns(self, kind: str, name: str) -> bool:
        return name in self.owned.get(kind, [])

    def describe(self) -> str:
        where = f"{self.label_field!r}" + (f" (regions in {self.regions_field!r})" if self.derived else "")
        return f"embeddings {self.embeddings_field!r} on {where}"


def attribute_names(embeddings_field: str) -> dict:
    """The label attributes one run writes, all prefixed by the embeddings field name: the inversion's
    (embedding, dice, iou, error, run stamp), the latest zero-shot relabel's (predicted label, top-k,
    mistakenness, low fidelity), the mask review's (mask mistakenness, the review's stamp) and the
    relabel history (labels before / after each apply), so the App's sidebar filters on the field
    the user reviews."""
    return {
        "embedding": embeddings_field,
        "dice": f"{embeddings_field}_dice",
        "iou": f"{embeddings_field}_iou",
        "error": f"{embeddings_field}_error",
        "run": f"{embeddings_field}_run",
        "predicted_label": f"{embeddings_field}_predicted_label",
        "topk_labels": f"{embeddings_field}_topk_labels",
        "topk_scores": f"{embeddings_field}_topk_scores",
        "mistakenness": f"{embeddings_field}_mistakenness",
        "low_fidelity": f"{embeddings_field}_low_fidelity",
        "mask_mistakenness": f"{embeddings_field}_mask_mistakenness",
        "mask_review": f"{embeddings_field}_mask_review",
        "mask_reason": f"{embeddings_field}_mask_reason",
        **{f"mask_{part}": f"{embeddings_field}_mask_{part}" for part in COMPONENTS},
        "relabel_from": f"{embeddings_field}_relabel_from",
        "relabel_to": f"{embeddings_field}_relabel_to",
    }


# The order a region's run attributes are stored in. The App's hover tooltip lists a label's attributes
# (after label and confidence) in the order of its stored document, in a box 40% of the window high that
# scrolls only once locked (Ctrl); and FiftyOne's server sends every bytes value inside a Detection to the
# App as base64 (it might be the mask), so the embedding arrives as a ~2,700-character string that wraps
# over dozens of lines. Stored in this order, the review's verdicts come first and the embedding last.
TOOLTIP_ORDER = ("mistakenness", "mask_mistakenness", "mask_reason", "predicted_label", "dice", "iou",
                 "low_fidelity", *(f"mask_{part}" for part in COMPONENTS), "relabel_from", "relabel_to",
                 "topk_labels", "topk_scores", "error", "run", "mask_review", "embedding")
TOOLTIP_BATCH = 1000  # samples per reordering update


def store_in_tooltip_order(dataset, run: RegionRun, sample_ids: Iterable[str]) -> None:
    """Put the run's attributes of every region of those samples after the label's own attributes, in
    :data:`TOOLTIP_ORDER`. It reorders the stored documents of the root dataset in the database (one
    pipeline update per batch of samples, atomic per sample), after the run saved them: no value is
    read through, or written from, a view, so what a view hides or changes never reaches the labels."""
    ids = [ObjectId(i) for i in dict.fromkeys(sample_ids)]
    if not ids or not dataset.has_sample_field(run.regions_field):
        return
    path = list_path(dataset, run.regions_field)
    names = attribute_names(run.embeddings_field)
    ours = [names[key] for key in TOOLTIP_ORDER]
    theirs = {"$arrayToObject": {"$filter": {"input": {"$objectToArray": "$$region"},
                                             "cond": {"$not": [{"$in": ["$$this.k", ours]}]}}}}
    reordered = {"$map": {"input": f"${path}", "as": "region", "in": {"$mergeObjects": [
        theirs, {name: f"$$region.{name}" for name in ours}]}}}  # a missing attribute stays missing
    collection = dataset._sample_collection
    for start in range(0, len(ids), TOOLTIP_BATCH):
        collection.update_many({"_id": {"$in": ids[start:start + TOOLTIP_BATCH]}, path: {"$type": "array"}},
                               [{"$set": {path: reordered}}])


def attribute_paths(samples, regions_field: str, embeddings_field: str, keys=None) -> dict:
    """key -> full path (``field.detections.name``) of the run's label attributes (a regions field not
    created yet holds Detections)."""
    dataset = samples._root_dataset
    path = list_path(dataset, regions_field) if dataset.has_sample_field(regions_field) else f"{regions_field}.detections"
    names = attribute_names(embeddings_field)
    return {key: f"{path}.{names[key]}" for key in (keys or names)}


# the attributes that describe one embedding: cleared whenever a region's embedding is recomputed
EMBEDDING_REVIEW_ATTRIBUTES = ("predicted_label", "topk_labels", "topk_scores", "mistakenness", "low_fidelity",
                               "mask_mistakenness", "mask_review", "mask_reason",
                               *(f"mask_{part}" for part in COMPONENTS))


def is_current(region, run: RegionRun) -> bool:
    """Whether a region holds an embedding of the run's current settings (the Python twin of
    ``run_views.current_regions``, which filters a view the same way)."""
    names = attribute_names(run.embeddings_field)
    return (region.get_attribute_value(names["embedding"], None) is not None
            and region.get_attribute_value(names["run"], None) == run.stamp)


def settings_digest(settings: dict) -> str:
    """A short digest of the settings that decide the embeddings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def make_settings(backbone: Backbone, **method) -> dict:
    """What decides a run's embeddings: model identity (name, tag or absolute checkpoint path, size,
    activation, weights digest) and the method's settings."""
    pretrained = backbone.pretrained
    if pretrained and os.path.isfile(os.path.expanduser(pretrained)):
        pretrained = os.path.abspath(os.path.expanduser(pretrained))
    return {
        "model_name": backbone.model_name,
        "pretrained": pretrained or None,
        "image_size": backbone.image_size,
        "activation": backbone.activation,
        "weights_id": backbone.weights_id,
        **method,
    }


def _collection():
    return foo.get_db_conn().runs


def _from_doc(doc: dict) -> RegionRun:
    config = doc["config"]
    return RegionRun(
        key=doc["key"], doc_id=doc["_id"],
        owned={kind: list(config.get("owned", {}).get(kind, [])) for kind in OWNED_KINDS},
        roles=dict(config.get("roles") or {}), mask_review=config.get("mask_review"),
        heatmaps=dict(config.get("heatmaps") or DEFAULT_HEATMAPS),
        **{name: config.get(name) for name in ("label_field", "regions_field", "embeddings_field", "settings",
                                                "settings_id", "run_uid", "dataset_id", "version")},
    )


def list_region_runs(samples) -> List[RegionRun]:
    """Every region-embedding run of the collection's dataset, as stored now (read-only)."""
    dataset = samples._root_dataset
    keys = set(dataset.list_runs())
    docs = _collection().find({"_dataset_id": dataset._doc.id, "config.method": METHOD},
                              {TEXT_CACHE: 0}).sort("timestamp", 1)
    return [_from_doc(doc) for doc in docs if doc["key"] in keys]


def reload_run(samples, run: RegionRun) -> RegionRun:
    """The record of ``run`` as stored now."""
    doc = _collection().find_one({"_id": run.doc_id}, {TEXT_CACHE: 0})
    if doc is None:
        raise ValueError(f"{run.describe()} was deleted meanwhile")
    return _from_doc(doc)


def find_run(samples, label_field: str, embeddings_field: str) -> Optional[RegionRun]:
    """The run of ``embeddings_field`` on ``label_field`` (the user's field, or the derived regions field)."""
    matches = [r for r in list_region_runs(samples)
               if r.embeddings_field == embeddings_field and label_field in (r.label_field, r.regions_field)]
    return matches[0] if matches else None


def see_other_processes(samples) -> None:
    """Refresh the dataset's record from the database (runs and brain runs other processes added), leaving
    the user's in-memory samples and their unsaved edits alone; only when another process changed the
    schema is the dataset reloaded whole (as FiftyOne must, to know the new fields)."""
    dataset = samples._root_dataset
    stored = foo.get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"sample_fields.name": 1}) or {}
    if {f["name"] for f in stored.get("sample_fields", [])} != {f.name for f in dataset._doc.sample_fields}:
        dataset.reload()
    else:
        dataset._doc.reload()


def require_run(samples, label_field: str, embeddings_field: str) -> RegionRun:
    """The run, or a clear error naming what exists and what to do first (the dataset's schema is refreshed
    first, see :func:`see_other_processes`). A run whose label field is gone (renamed) is refused with the
    way back, before anything is read or written."""
    see_other_processes(samples)
    run = find_run(samples, label_field, embeddings_field)
    gone = [f for f in (run.label_field, run.regions_field) if not samples._root_dataset.has_sample_field(f)] if run else []
    if gone:
        raise ValueError(f"{run.describe()}: field {gone[0]!r} no longer exists in "
                         f"{samples._root_dataset.name!r}; a run follows no rename (nor do FiftyOne's brain runs), "
                         "so rename the field back first")
    if run is not None:
        return run
    dataset = samples._root_dataset
    runs = list_region_runs(dataset)
    existing = [f"{r.label_field}/{r.embeddings_field}" for r in runs]
    gone = [r.label_field for r in runs if not dataset.has_sample_field(r.label_field)]
    hint = (f"; the field of the run(s) on {gone} no longer exists: a run follows no rename (nor do "
            "FiftyOne's brain runs), so rename the field back or compute again" if gone else "")
    source = cloned_from(dataset, label_field, embeddings_field)
    if source:
        hint += (f"; its labels hold embeddings of a run of dataset {source!r} (a view clone copies labels, not "
                 "runs): call fiftyone_maskinversion.fo.adopt_region_runs(dataset) or compute_region_embeddings "
                 "to adopt it")
    raise ValueError(
        f"no region embeddings {embeddings_field!r} on {label_field!r} in {dataset.name!r}: "
        f"run compute_region_embeddings first (existing runs, field/embeddings: {existing or 'none'}){hint}"
    )


def label_stamps(dataset, regions_field: str, embeddings_field: str) -> List[str]:
    """The distinct run stamps the labels of ``regions_field`` hold for ``embeddings_field``."""
    if getattr(dataset.get_field(regions_field), "document_type", None) not in REGION_TYPES:
        return []
    path = f"{list_path(dataset, regions_field)}.{attribute_names(embeddings_field)['run']}"
    return [s for s in dataset.distinct(path) if isinstance(s, str) and "." in s] if dataset.has_field(path) else []


def record_of_stamp(stamp: str) -> Optional[dict]:
    """The stored record (raw) of the run that wrote ``stamp`` with exactly those settings (a dataset clone
    shares the run uid, not later settings), the earliest made if several datasets hold one."""
    uid, _, settings_id = stamp.partition(".")
    docs = _collection().find({"config.method": METHOD, "config.run_uid": uid, "config.settings_id": settings_id},
                              {TEXT_CACHE: 0}).sort("timestamp", 1).limit(1)
    return next(iter(docs), None)


def cloned_from(dataset, label_field: str, embeddings_field: str) -> Optional[str]:
    """The name of the dataset whose run wrote the labels of ``label_field`` when this dataset has no such
    run itself (a view clone), else None."""
    regions_fields = [label_field, f"{label_field}_regions"]
    for regions_field in regions_fields:
        for stamp in label_stamps(dataset, regions_field, embeddings_field):
            doc = record_of_stamp(stamp)
            if doc is not None and doc["_dataset_id"] != dataset._doc.id:
                source = foo.get_db_conn().datasets.find_one({"_id": doc["_dataset_id"]}, {"name": 1})
                return source["name"] if source else f"(deleted dataset {doc['_dataset_id']})"
    return None


def new_run(samples, label_field: str, regions_field: str, embeddings_field: str, settings: dict,
            run_uid: Optional[str] = None, dataset_id: Optional[str] = None,
            heatmaps: Optional[dict] = None) -> RegionRun:
    """Register a new record owning nothing yet; a parallel worker's record of the same pair is joined."""
    from .. import __version__

    dataset = samples._root_dataset
    key = _free_key(dataset, label_field, embeddings_field)
    config = {"label_field": label_field, "regions_field": regions_field, "embeddings_field": embeddings_field,
              "settings": settings, "settings_id": settings_digest(settings), "run_uid": run_uid or uuid.uuid4().hex[:12],
              "dataset_id": dataset_id or str(dataset._doc.id), "version": __version__,
              "owned": {kind: [] for kind in OWNED_KINDS}, "roles": {}, "mask_review": None,
              "heatmaps": heatmaps or dict(DEFAULT_HEATMAPS)}
    try:
        dataset.register_run(key, dataset.init_run(method=METHOD, **config), overwrite=False)
    except ValueError:  # a parallel worker registered this pair first
        dataset.reload()
        joined = find_run(dataset, label_field, embeddings_field)
        if joined is None:
            raise
        return joined
    return find_run(dataset, label_field, embeddings_field)


def update_run(samples, run: RegionRun, set_: Optional[dict] = None, add: Optional[dict] = None,
               pull: Optional[dict] = None) -> RegionRun:
    """One atomic update of the run's record (``$set`` / ``$addToSet`` / ``$pull`` on config keys);
    returns the record as stored after it."""
    update = {}
    if set_:
        update["$set"] = {f"config.{k}": v for k, v in set_.items()}
    if add:
        update["$addToSet"] = {f"config.{k}": v for k, v in add.items()}
    if pull:
        update["$pull"] = {f"config.{k}": v for k, v in pull.items()}
    if update:
        result = _collection().update_one({"_id": run.doc_id}, update)
        if not result.matched_count:
            raise ValueError(f"{run.describe()} was deleted meanwhile")
    return reload_run(samples, run)


def stored_text_embeddings(run: RegionRun, key: str) -> Optional[np.ndarray]:
    """The class text embeddings the run stored under ``key`` (C x D float32), else None."""
    doc = _collection().find_one({"_id": run.doc_id}, {f"{TEXT_CACHE}.{key}": 1}) or {}
    entry = doc.get("config", {}).get("text_cache", {}).get(key)
    return None if entry is None else np.frombuffer(entry["data"], dtype=np.float32).reshape(entry["shape"]).copy()


def store_text_embeddings(run: RegionRun, key: str, text: np.ndarray) -> None:
    """Store class text embeddings with the run (one atomic update), keeping the last ``TEXT_CACHE_KEEP``."""
    text = np.ascontiguousarray(text, dtype=np.float32)
    _collection().update_one({"_id": run.doc_id}, {"$set": {f"{TEXT_CACHE}.{key}": {
        "shape": list(text.shape), "data": text.tobytes(), "stored": time.time()}}})
    doc = _collection().find_one({"_id": run.doc_id}, {f"{TEXT_CACHE}": 1}) or {}
    entries = doc.get("config", {}).get("text_cache", {})
    old = sorted(entries, key=lambda k: entries[k]["stored"])[:-TEXT_CACHE_KEEP]
    if old:
        _collection().update_one({"_id": run.doc_id}, {"$unset": {f"{TEXT_CACHE}.{k}": "" for k in old}})


def restart_run(samples, run: RegionRun, settings: dict) -> RegionRun:
    """Record new settings for a run that recomputes its regions (overwrite); returns the new record."""
    from .. import __version__

    return update_run(samples, run, set_={"settings": settings, "settings_id": settings_digest(settings),
                                          "version": __version__})


def delete_run_record(samples, run: RegionRun) -> None:
    samples._root_dataset.delete_run(run.key)


def _free_key(dataset, label_field: str, embeddings_field: str) -> str:
    """A readable run key (FiftyOne run keys must be identifiers): the same for the same pair, so
    parallel workers agree; suffixed only where another pair's sanitised name collides."""
    base = "".join(c if c.isalnum() else "_" for c in f"{METHOD}_{label_field}_{embeddings_field}")
    taken = {doc["key"]: doc["config"] for doc in _collection().find({"_dataset_id": dataset._doc.id})}
    key, suffix = base, 2
    while key in taken and (taken[key].get("label_field"), taken[key].get("embeddings_field")) != (
            label_field, embeddings_field):
        key, suffix = f"{base}_{suffix}", suffix + 1
    return key


def backbone_for(run: RegionRun, backbone: Optional[Backbone] = None, device=None) -> Backbone:
    """The backbone a run used: the one given (checked against the record, weights included), else
    reloaded from the record (and checked: a checkpoint file may have changed since)."""
    recorded = run.settings
    if backbone is None:
        if not recorded.get("pretrained"):
            raise ValueError(
                f"{run.describe()} was computed with a backbone object of random weights (weights id "
                f"{recorded['weights_id']}), which cannot be reloaded: pass that backbone= (or save its "
                "state_dict to a file and compute with pretrained='/path/to/file')"
            )
        backbone = _cached_backbone(recorded["model_name"], recorded["pretrained"], recorded["image_size"],
                                    recorded["activation"] == "quick_gelu", device)
    found = {"model_name": backbone.model_name, "image_size": backbone.image_size,
             "activation": backbone.activation, "weights_id": backbone.weights_id}
    different = {k: (recorded.get(k), v) for k, v in found.items() if recorded.get(k) != v}
    if different:
        raise ValueError(f"the backbone differs from the one {run.describe()} was computed with: "
                         f"{different} (recorded, given)")
    return backbone


@functools.lru_cache(maxsize=2)
def _cached_backbone(model_name: str, pretrained: str, image_size: int, quick_gelu: bool, device) -> Backbone:
    return load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device, quick_gelu=quick_gelu)
