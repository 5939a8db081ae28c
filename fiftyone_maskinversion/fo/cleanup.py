"""Deleting exactly what one run owns: label attributes, heatmaps, fields, brain runs, record."""

from __future__ import annotations

from .. import defaults
from . import heatmaps as heatmap_store
from .ownership import owners
from .runs import attribute_paths, delete_run_record, list_region_runs, require_run


def delete_region_results(samples, label_field: str, embeddings_field: str = defaults.EMBEDDINGS_FIELD,
                          discard_relabel_history: bool = False) -> dict:
    """Remove everything the run owns (see :mod:`.ownership`): its label attributes, heatmaps, prediction
    and suggestion fields, similarity index, layout and record, and the regions field derived from a
    Segmentation field once no other run shares it. Nothing it does not own is touched. Labels changed
    by apply_relabel keep their new label; while any still has a relabel history, the deletion is refused
    unless ``discard_relabel_history`` (undo_relabel first to go back). Returns what was deleted.
    """
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    history = attribute_paths(dataset, run.regions_field, run.embeddings_field, ["relabel_to"])["relabel_to"]
    if run.owns("attribute", history) and not discard_relabel_history:
        applied = dataset.count(history)
        if applied:
            raise ValueError(f"{applied} label(s) of {run.describe()} carry applied relabels: undo_relabel them "
                             "first, or pass discard_relabel_history=True to keep the new labels and drop the history")
    deleted = {"attributes": [], "heatmaps": 0, "pred_fields": [], "brain_runs": [], "regions_field": None}
    deleted["heatmaps"] = heatmap_store.delete_run_heatmaps(dataset, run.regions_field, run.embeddings_field)
    for key in run.owned.get("brain_key", []):
        if key in dataset.list_brain_runs():
            dataset.delete_brain_run(key)
            deleted["brain_runs"].append(key)
    others = [r for r in list_region_runs(dataset) if r.key != run.key]
    for path in run.owned.get("attribute", []):
        if dataset.has_field(path):
            dataset.delete_sample_field(path)
            deleted["attributes"].append(path)
    for field in run.owned.get("field", []):
        if owners(dataset, "field", field, others) or not dataset.has_sample_field(field):
            continue  # a derived regions field another run of its Segmentation field still uses
        dataset.delete_sample_field(field)
        if field == run.regions_field:
            deleted["regions_field"] = field
        else:
            deleted["pred_fields"].append(field)
    delete_run_record(dataset, run)
    return deleted

