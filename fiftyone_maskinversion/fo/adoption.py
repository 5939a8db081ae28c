"""Adopting the runs a clone brought along: an explicit step (compute does it first), never a lookup's side effect.

A dataset clone copies run records under its own dataset id but no heatmaps; a view clone copies labels
(with their run stamps) but no records. A clone is recognised by where its labels came from - the run
stamp names exactly the run that wrote them - never by equal settings, so two datasets computed with the
same settings are never mixed up.
"""

from __future__ import annotations

from typing import List

import fiftyone as fo

from . import heatmaps as heatmap_store
from .ownership import exists
from .regions import REGION_TYPES
from .runs import (
    OWNED_KINDS,
    attribute_names,
    label_stamps,
    list_region_runs,
    new_run,
    record_of_stamp,
    update_run,
)


def adopt_region_runs(samples) -> List[str]:
    """Make the runs a clone brought along this dataset's own: records copied by a dataset clone take this
    dataset's id, labels copied by a view clone get a record of the run that wrote them; the run's
    heatmaps of this dataset's labels are copied to its companion. Returns what was adopted."""
    dataset = samples._root_dataset
    here = str(dataset._doc.id)
    adopted = []
    for run in list_region_runs(dataset):
        if run.dataset_id != here:
            heatmap_store.copy_for_clone(run.dataset_id, dataset, run.regions_field, run.embeddings_field)
            update_run(dataset, run, set_={"dataset_id": here, "owned": _existing(dataset, run.owned)})
            adopted.append(f"{run.describe()} (dataset clone)")
    known = {r.run_uid for r in list_region_runs(dataset)}
    for regions_field, embeddings_field in _stamped_pairs(dataset):
        for stamp in label_stamps(dataset, regions_field, embeddings_field):
            doc = record_of_stamp(stamp)
            if doc is None or doc["config"]["run_uid"] in known:
                continue
            config = doc["config"]
            if not dataset.has_sample_field(config["label_field"]):
                continue  # the source's Segmentation field was not copied: its regions are plain labels here
            run = new_run(dataset, config["label_field"], regions_field, embeddings_field, config["settings"],
                          run_uid=config["run_uid"])
            update_run(dataset, run, set_={"owned": _existing(dataset, config.get("owned", {}))})
            heatmap_store.copy_for_clone(config["dataset_id"], dataset, regions_field, embeddings_field)
            known.add(run.run_uid)
            adopted.append(f"{run.describe()} (view clone of dataset id {config['dataset_id']})")
    return adopted


def _stamped_pairs(dataset) -> list:
    """(regions field, embeddings field) pairs whose labels may hold run stamps (a declared ``*_run``)."""
    pairs = []
    for name, field in dataset.get_field_schema(embedded_doc_type=tuple(REGION_TYPES)).items():
        list_field = dataset.get_field(f"{name}.{REGION_TYPES[field.document_type]}")
        for attribute in getattr(list_field.field, "fields", []) or []:
            stem = attribute.name[:-len("_run")] if attribute.name.endswith("_run") else None
            if stem and attribute_names(stem)["run"] == attribute.name:
                pairs.append((name, stem))
    return pairs


def _existing(dataset, owned: dict) -> dict:
    """The owned names that exist in ``dataset`` (a clone may lack brain runs or fields)."""
    return {kind: [n for n in owned.get(kind, []) if exists(dataset, kind, n)] for kind in OWNED_KINDS}

