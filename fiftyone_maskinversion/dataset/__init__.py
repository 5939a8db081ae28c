"""The FiftyOne layer: runs the core on datasets and stores results as native FiftyOne data."""

from .cleanup import delete_region_results
from .embed import RegionRunSummary, compute_region_embeddings
from .heatmaps import heatmaps_dataset, heatmaps_dataset_name
from .relabel import apply_relabel, find_mislabeled, undo_relabel, zero_shot_relabel
from .search import build_region_index, search_regions

__all__ = [
    "RegionRunSummary",
    "apply_relabel",
    "build_region_index",
    "compute_region_embeddings",
    "delete_region_results",
    "find_mislabeled",
    "heatmaps_dataset",
    "heatmaps_dataset_name",
    "search_regions",
    "undo_relabel",
    "zero_shot_relabel",
]
