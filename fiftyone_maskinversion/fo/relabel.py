"""Zero-shot relabeling of regions, applying/undoing relabels, and the mislabel (mistakenness) ranking.

Mistakenness of a region is 1 - p(annotated class | region): the probability mass the zero-shot
classifier puts on the other classes of the vocabulary (None when the annotated class is not in it).
Predictions are written to a field the run owns; the ground truth changes only through apply_relabel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .. import defaults
from ..core.backbone import Backbone
from ..core.zeroshot import class_probabilities, mistakenness
from . import heatmaps as heatmap_store
from .arguments import check_count, check_probability
from .ownership import check_free, check_name, check_output_field, claim, mark_field
from .regions import attribute, container_of, declare_attributes, geometry_copy, label_type, list_path, regions_of
from .run_views import samples_with_current
from .runs import RegionRun, attribute_names, attribute_paths, is_current, require_run, store_in_tooltip_order
from .targets import resolve_target
from .vocabulary import vocabulary

# what each prediction carries besides a label's own fields, declared so the App's sidebar filters on them
PREDICTION_ATTRIBUTES = {"gt_label": fo.StringField, "mistakenness": fo.FloatField, "source_label_id": fo.StringField,
                         "run_stamp": fo.StringField, "topk_labels": (fo.ListField, fo.StringField),
                         "topk_scores": (fo.ListField, fo.FloatField)}
RELABEL_ATTRIBUTES = {"predicted_label": fo.StringField, "mistakenness": fo.FloatField,
                      "topk_labels": (fo.ListField, fo.StringField), "topk_scores": (fo.ListField, fo.FloatField),
                      "low_fidelity": fo.BooleanField}
HISTORY_ATTRIBUTES = {"relabel_from": (fo.ListField, fo.StringField), "relabel_to": (fo.ListField, fo.StringField)}


@dataclass
class RelabelSummary:
    pred_field: str
    regions: int
    changed: int  # regions whose top prediction differs from the annotation
    classes: list


@dataclass
class RelabelChanges:
    """What an apply (or undo) changed, or would change with ``dry_run``, and what it left alone and why."""

    changed: Dict[str, tuple] = field(default_factory=dict)  # label id -> (label before, label after)
    skipped_edited: List[str] = field(default_factory=list)  # the curator changed the label since: never overwritten
    skipped_stale: List[str] = field(default_factory=list)  # the prediction is of an embedding since recomputed
    skipped_low_fidelity: List[str] = field(default_factory=list)
    below_threshold: int = 0
    dry_run: bool = False

    @property
    def count(self) -> int:
        return len(self.changed)

    def describe(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        parts = [f"{verb} {self.count} label(s)"]
        for what, ids in (("changed by hand since the prediction (kept)", self.skipped_edited),
                          ("predicted from an embedding since recomputed (relabel again)", self.skipped_stale),
                          ("low fidelity (Dice below the threshold; pass include_low_fidelity)", self.skipped_low_fidelity)):
            if ids:
                parts.append(f"skipped {len(ids)} {what}")
        if self.below_threshold:
            parts.append(f"{self.below_threshold} below the confidence threshold")
        return "; ".join(parts)


def default_pred_field(run: RegionRun) -> str:
    """``defaults.PRED_FIELD`` of the run, or the predictions field a run made under the earlier default
    name ``defaults.EARLIER_PRED_FIELD`` (it keeps using it)."""
    earlier = defaults.EARLIER_PRED_FIELD.format(label_field=run.label_field, embeddings_field=run.embeddings_field)
    if earlier in run.pred_fields:
        return earlier
    return defaults.PRED_FIELD.format(label_field=run.label_field, embeddings_field=run.embeddings_field)


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
    progress: Optional[Callable[[int, int], None]] = None,
) -> RelabelSummary:
    """Write ``pred_field``: a clone (same geometry) of each embedded region with the predicted label.

    Each prediction has ``label``, ``confidence``, ``topk_labels``/``topk_scores``, ``gt_label`` (the
    label it was predicted for), ``mistakenness``, ``source_label_id`` and ``run_stamp`` (the embedding
    it was predicted from); each embedded region of the field itself gets ``<embeddings_field>_predicted_label``,
    ``_topk_labels``, ``_topk_scores`` and ``_mistakenness`` of this (latest) relabel, for review in the
    App on the field the user already looks at, and ``_low_fidelity`` (the inversion's Dice <
    defaults.MIN_FIDELITY: its embedding may not describe the region, so its prediction is not ranked by
    find_mislabeled); its ``label`` is not changed. The vocabulary is ``classes`` or the field's distinct
    labels; ``prompt`` is "ensemble" (CLIP's 80 templates) or one template such as "a photo of a {}.".
    The field and attributes are claimed by the run (deleted with it); data the run did not write is
    never overwritten. The vocabulary's text embeddings are computed once and stored with the run
    (``progress(done, total)`` counts the classes embedded); later steps in any process read them.
    """
    samples = resolve_target(samples).samples  # a review view (patches, heatmaps) stands for its samples
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    pred_field = pred_field or default_pred_field(run)
    check_name(pred_field, "pred_field")
    check_output_field(run, pred_field, "predictions")
    check_free(dataset, run, "field", pred_field)
    if run.owns("field", pred_field) and dataset.has_sample_field(pred_field) and not overwrite:
        raise ValueError(f"field {pred_field!r} already exists in {dataset.name!r}; pass overwrite=True")
    paths = attribute_paths(dataset, run.regions_field, run.embeddings_field, RELABEL_ATTRIBUTES)
    for path in paths.values():
        check_free(dataset, run, "attribute", path)
    check_count("top_k", top_k)
    backbone, classes, text, index = vocabulary(samples, run, classes, prompt, backbone, progress)
    summary = RelabelSummary(pred_field=pred_field, regions=0, changed=0, classes=classes)

    run = claim(dataset, run, "field", [pred_field])
    run = claim(dataset, run, "attribute", paths.values())
    if dataset.has_sample_field(pred_field):
        samples.clear_sample_field(pred_field)  # overwrite: no prediction of a region no longer embedded stays
    else:
        dataset.add_sample_field(pred_field, fo.EmbeddedDocumentField,
                                 embedded_doc_type=label_type(dataset, run.regions_field))
    mark_field(dataset, run, pred_field)
    names = attribute_names(run.embeddings_field)
    declare_attributes(dataset, list_path(dataset, run.regions_field),
                       {names[key]: kind for key, kind in RELABEL_ATTRIBUTES.items()})
    touched = []
    for sample in samples_with_current(samples, run, run.regions_field).iter_samples(autosave=True, progress=False):
        touched.append(sample.id)
        container = sample[run.regions_field]
        embedded = [r for r in regions_of(container) if is_current(r, run)]
        probs = class_probabilities(backbone, np.stack([r[run.embeddings_field] for r in embedded]), text)
        scores = mistakenness(probs, np.array([index.get(r.label, -1) for r in embedded]))
        predictions = [_prediction(r, p, m, classes, top_k, run.stamp) for r, p, m in zip(embedded, probs, scores)]
        for region, prediction in zip(embedded, predictions):  # the review attributes on the field itself
            region[names["predicted_label"]] = prediction.label
            region[names["mistakenness"]] = prediction["mistakenness"]
            region[names["topk_labels"]] = prediction["topk_labels"]
            region[names["topk_scores"]] = prediction["topk_scores"]
            region[names["low_fidelity"]] = bool(attribute(region, names["dice"]) < defaults.MIN_FIDELITY)
        summary.regions += len(predictions)
        summary.changed += sum(p.label != p["gt_label"] for p in predictions)
        sample[pred_field] = container_of(predictions, container)
    store_in_tooltip_order(dataset, run, touched)
    if dataset.has_sample_field(pred_field):
        declare_attributes(dataset, list_path(dataset, pred_field), PREDICTION_ATTRIBUTES)
    return summary


def _prediction(region, probs: np.ndarray, score: float, classes: list, top_k: int, stamp: str):
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
        run_stamp=stamp,
    )


def run_and_pred_field(samples, label_field: str, embeddings_field: str, pred_field: Optional[str]) -> tuple:
    """(run, its predictions field): the one given, which must belong to the run, or the default."""
    run = require_run(samples, label_field, embeddings_field)
    pred_field = pred_field or default_pred_field(run)
    if pred_field not in run.pred_fields or not samples._root_dataset.has_sample_field(pred_field):
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
    label_ids: Optional[Sequence[str]] = None,
    include_low_fidelity: bool = False,
    dry_run: bool = False,
) -> RelabelChanges:
    """Set each region's label to its prediction where confidence >= threshold, only where the label is
    still the one the prediction was made for and the prediction is of the region's current embedding
    (the curator's edits win); low-fidelity regions are left out unless ``include_low_fidelity``.
    ``label_ids`` restricts it to those regions (one region: accept its prediction); ``dry_run`` writes
    nothing and says what would change. Each change is pushed on the region's relabel history
    (``<embeddings_field>_relabel_from`` / ``_relabel_to``) so :func:`undo_relabel` restores it. (For a
    Segmentation field the derived regions are relabelled; the mask itself is not changed.)
    """
    check_probability("threshold", threshold)
    samples, label_ids = _as_regions(samples, label_ids)
    run, pred_field = run_and_pred_field(samples, label_field, embeddings_field, pred_field)
    dataset = samples._root_dataset
    wanted = _label_ids(label_ids)
    history = attribute_paths(dataset, run.regions_field, run.embeddings_field, HISTORY_ATTRIBUTES)
    for path in history.values():
        check_free(dataset, run, "attribute", path)
    names = attribute_names(run.embeddings_field)
    changes = RelabelChanges(dry_run=dry_run)
    if not dry_run:
        run = claim(dataset, run, "attribute", history.values())
        declare_attributes(dataset, list_path(dataset, run.regions_field),
                           {names[key]: kind for key, kind in HISTORY_ATTRIBUTES.items()})
    view = _with_labels(samples.exists(pred_field), run.regions_field, wanted).select_fields([run.regions_field, pred_field])
    touched = []
    for sample in view.iter_samples(autosave=not dry_run, progress=False):
        predictions = {p["source_label_id"]: p for p in regions_of(sample[pred_field])}
        applied = len(changes.changed)
        for region in regions_of(sample[run.regions_field]):
            prediction = predictions.get(region.id)
            if prediction is None or (wanted is not None and region.id not in wanted):
                continue
            if prediction.confidence < threshold:
                changes.below_threshold += 1
            elif prediction.label == region.label:
                continue
            elif region.label != prediction["gt_label"]:
                changes.skipped_edited.append(region.id)
            elif attribute(region, names["run"]) != prediction["run_stamp"]:
                changes.skipped_stale.append(region.id)
            elif attribute(region, names["low_fidelity"]) and not include_low_fidelity:
                changes.skipped_low_fidelity.append(region.id)
            else:
                changes.changed[region.id] = (region.label, prediction.label)
                if not dry_run:
                    _push_history(region, names, region.label, prediction.label)
                    region.label = prediction.label
        if len(changes.changed) > applied:
            touched.append(sample.id)
    if not dry_run:
        store_in_tooltip_order(dataset, run, touched)
        heatmap_store.update_labels(dataset, run.regions_field, {i: new for i, (_, new) in changes.changed.items()})
    return changes


def undo_relabel(samples, label_field: str, label_ids: Optional[Sequence[str]] = None,
                 embeddings_field: str = defaults.EMBEDDINGS_FIELD, dry_run: bool = False) -> RelabelChanges:
    """Undo the latest applied relabel of each region (of ``label_ids``, or all): its label goes back to
    what it was, only where it is still the label apply_relabel set (a label edited since is kept and
    reported). Calling it again undoes the apply before that."""
    samples, label_ids = _as_regions(samples, label_ids)
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    wanted = _label_ids(label_ids)
    names = attribute_names(run.embeddings_field)
    changes = RelabelChanges(dry_run=dry_run)
    if not dataset.has_field(f"{list_path(dataset, run.regions_field)}.{names['relabel_to']}"):
        return changes
    applied = F(names["relabel_to"]).length() > 0
    view = _with_labels(samples.match_labels(filter=applied, fields=run.regions_field), run.regions_field, wanted)
    for sample in view.select_fields(run.regions_field).iter_samples(autosave=not dry_run, progress=False):
        for region in regions_of(sample[run.regions_field]):
            before, after = attribute(region, names["relabel_from"]) or [], attribute(region, names["relabel_to"]) or []
            if not after or (wanted is not None and region.id not in wanted):
                continue
            if region.label != after[-1]:
                changes.skipped_edited.append(region.id)
                continue
            changes.changed[region.id] = (region.label, before[-1])
            if not dry_run:
                region.label = before[-1]
                region[names["relabel_from"]], region[names["relabel_to"]] = before[:-1], after[:-1]
    if not dry_run:
        heatmap_store.update_labels(dataset, run.regions_field, {i: new for i, (_, new) in changes.changed.items()})
    return changes


def _as_regions(samples, label_ids) -> tuple:
    """(the user's samples, the regions to act on): a review view (patches, heatmaps) stands for its samples
    and, unless ``label_ids`` are given, for the regions it shows."""
    target = resolve_target(samples)
    return target.samples, label_ids if label_ids is not None else target.label_ids


def _push_history(region, names: dict, before: str, after: str) -> None:
    region[names["relabel_from"]] = (attribute(region, names["relabel_from"]) or []) + [before]
    region[names["relabel_to"]] = (attribute(region, names["relabel_to"]) or []) + [after]


def _label_ids(label_ids) -> Optional[set]:
    if label_ids is None:
        return None
    if isinstance(label_ids, str) or not all(isinstance(i, str) for i in label_ids):
        raise ValueError(f"label_ids must be a list of label id strings, got {label_ids!r}")
    return set(label_ids)


def _with_labels(samples, regions_field: str, label_ids: Optional[set]):
    """The samples holding any of ``label_ids`` (all samples when None), their label lists whole."""
    if label_ids is None:
        return samples
    return samples.select(samples.select_labels(ids=list(label_ids), fields=regions_field).values("id"))


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
