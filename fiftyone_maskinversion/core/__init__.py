"""The torch + open_clip core: backbone loading, inputs, block state, LeGrad maps, inversion, metrics,
zero-shot classification. It never imports FiftyOne."""

from .backbone import Backbone, WeightsUnavailableError, load_backbone, register_weights
from .inputs import InputError
from .inversion import InversionResult, MaskInverter
from .legrad import legrad_maps

__all__ = [
    "Backbone",
    "InputError",
    "InversionResult",
    "MaskInverter",
    "WeightsUnavailableError",
    "legrad_maps",
    "load_backbone",
    "register_weights",
]
