"""The class vocabulary of a zero-shot step (relabel, mask review) over a run's regions, and its text embeddings.

Embedding a vocabulary with CLIP's 80 templates takes minutes on a CPU for a ViT-B (80 x classes prompts
through the text tower), and every step and every process needs the same one: it is computed once per
(weights, vocabulary, prompts), stored with the run and read back by every later step, in any process.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from ..core.backbone import Backbone
from ..core.zeroshot import class_embeddings, templates_for
from .regions import list_path
from .runs import RegionRun, backbone_for, settings_digest, store_text_embeddings, stored_text_embeddings

CLASSES_PER_STEP = 8  # classes embedded between two progress reports


def vocabulary(samples, run: RegionRun, classes: Optional[Sequence[str]], prompt: str,
               backbone: Optional[Backbone], progress: Optional[Callable[[int, int], None]] = None) -> tuple:
    """(backbone, class names, C x D class text embeddings, name -> row) of a zero-shot step over the
    run's regions: the vocabulary is ``classes`` or the field's distinct labels, embedded with ``prompt``
    (read from the run where an earlier step stored it; ``progress(done, total)`` counts classes)."""
    templates = templates_for(prompt)
    backbone = backbone_for(run, backbone)
    classes = class_names(samples, run, classes)
    key = text_key(run, classes, templates)
    stored = stored_text_embeddings(run, key)
    if stored is not None:
        text = torch.from_numpy(stored).to(backbone.device)
    else:
        parts = []
        for start in range(0, len(classes), CLASSES_PER_STEP):
            parts.append(class_embeddings(backbone, classes[start:start + CLASSES_PER_STEP], templates))
            if progress:
                progress(min(start + CLASSES_PER_STEP, len(classes)), len(classes))
        text = torch.cat(parts)
        store_text_embeddings(run, key, text.cpu().numpy())
    return backbone, classes, text, {n: i for i, n in enumerate(classes)}


def class_names(samples, run: RegionRun, classes: Optional[Sequence[str]]) -> List[str]:
    """The vocabulary a zero-shot step uses: ``classes``, or the distinct labels of the run's regions field
    in the whole dataset, sorted (ValueError if empty)."""
    path = list_path(samples, run.regions_field)
    names = list(classes) if classes else sorted(set(samples._root_dataset.distinct(f"{path}.label")))
    if not names:
        raise ValueError("the class vocabulary is empty")
    return names


def text_key(run: RegionRun, classes: Sequence[str], templates: Sequence) -> str:
    """What a vocabulary's stored text embeddings are filed under: the run's weights, the classes, the prompts."""
    texts = [t if isinstance(t, str) else t("{}") for t in templates]  # CLIP's ensemble holds functions
    return settings_digest({"weights_id": run.settings["weights_id"], "model_name": run.settings["model_name"],
                            "classes": list(classes), "templates": texts})
