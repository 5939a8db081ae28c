"""Deleting exactly what one run owns: label attributes, heatmaps, fields, brain runs, record."""

from __future__ import annotations

import os
import shutil

from .. import defaults
from . import heatmaps as heatmap_store
from .ownership import owners, release_all, still_owned
from .runs import attribute_paths, delete_run_record, list_region_runs, require_run


def delete_region_results(samples, label_field: str, embeddings_field: str = defaults.EMBEDDINGS_FIELD,
                          discard_relabel_history: bool = False) -> dict:
    """Remove everything the run owns (see :mod:`.ownership`): its label attributes, heatmaps (and their files), prediction
    and suggestion fields, similarity index, layout and record, and the regions field derived from a
    Segmentation field once no other run shares it and it holds none of your data (attributes, label
    tags or labels you or apply_relabel changed: then it is kept, and the result says why). Nothing it
    does not own is touched. Labels changed by apply_relabel keep their new label; while any still has a
    relabel history, the deletion is refused unless ``discard_relabel_history`` (undo_relabel first to go
    back). It acts on the whole dataset, whatever view is passed. Returns what was deleted.
    """
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    history = attribute_paths(dataset, run.regions_field, run.embeddings_field, ["relabel_to"])["relabel_to"]
    if run.owns("attribute", history) and not discard_relabel_history:
        applied = dataset.count(history)
        if applied:
            raise ValueError(f"{applied} label(s) of {run.describe()} carry applied relabels: undo_relabel them "
                             "first, or pass discard_relabel_history=True to keep the new labels and drop the history")
    deleted = {"attributes": [], "heatmaps": 0, "pred_fields": [], "brain_runs": [], "regions_field": None,
               "regions_field_kept": None}
    deleted["heatmaps"] = heatmap_store.delete_run_heatmaps(dataset, run.regions_field, run.embeddings_field)
    for key in run.owned.get("brain_key", []):
        if still_owned(dataset, run, "brain_key", key):
            dataset.delete_brain_run(key)
            deleted["brain_runs"].append(key)
    others = [r for r in list_region_runs(dataset) if r.key != run.key]
    for path in run.owned.get("attribute", []):
        if dataset.has_field(path):
            dataset.delete_sample_field(path)
            deleted["attributes"].append(path)
    for field in run.owned.get("field", []):
        if owners(dataset, "field", field, others) or not still_owned(dataset, run, "field", field):
            continue  # a derived regions field another run still uses, or a field that is not the run's any more
        if field == run.regions_field:
            kept = _curators_data(dataset, field, run)
            if kept:
                deleted["regions_field_kept"] = f"{field!r} holds your data ({kept}): kept, delete it yourself if unwanted"
                continue
        dataset.delete_sample_field(field)
        if field == run.regions_field:
            deleted["regions_field"] = field
        else:
            deleted["pred_fields"].append(field)
    for folder in run.owned.get("folder", []):  # the run's own heatmap files' folder (see heatmaps.run_folder)
        shutil.rmtree(folder, ignore_errors=True)
        try:  # and the dataset's folder above it, once no run of the dataset has files left there
            os.rmdir(os.path.dirname(folder))
        except OSError:
            pass
    release_all(dataset, run)
    delete_run_record(dataset, run)
    return deleted



def _curators_data(dataset, field: str, run) -> list:
    """What in a derived regions field is not the derivation's nor a run's: attributes, label tags, labels
    changed since they were derived (their relabel history)."""
    path = f"{field}.detections"
    derived = {"id", "_id", "_cls", "tags", "attributes", "label", "bounding_box", "mask", "mask_path", "confidence",
               "index", "source_field"}
    owned = {p.rpartition(".")[2] for r in list_region_runs(dataset) for p in r.owned.get("attribute", [])
             if p.startswith(path + ".")}
    dynamic = dataset.get_dynamic_field_schema(fields=[field]) or {}
    schema = set(dataset.get_field(path).field.get_field_schema()) | {
        name.rpartition(".")[2] for name in dynamic if name.startswith(path + ".")}
    found = sorted(schema - derived - owned)
    if dataset.count_label_tags(label_fields=[field]):
        found.append("label tags")
    history = attribute_paths(dataset, run.regions_field, run.embeddings_field, ["relabel_to"])["relabel_to"]
    if dataset.has_field(history) and dataset.count(history):
        found.append("relabelled labels")
    return found
