"""Zero-shot relabeling of regions, applying/undoing relabels, and the mislabel (mistakenness) ranking.

Mistakenness of a region is 1 - p(annotated class | region): the probability mass the zero-shot
classifier puts on the other classes of the vocabulary (None when the annotated class is not in it).
Predictions are written to a field the run owns; the ground truth changes only through apply_relabel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .. import defaults
from ..core.backbone import Backbone
from ..core.zeroshot import (
    class_embeddings,
    class_probabilities,
    mistakenness,
    templates_for,
)
from . import heatmaps as heatmap_store
from .regions import (
    attribute,
    container_of,
    declare_attributes,
    geometry_copy,
    list_path,
    regions_field_for,
    regions_of,
)
from .runs import (
    RegionRun,
    attribute_names,
    backbone_for,
    claim_output_field,
    is_current,
    list_region_runs,
    require_run,
)

ORIGINAL_LABEL = "mi_original_label"
# what each prediction carries besides a label's own fields, declared so the App's sidebar filters on them
PREDICTION_ATTRIBUTES = {"gt_label": fo.StringField, "mistakenness": fo.FloatField, "source_label_id": fo.StringField,
                         "topk_labels": (fo.ListField, fo.StringField), "topk_scores": (fo.ListField, fo.FloatField)}


@dataclass
class RelabelSummary:
    pred_field: str
    regions: int
    changed: int  # regions whose top prediction differs from the annotation
    classes: list


def default_pred_field(run: RegionRun) -> str:
    return f"{run.label_field}_{run.embeddings_field}_relabel"


def current_regions(samples, run: RegionRun):
    """The samples whose regions hold an embedding of the run's current settings, only those regions."""
    name = attribute_names(run.embeddings_field)["run"]
    return samples.filter_labels(run.regions_field, (F(name) == run.settings_id) & F(run.embeddings_field).exists())


def samples_with_current(samples, run: RegionRun, fields):
    """The samples that have such regions, with their whole label lists (never a filtered view of them,
    so saving cannot drop the regions not embedded) and only ``fields``."""
    return samples.select(current_regions(samples, run).values("id")).select_fields(fields)


def vocabulary(samples, run: RegionRun, classes: Optional[Sequence[str]], prompt: str,
               backbone: Optional[Backbone]) -> tuple:
    """(backbone, class names, C x D class text embeddings, name -> row) of a zero-shot step over the
    run's regions: the vocabulary is ``classes`` or the field's distinct labels, embedded with ``prompt``."""
    templates = templates_for(prompt)
    backbone = backbone_for(run, backbone)
    path = list_path(samples, run.regions_field)
    classes = list(classes) if classes else sorted(set(samples.distinct(f"{path}.label")))
    return backbone, classes, class_embeddings(backbone, classes, templates), {n: i for i, n in enumerate(classes)}


