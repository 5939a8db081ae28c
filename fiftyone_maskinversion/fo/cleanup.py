"""Deleting exactly one run's outputs: label attributes, heatmaps, prediction fields, index, record."""

from __future__ import annotations

from .. import defaults
from . import heatmaps as heatmap_store
from .regions import list_path
from .runs import (
    BRAIN_RUN_ATTRIBUTES,
    attribute_names,
    delete_run_record,
    list_region_runs,
    require_run,
)


def delete_region_results(samples, label_field: str, embeddings_field: str = defaults.EMBEDDINGS_FIELD) -> dict:
    """Remove one run's label attributes, heatmaps, prediction fields, similarity index, layout and record, and
    the regions field derived from a Segmentation field once no other run uses it. Other runs' outputs
    stay. Applied relabels (labels changed by apply_relabel) are NOT reverted: use undo_relabel first.
    Returns what was deleted.
    """
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._dataset
    deleted = {"attributes": [], "heatmaps": 0, "pred_fields": [], "brain_runs": [], "regions_field": None}
    path = list_path(dataset, run.regions_field)
    for name in attribute_names(run.embeddings_field).values():
        if dataset.has_field(f"{path}.{name}"):
            dataset.delete_sample_field(f"{path}.{name}")
            deleted["attributes"].append(f"{path}.{name}")
    deleted["heatmaps"] = heatmap_store.delete_run_heatmaps(dataset, run.regions_field, run.embeddings_field)
    for pred_field in run.pred_fields:
        if dataset.has_sample_field(pred_field):
            dataset.delete_sample_field(pred_field)
            deleted["pred_fields"].append(pred_field)
    for key in (getattr(run, attribute) for attribute in BRAIN_RUN_ATTRIBUTES):
        if key and key in dataset.list_brain_runs():
            dataset.delete_brain_run(key)
            deleted["brain_runs"].append(key)
    delete_run_record(dataset, run)
    others = [r for r in list_region_runs(dataset) if r.regions_field == run.regions_field]
    if run.derived and not others and dataset.has_sample_field(run.regions_field):
        dataset.delete_sample_field(run.regions_field)
        deleted["regions_field"] = run.regions_field
    return deleted
