"""Deleting what a region-embedding run wrote: label attributes, heatmaps, predictions, index, record."""

from __future__ import annotations

from typing import Optional

import fiftyone as fo

from . import heatmaps as heatmap_store
from .embed import attribute_names
from .regions import list_path
from .relabel import default_pred_field
from .search import default_brain_key
from .settings import forget_settings, recorded_settings


def delete_region_results(
    samples, label_field: str, embeddings_field: str = "mi_embedding", pred_field: Optional[str] = None
) -> dict:
    """Remove the run's label attributes, heatmaps, relabel predictions and similarity index.

    Applied relabels (labels changed by apply_relabel) are NOT reverted here: use undo_relabel.
    Returns what was deleted.
    """
    dataset = samples._dataset
    deleted = {"attributes": [], "heatmaps": 0, "pred_field": None, "brain_key": None}
    path = list_path(samples, label_field)
    for name in attribute_names(embeddings_field).values():
        if dataset.has_field(f"{path}.{name}"):
            dataset.delete_sample_field(f"{path}.{name}")
            deleted["attributes"].append(f"{path}.{name}")
    companion = heatmap_store.heatmaps_dataset(dataset, create=False)
    if companion is not None:
        stale = companion.match(fo.ViewField("source_field") == label_field)
        deleted["heatmaps"] = len(stale)
        companion.delete_samples(stale)
        if not len(companion):
            companion.delete()
    pred_field = pred_field or default_pred_field(label_field)
    if dataset.has_sample_field(pred_field):
        dataset.delete_sample_field(pred_field)
        deleted["pred_field"] = pred_field
    brain_key = default_brain_key(label_field, embeddings_field)
    if brain_key in dataset.list_brain_runs():
        dataset.delete_brain_run(brain_key)
        deleted["brain_key"] = brain_key
    if recorded_settings(samples, label_field, embeddings_field) is not None:
        forget_settings(samples, label_field, embeddings_field)
    return deleted
