"""MaskInversion: localized CLIP embeddings for image regions, and their FiftyOne integration.

The core (``load_backbone``, ``legrad_maps``, ``MaskInverter``) does not import FiftyOne.
"""

from .backbone import Backbone, WeightsUnavailableError, load_backbone
from .images import InputError
from .inversion import InversionResult, MaskInverter
from .legrad import legrad_maps

__version__ = "0.1.0"

_DATASET_API = (
    "apply_relabel",
    "build_region_index",
    "compute_region_embeddings",
    "delete_region_results",
    "find_mislabeled",
    "heatmaps_dataset",
    "search_regions",
    "undo_relabel",
    "zero_shot_relabel",
)


def __getattr__(name):
    """The FiftyOne functions, imported on first use so that the core never imports FiftyOne."""
    if name in _DATASET_API:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Backbone",
    "InputError",
    "InversionResult",
    "MaskInverter",
    "WeightsUnavailableError",
    "legrad_maps",
    "load_backbone",
    "__version__",
    *_DATASET_API,
]
