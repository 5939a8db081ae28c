"""MaskInversion: localized CLIP embeddings for image regions, and their FiftyOne integration.

``fiftyone_maskinversion`` itself exposes the core (torch + open_clip, no FiftyOne):
``load_backbone``, ``legrad_maps``, ``MaskInverter``... The FiftyOne layer is
``fiftyone_maskinversion.fo`` (``import fiftyone_maskinversion.fo as mifo``).
"""

from . import core
from .core import *  # noqa: F401,F403  (the core's public names, listed in core.__all__)

__version__ = "0.2.0"
__all__ = [*core.__all__, "__version__"]
