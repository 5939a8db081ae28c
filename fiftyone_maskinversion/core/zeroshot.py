"""Zero-shot classification of region embeddings against class names, with CLIP's prompt templates."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

from .backbone import Backbone

Template = Union[str, Callable[[str], str]]


def templates_for(prompt: str) -> tuple:
    """``"ensemble"``: CLIP's 80 ImageNet templates; any other string is one template with ``{}``."""
    if prompt == "ensemble":
        return tuple(OPENAI_IMAGENET_TEMPLATES)
    if "{}" not in prompt:
        raise ValueError(f"prompt template {prompt!r} must contain '{{}}' where the class name goes")
    return (prompt,)


_RECENT: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()  # the last few vocabularies' embeddings
RECENT_VOCABULARIES = 4


def classes_from_text(text: Optional[str]) -> Optional[list]:
    """A comma-separated vocabulary as typed in a form or on the command line; None when empty (the
    caller then uses the field's own labels)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()] or None


def class_embeddings(backbone: Backbone, classes: Sequence[str], templates: Sequence[Template]) -> torch.Tensor:
    """C x D unit vectors: per class, the normalised mean of its normalised prompt embeddings
    (open_clip's zero-shot classifier builder). The last few results are kept: relabel and the mask
    review of one run embed the same vocabulary (80 templates x classes through the text tower)."""
    if not classes:
        raise ValueError("the class vocabulary is empty")
    key = (id(backbone.model), backbone.weights_id, tuple(classes), tuple(templates))
    if key not in _RECENT:
        weights = build_zero_shot_classifier(
            backbone.model, backbone.tokenizer, list(classes), list(templates), device=backbone.device
        )
        _RECENT[key] = weights.T.float().contiguous()
        while len(_RECENT) > RECENT_VOCABULARIES:
            _RECENT.popitem(last=False)
    _RECENT.move_to_end(key)
    return _RECENT[key]


def class_probabilities(backbone: Backbone, embeddings: np.ndarray, classes_emb: torch.Tensor) -> np.ndarray:
    """N x C softmax over classes of the model's scaled cosine similarities (its own logit scale)."""
    regions = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32, device=classes_emb.device), dim=-1)
    scale = backbone.model.logit_scale.exp().float()
    return (scale * regions @ classes_emb.T).softmax(dim=-1).cpu().numpy()


def mistakenness(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - p(annotated class) per row: the probability mass on the other classes (NaN where label < 0)."""
    labels = np.asarray(labels)
    picked = probabilities[np.arange(len(labels)), np.clip(labels, 0, None)]
    return np.where(labels >= 0, 1.0 - picked, np.nan)
