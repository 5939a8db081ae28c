"""MaskInversion: localized CLIP embeddings for image regions, and their FiftyOne integration.

The core (``load_backbone``, ``legrad_maps``, ``MaskInverter``) does not import FiftyOne.
"""

from .backbone import Backbone, WeightsUnavailableError, load_backbone
from .images import InputError
from .inversion import InversionResult, MaskInverter
from .legrad import legrad_maps

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "InputError",
    "InversionResult",
    "MaskInverter",
    "WeightsUnavailableError",
    "legrad_maps",
    "load_backbone",
    "__version__",
]
