"""The FiftyOne layer: runs the core on datasets and stores results as native FiftyOne data."""

from .cleanup import delete_region_results
from .embed import RegionRunSummary, compute_region_embeddings
from .heatmaps import heatmaps_dataset, heatmaps_dataset_name
from .relabel import apply_relabel, find_mislabeled, undo_relabel, zero_shot_relabel
from .search import build_region_index, search_regions

from .. import _DATASET_API

__all__ = [*_DATASET_API, "RegionRunSummary", "heatmaps_dataset_name"]
