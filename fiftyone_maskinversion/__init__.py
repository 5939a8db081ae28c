"""MaskInversion: localized CLIP embeddings for image regions, and their FiftyOne integration.

``fiftyone_maskinversion`` itself is the core (torch + open_clip, no FiftyOne):
``load_backbone``, ``legrad_maps``, ``MaskInverter``. The FiftyOne layer is
``fiftyone_maskinversion.fo`` (``import fiftyone_maskinversion.fo as mifo``).
"""

from .core import (
    Backbone,
    InputError,
    InversionResult,
    MaskInverter,
    WeightsUnavailableError,
    legrad_maps,
    load_backbone,
    register_weights,
)

__version__ = "0.2.0"

__all__ = [
    "Backbone",
    "InputError",
    "InversionResult",
    "MaskInverter",
    "WeightsUnavailableError",
    "legrad_maps",
    "load_backbone",
    "register_weights",
    "__version__",
]
