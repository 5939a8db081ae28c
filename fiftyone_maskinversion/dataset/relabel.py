"""Zero-shot relabeling of regions, applying/undoing relabels, and the mislabel (mistakenness) ranking.

Mistakenness of a region is 1 - p(annotated class | region): the probability mass the zero-shot
classifier puts on the other classes of the vocabulary (None when the annotated class is not in it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from fiftyone import ViewField as F

from ..backbone import Backbone
from ..zeroshot import class_embeddings, class_probabilities, mistakenness, templates_for
from .regions import attribute, container_of, geometry_copy, list_path, regions_of
from .settings import backbone_for, require_settings

ORIGINAL_LABEL = "mi_original_label"


@dataclass
class RelabelSummary:
    pred_field: str
    regions: int
    changed: int  # regions whose top prediction differs from the annotation
    classes: list


def default_pred_field(label_field: str) -> str:
    return f"{label_field}_mi_relabel"


def zero_shot_relabel(
    samples,
    label_field: str,
    embeddings_field: str = "mi_embedding",
    classes: Optional[Sequence[str]] = None,
    prompt: str = "ensemble",
    pred_field: Optional[str] = None,
    top_k: int = 5,
    overwrite: bool = False,
    backbone: Optional[Backbone] = None,
) -> RelabelSummary:
    """Write ``pred_field``: a clone (same geometry) of each embedded region with the predicted label.

    Each prediction has ``label``, ``confidence``, ``topk_labels``/``topk_scores``, ``gt_label``,
    ``mistakenness`` and ``source_label_id``. The vocabulary is ``classes`` or the field's distinct
    labels; ``prompt`` is "ensemble" (CLIP's 80 templates) or one template such as "a photo of a {}.".
    The ground truth is not modified.
    """
    settings = require_settings(samples, label_field, embeddings_field)
    pred_field = pred_field or default_pred_field(label_field)
    dataset = samples._dataset
    if dataset.has_sample_field(pred_field) and not overwrite:
        raise ValueError(f"field {pred_field!r} already exists in {dataset.name!r}; pass overwrite=True")
    backbone = backbone_for(settings, backbone)
    path = list_path(samples, label_field)
    classes = list(classes) if classes else sorted(set(samples.distinct(f"{path}.label")))
    text = class_embeddings(backbone, classes, templates_for(prompt))
    index = {name: i for i, name in enumerate(classes)}
    summary = RelabelSummary(pred_field=pred_field, regions=0, changed=0, classes=classes)

    view = samples.exists(f"{path}.{embeddings_field}").select_fields(label_field)
    for sample in view.iter_samples(autosave=True, progress=False):
        container = sample[label_field]
        embedded = [r for r in regions_of(container) if attribute(r, embeddings_field) is not None]
        if not embedded:
            continue
        probs = class_probabilities(backbone, np.stack([r[embeddings_field] for r in embedded]), text)
        scores = mistakenness(probs, np.array([index.get(r.label, -1) for r in embedded]))
        predictions = [_prediction(r, p, m, classes, top_k) for r, p, m in zip(embedded, probs, scores)]
        summary.regions += len(predictions)
        summary.changed += sum(p.label != p["gt_label"] for p in predictions)
        sample[pred_field] = container_of(predictions, container)
    return summary


def _prediction(region, probs: np.ndarray, score: float, classes: list, top_k: int):
    order = np.argsort(-probs)[:top_k]
    return geometry_copy(
        region,
        label=classes[order[0]],
        confidence=float(probs[order[0]]),
        topk_labels=[classes[i] for i in order],
        topk_scores=[float(probs[i]) for i in order],
        gt_label=region.label,
        mistakenness=None if np.isnan(score) else float(score),
        source_label_id=region.id,
    )


def apply_relabel(samples, label_field: str, pred_field: Optional[str] = None, threshold: float = 0.9) -> int:
    """Set each region's label to its prediction where confidence >= threshold; returns how many changed.

    The first original label is kept in ``mi_original_label`` so :func:`undo_relabel` can restore it.
    """
    pred_field = pred_field or default_pred_field(label_field)
    changed = 0
    view = samples.exists(pred_field).select_fields([label_field, pred_field])
    for sample in view.iter_samples(autosave=True, progress=False):
        confident = {
            p["source_label_id"]: p.label for p in regions_of(sample[pred_field]) if p.confidence >= threshold
        }
        for region in regions_of(sample[label_field]):
            new_label = confident.get(region.id)
            if new_label is None or new_label == region.label:
                continue
            if attribute(region, ORIGINAL_LABEL) is None:
                region[ORIGINAL_LABEL] = region.label
            region.label = new_label
            changed += 1
    return changed


def undo_relabel(samples, label_field: str) -> int:
    """Restore every label changed by :func:`apply_relabel`; returns how many were restored."""
    restored = 0
    view = samples.match_labels(filter=F(ORIGINAL_LABEL).exists(), fields=label_field).select_fields(label_field)
    for sample in view.iter_samples(autosave=True, progress=False):
        for region in regions_of(sample[label_field]):
            original = attribute(region, ORIGINAL_LABEL)
            if original is not None:
                region.label = original
                region[ORIGINAL_LABEL] = None
                restored += 1
    return restored


def find_mislabeled(samples, label_field: str, pred_field: Optional[str] = None):
    """A patches view of the predictions, most likely mislabeled regions first (needs zero_shot_relabel)."""
    pred_field = pred_field or default_pred_field(label_field)
    if not samples._dataset.has_sample_field(pred_field):
        raise ValueError(f"no field {pred_field!r}: run zero_shot_relabel on {label_field!r} first")
    patches = samples.filter_labels(pred_field, F("mistakenness") != None).to_patches(pred_field)  # noqa: E711
    return patches.sort_by(F(f"{pred_field}.mistakenness"), reverse=True)
