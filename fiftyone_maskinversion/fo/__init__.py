"""The FiftyOne layer: runs the core on datasets and stores the results as native FiftyOne data.

A run is identified by (dataset, label field, embeddings field); see :mod:`.runs`. Every function
takes the label field by the name the user gave (a Segmentation field's own name included).
"""

from .adoption import adopt_region_runs
from .badmask import find_bad_masks, find_missing_regions, score_masks
from .cleanup import delete_region_results
from .embed import RegionRunSummary, compute_region_embeddings
from .heatmaps import delete_orphaned_heatmaps, heatmaps_dataset, heatmaps_dataset_name
from .relabel import RelabelChanges, apply_relabel, find_mislabeled, prediction_of, undo_relabel, zero_shot_relabel
from .runs import RegionRun, list_region_runs
from .search import build_region_index, rank_regions, search_regions
from .visualize import visualize_regions

__all__ = [
    "RegionRun",
    "RelabelChanges",
    "adopt_region_runs",
    "RegionRunSummary",
    "apply_relabel",
    "build_region_index",
    "compute_region_embeddings",
    "delete_orphaned_heatmaps",
    "delete_region_results",
    "find_bad_masks",
    "find_mislabeled",
    "find_missing_regions",
    "heatmaps_dataset",
    "heatmaps_dataset_name",
    "list_region_runs",
    "prediction_of",
    "rank_regions",
    "score_masks",
    "search_regions",
    "undo_relabel",
    "visualize_regions",
    "zero_shot_relabel",
]
