"""visualize_regions: a 2-D layout of a run's region embeddings for the App's Embeddings panel."""

from __future__ import annotations

import importlib.util
from typing import Optional

import fiftyone.brain as fob

from .. import defaults
from .regions import list_path
from .ownership import claim_brain_run
from .run_views import current_regions
from .runs import require_run

METHODS = ("umap", "tsne", "pca")
TSNE_PERPLEXITY = 30.0  # scikit-learn's default; it must stay below the number of regions
TSNE_PCA_DIMS = 50  # brain's default reduction before t-SNE


def visualize_regions(
    samples,
    label_field: str,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    method: Optional[str] = None,
    brain_key: Optional[str] = None,
    overwrite: bool = False,
):
    """Compute a 2-D layout of the run's current region embeddings with FiftyOne Brain
    (``compute_visualization`` over the region patches), so the App's Embeddings panel shows the regions,
    coloured by any label attribute, and lasso selection finds clusters. ``method``: "umap" (the default
    when umap-learn is installed), "tsne" (the default otherwise) or "pca". The run owns the result: a
    compute that adds regions removes it (it would be outdated), deleting the run deletes it."""
    method = method or ("umap" if importlib.util.find_spec("umap") else "tsne")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    brain_key = brain_key or f"{run.key}_viz"
    embedded = current_regions(samples, run)
    path = f"{list_path(samples, run.regions_field)}.{run.embeddings_field}"
    count = embedded.count(path)
    if count < 3:
        raise ValueError(f"{run.describe()} has {count} embedded region(s) here; a layout needs at least 3")
    options = {}
    if method == "tsne":  # brain reduces to pca_dims (50) first: no more than the data has
        dims = len(next(v for v in embedded.limit(1).values(path, unwind=True) if v is not None))
        options = {"perplexity": min(TSNE_PERPLEXITY, (count - 1) / 3), "pca_dims": min(TSNE_PCA_DIMS, dims, count)}
    claim_brain_run(dataset, run, "visualization_key", brain_key, overwrite)  # after every check
    fob.compute_visualization(embedded, patches_field=run.regions_field, embeddings=path, brain_key=brain_key,
                              method=method, num_dims=2, seed=0, progress=False, **options)
    return dataset.load_brain_results(brain_key)  # as stored: knows its key
