"""The class vocabulary of a zero-shot step (relabel, mask review) over a run's regions, and its text embeddings."""

from __future__ import annotations

from typing import Optional, Sequence

from ..core.backbone import Backbone
from ..core.zeroshot import class_embeddings, templates_for
from .regions import list_path
from .runs import RegionRun, backbone_for


def vocabulary(samples, run: RegionRun, classes: Optional[Sequence[str]], prompt: str,
               backbone: Optional[Backbone]) -> tuple:
    """(backbone, class names, C x D class text embeddings, name -> row) of a zero-shot step over the
    run's regions: the vocabulary is ``classes`` or the field's distinct labels, embedded with ``prompt``."""
    templates = templates_for(prompt)
    backbone = backbone_for(run, backbone)
    path = list_path(samples, run.regions_field)
    classes = list(classes) if classes else sorted(set(samples._root_dataset.distinct(f"{path}.label")))
    return backbone, classes, class_embeddings(backbone, classes, templates), {n: i for i, n in enumerate(classes)}