def check_probability(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1] (thresholds on probabilities and scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def zero_shot_relabel(
    samples,
    label_field: str,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    classes: Optional[Sequence[str]] = None,
    prompt: str = defaults.PROMPT,
    pred_field: Optional[str] = None,
    top_k: int = defaults.TOP_K,
    overwrite: bool = False,
    backbone: Optional[Backbone] = None,
) -> RelabelSummary:
    """Write ``pred_field``: a clone (same geometry) of each embedded region with the predicted label.

    Each prediction has ``label``, ``confidence``, ``topk_labels``/``topk_scores``, ``gt_label``,
    ``mistakenness`` and ``source_label_id``; each embedded region of the field itself gets
    ``<embeddings_field>_predicted_label``, ``_topk_labels``, ``_topk_scores`` and ``_mistakenness`` of
    this (latest) relabel, for review in the App on the field the user already looks at, and
    ``_low_fidelity`` (the inversion's Dice < defaults.MIN_FIDELITY: its embedding may not describe the
    region, so its prediction is not ranked by find_mislabeled); its ``label`` is not changed. The vocabulary is ``classes`` or the field's distinct
    labels; ``prompt`` is "ensemble" (CLIP's 80 templates) or one template such as "a photo of a {}.".
    The field belongs to the run (deleted with it); a field the run did not write is never overwritten.
    """
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._dataset
    pred_field = pred_field or default_pred_field(run)
    check_pred_field(dataset, run, pred_field, overwrite)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    backbone, classes, text, index = vocabulary(samples, run, classes, prompt, backbone)
    path = list_path(samples, run.regions_field)
    summary = RelabelSummary(pred_field=pred_field, regions=0, changed=0, classes=classes)

    claim_output_field(dataset, run, pred_field)
    if dataset.has_sample_field(pred_field):
        samples.clear_sample_field(pred_field)  # overwrite: no prediction of a region no longer embedded stays
    names = attribute_names(run.embeddings_field)
    declare_attributes(dataset, path, {names["predicted_label"]: fo.StringField, names["mistakenness"]: fo.FloatField,
                                       names["topk_labels"]: (fo.ListField, fo.StringField),
                                       names["topk_scores"]: (fo.ListField, fo.FloatField),
                                       names["low_fidelity"]: fo.BooleanField})
    for sample in samples_with_current(samples, run, run.regions_field).iter_samples(autosave=True, progress=False):
        container = sample[run.regions_field]
        embedded = [r for r in regions_of(container) if is_current(r, run)]
        probs = class_probabilities(backbone, np.stack([r[run.embeddings_field] for r in embedded]), text)
        scores = mistakenness(probs, np.array([index.get(r.label, -1) for r in embedded]))
        predictions = [_prediction(r, p, m, classes, top_k) for r, p, m in zip(embedded, probs, scores)]
        for region, prediction in zip(embedded, predictions):  # the review attributes on the field itself
            region[names["predicted_label"]] = prediction.label
            region[names["mistakenness"]] = prediction["mistakenness"]
            region[names["topk_labels"]] = prediction["topk_labels"]
            region[names["topk_scores"]] = prediction["topk_scores"]
            region[names["low_fidelity"]] = bool(attribute(region, names["dice"]) < defaults.MIN_FIDELITY)
        summary.regions += len(predictions)
        summary.changed += sum(p.label != p["gt_label"] for p in predictions)
        sample[pred_field] = container_of(predictions, container)
    if dataset.has_sample_field(pred_field):
        declare_attributes(dataset, list_path(dataset, pred_field), PREDICTION_ATTRIBUTES)
    return summary


def check_pred_field(dataset, run: RegionRun, pred_field: str, overwrite: bool) -> None:
    """A predictions field must be new, or this run's own and overwrite asked for."""
    if not isinstance(pred_field, str) or not pred_field.isidentifier() or pred_field.startswith("_"):
        raise ValueError(f"pred_field {pred_field!r} must be a plain field name")
    for other in list_region_runs(dataset):
        if other.key != run.key and pred_field in other.pred_fields:
            raise ValueError(f"field {pred_field!r} holds the predictions of {other.describe()}; choose another")
    if dataset.has_sample_field(pred_field):
        if pred_field not in run.pred_fields:
            raise ValueError(f"field {pred_field!r} of {dataset.name!r} holds data this run did not write; "
                             "choose another pred_field")
        if not overwrite:
            raise ValueError(f"field {pred_field!r} already exists in {dataset.name!r}; pass overwrite=True")


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


def run_and_pred_field(samples, label_field: str, embeddings_field: str, pred_field: Optional[str]) -> tuple:
    """(run, its predictions field): the one given, which must belong to the run, or the default."""
    run = require_run(samples, label_field, embeddings_field)
    pred_field = pred_field or default_pred_field(run)
    if pred_field not in run.pred_fields or not samples._dataset.has_sample_field(pred_field):
        raise ValueError(f"no predictions {pred_field!r} of {run.describe()}: run zero_shot_relabel first "
                         f"(its prediction fields: {run.pred_fields or 'none'})")
    return run, pred_field


def prediction_of(patch, pred_field: str):
    """The prediction shown beside a region in a :func:`find_mislabeled` patch (None if there is none)."""
    predictions = regions_of(patch[pred_field])
    return predictions[0] if predictions else None


def apply_relabel(
    samples,
    label_field: str,
    pred_field: Optional[str] = None,
    threshold: float = defaults.RELABEL_THRESHOLD,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
) -> int:
    """Set each region's label to its prediction where confidence >= threshold; returns how many changed.

    The first original label is kept in ``mi_original_label`` so :func:`undo_relabel` can restore it.
    (For a Segmentation field the derived regions are relabelled; the mask itself is not changed.)
    """
    check_probability("threshold", threshold)
    run, pred_field = run_and_pred_field(samples, label_field, embeddings_field, pred_field)
    declare_attributes(samples._dataset, list_path(samples, run.regions_field), {ORIGINAL_LABEL: fo.StringField})
    changes = {}
    view = samples.exists(pred_field).select_fields([run.regions_field, pred_field])
    for sample in view.iter_samples(autosave=True, progress=False):
        confident = {
            p["source_label_id"]: p.label for p in regions_of(sample[pred_field]) if p.confidence >= threshold
        }
        for region in regions_of(sample[run.regions_field]):
            new_label = confident.get(region.id)
            if new_label is None or new_label == region.label:
                continue
            if attribute(region, ORIGINAL_LABEL) is None:
                region[ORIGINAL_LABEL] = region.label
            region.label = changes[region.id] = new_label
    heatmap_store.update_labels(samples._dataset, run.regions_field, changes)
    return len(changes)


def undo_relabel(samples, label_field: str) -> int:
    """Restore every label changed by :func:`apply_relabel`; returns how many were restored."""
    regions_field = regions_field_for(samples, label_field)
    changes = {}
    view = samples.match_labels(filter=F(ORIGINAL_LABEL).exists(), fields=regions_field).select_fields(regions_field)
    for sample in view.iter_samples(autosave=True, progress=False):
        for region in regions_of(sample[regions_field]):
            original = attribute(region, ORIGINAL_LABEL)
            if original is not None:
                region.label = changes[region.id] = original
                region[ORIGINAL_LABEL] = None
    heatmap_store.update_labels(samples._dataset, regions_field, changes)
    return len(changes)


def find_mislabeled(samples, label_field: str, pred_field: Optional[str] = None,
                    embeddings_field: str = defaults.EMBEDDINGS_FIELD, include_low_fidelity: bool = False):
    """A patches view of the annotated regions, most likely mislabeled first (needs zero_shot_relabel).

    Each patch shows the annotated region and, beside it, its prediction (``pred_field``, same geometry,
    label = the predicted class with its confidence), so a tile says both what was annotated and what
    is guessed. Regions flagged ``_low_fidelity`` are left out unless ``include_low_fidelity``."""
    run, pred_field = run_and_pred_field(samples, label_field, embeddings_field, pred_field)
    names = attribute_names(run.embeddings_field)
    ranked = F(names["mistakenness"]) != None  # noqa: E711
    if not include_low_fidelity:
        ranked &= F(names["low_fidelity"]) != True  # noqa: E712
    patches = samples.filter_labels(run.regions_field, ranked).to_patches(run.regions_field, other_fields=[pred_field])
    own = F("source_label_id") == F(f"${run.regions_field}._id").to_string()
    return patches.filter_labels(pred_field, own, only_matches=False).sort_by(
        F(f"{run.regions_field}.{names['mistakenness']}"), reverse=True)
