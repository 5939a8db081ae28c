"""Adopting the runs a clone brought along: an explicit step (compute does it first), never a lookup's side effect.

A dataset clone copies run records under its own dataset id but no heatmaps; a view clone copies labels
(with their run stamps) but no records. A clone is recognised by where its labels came from - the run
stamp names exactly the run that wrote them - never by equal settings, so two datasets computed with the
same settings are never mixed up.
"""

from __future__ import annotations

import os
from typing import List

import fiftyone as fo

from . import heatmaps as heatmap_store
from .ownership import exists, still_owned
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
            _take_over(dataset, run, run.dataset_id, run.owned, run.heatmaps)
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
            _take_over(dataset, run, config["dataset_id"], config.get("owned", {}), config.get("heatmaps") or {})
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


def _take_over(dataset, run, source_dataset_id: str, owned: dict, heatmaps: dict) -> None:
    """Make a clone's run own what the clone has of the source run's names (a clone may lack brain runs or
    fields; it never shares the source's heatmap files: they are copied into a folder of its own)."""
    folder = None
    if heatmaps.get("storage") == "files":
        base = os.path.dirname(os.path.dirname(heatmaps["folder"]))
        folder = heatmap_store.run_folder(base, dataset, run.run_uid)
    heatmap_store.copy_for_clone(source_dataset_id, dataset, run.regions_field, run.embeddings_field, folder)
    kept = {kind: [n for n in owned.get(kind, []) if kind != "folder" and exists(dataset, kind, n)
                   and still_owned(dataset, run, kind, n)] for kind in OWNED_KINDS}  # never a same-named field of yours
    kept["folder"] = [folder] if folder else []
    update_run(dataset, run, set_={"dataset_id": str(dataset._doc.id), "owned": kept,
                                   "heatmaps": {**heatmaps, "folder": folder} if heatmaps else heatmaps})

