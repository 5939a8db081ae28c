"""The bad-mask finder on a dataset: a mask mistakenness score on every embedded region, suggested
missing regions, and the views that rank them (the score itself is defined in core.badmask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from .. import defaults
from ..core.backbone import Backbone
from ..core.badmask import COMPONENTS, review_masks
from ..core.inputs import InputError, load_rgb
from ..core.inversion import MaskInverter
from .arguments import check_probability
from .ownership import check_free, check_name, check_output_field, claim, mark_field, set_role
from .regions import LabelError, attribute, declare_attributes, list_path, region_mask, regions_of
from .run_views import current_regions, samples_with_current
from .runs import (RegionRun, attribute_names, attribute_paths, is_current, require_run, settings_digest,
                   store_in_tooltip_order, update_run)
from .targets import resolve_target
from .vocabulary import class_names, vocabulary

MASK_REVIEW_ATTRIBUTES = {"mask_mistakenness": fo.FloatField, "mask_review": fo.StringField,
                          "mask_reason": fo.StringField,
                          **{f"mask_{part}": fo.FloatField for part in COMPONENTS}}  # why a mask is flagged


@dataclass
class MaskReviewSummary:
    """What a mask review wrote: scored regions, suggested missing regions, and what failed (sample id,
    label id or None for the image, reason)."""

    missing_field: Optional[str]
    scored: int = 0
    unscorable: int = 0  # reviewed, but no score (the class is not in the vocabulary, ...)
    skipped_scored: int = 0
    suggested: int = 0
    failed: List[tuple] = field(default_factory=list)


def default_missing_field(run: RegionRun) -> str:
    """``defaults.MISSING_FIELD`` of the run, or the suggestions field the run already has (a run made
    under the earlier default name ``<label field>_<embeddings field>_missing`` keeps using it)."""
    earlier = run.roles.get("missing_field")
    if earlier and earlier in run.pred_fields:
        return earlier
    return defaults.MISSING_FIELD.format(label_field=run.label_field, embeddings_field=run.embeddings_field)


def score_masks(
    samples,
    label_field: str,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    classes: Optional[Sequence[str]] = None,
    prompt: str = defaults.PROMPT,
    suggest_missing: bool = True,
    missing_field: Optional[str] = None,
    min_missing_score: float = defaults.MIN_MISSING_SCORE,
    confirmation: float = defaults.MISSING_CONFIRMATION,
    overwrite: bool = False,
    backbone: Optional[Backbone] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> MaskReviewSummary:
    """Write ``<embeddings_field>_mask_mistakenness`` on every region embedded by the run (regions
    already scored are kept unless ``overwrite``) and, with ``suggest_missing``, a Detections field of
    suggested missing regions (``label``, ``bounding_box``, ``confidence`` = the suggestion's score,
    ``confirmation`` = p(label | the MaskInversion embedding of the box, by the run's settings), kept
    from ``confirmation``), owned by the run. One image forward per sample (and one inversion of the
    candidate boxes where there are some); the vocabulary is ``classes`` or the field's labels.
    """
    samples = resolve_target(samples).samples  # a review view (patches, heatmaps) stands for its samples
    run = require_run(samples, label_field, embeddings_field)
    dataset = samples._root_dataset
    check_probability("min_missing_score", min_missing_score)
    check_probability("confirmation", confirmation)
    missing_field = (missing_field or default_missing_field(run)) if suggest_missing else None
    if missing_field:
        check_name(missing_field, "missing_field")
        check_output_field(run, missing_field, "missing")
        check_free(dataset, run, "field", missing_field)
    paths = attribute_paths(dataset, run.regions_field, run.embeddings_field, MASK_REVIEW_ATTRIBUTES)
    for path in paths.values():
        check_free(dataset, run, "attribute", path)
    classes = class_names(samples, run, classes)  # resolved once: the review records it, the vocabulary embeds it
    review = {"classes": sorted(classes), "prompt": prompt, "missing_field": missing_field,
              "min_missing_score": float(min_missing_score), "confirmation": float(confirmation)}
    stamp = settings_digest({**review, "run": run.stamp})
    names = attribute_names(run.embeddings_field)
    earlier = dict(run.mask_review["settings"]) if run.mask_review else None
    if earlier and earlier["classes"] is None:  # a review recorded before vocabularies were stored resolved
        earlier["classes"] = sorted(class_names(samples, run, None))
    if earlier and earlier != review and not overwrite:
        other = current_regions(dataset, run).filter_labels(  # the whole dataset, never the view
            run.regions_field, F(names["mask_review"]).exists() & (F(names["mask_review"]) != stamp))
        if len(other):
            changed = {k: (earlier.get(k), v) for k, v in review.items() if earlier.get(k) != v}
            raise ValueError(f"the masks of {run.describe()} were reviewed with other settings {changed} (old, new): "
                             "these cannot take effect on regions already scored; pass overwrite=True to rescore")
    backbone, _, text, index = vocabulary(samples, run, classes, prompt, backbone)
    summary = MaskReviewSummary(missing_field)
    settings = run.settings
    inverter = MaskInverter(backbone, iterations=settings["iterations"], lr=settings["lr"], alpha=settings["alpha"],
                            blocks=settings["blocks"], precision=settings.get("precision", "fp32"))

    if missing_field:
        run = set_role(dataset, claim(dataset, run, "field", [missing_field]), "missing_field", missing_field)
    run = claim(dataset, run, "attribute", paths.values())
    run = update_run(dataset, run, set_={"mask_review": {"settings": review, "stamp": stamp}})
    declare_attributes(dataset, list_path(dataset, run.regions_field),
                       {names[key]: kind for key, kind in MASK_REVIEW_ATTRIBUTES.items()})
    if missing_field:
        if not dataset.has_sample_field(missing_field):
            dataset.add_sample_field(missing_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        mark_field(dataset, run, missing_field)
        declare_attributes(dataset, list_path(dataset, missing_field), {"confirmation": fo.FloatField})
    fields = [run.regions_field] + ([missing_field] if missing_field else [])
    view = samples_with_current(samples, run, fields)
    total = len(view)
    touched = []
    for number, sample in enumerate(view.iter_samples(autosave=True, progress=False)):
        _review_sample(sample, run, inverter, text, index, missing_field, (min_missing_score, confirmation), stamp,
                       overwrite, summary)
        touched.append(sample.id)
        if progress:
            progress(number + 1, total)
    store_in_tooltip_order(dataset, run, touched)
    return summary


def _review_sample(sample, run: RegionRun, inverter: MaskInverter, text, index, missing_field, thresholds: tuple,
                   stamp: str, overwrite, summary: MaskReviewSummary) -> None:
    """Score one sample's embedded regions not reviewed with these settings yet (every region with a mask
    covers the image for suggestions); each reviewed region gets the review's stamp, scored or not."""
    backbone = inverter.backbone
    names = attribute_names(run.embeddings_field)
    regions = regions_of(sample[run.regions_field])
    current = [r for r in regions if is_current(r, run)]
    todo = {r.id for r in current if overwrite or attribute(r, names["mask_review"]) != stamp}
    summary.skipped_scored += len(current) - len(todo)
    if not todo:
        return
    try:
        image = load_rgb(sample.filepath, min_side=backbone.patch_size)
    except InputError as err:
        summary.failed.append((sample.id, None, str(err)))
        return
    used, masks = [], []
    for region in regions:
        try:
            masks.append(region_mask(region, image.width, image.height))
            used.append(region)
        except LabelError as err:
            if region.id in todo:
                summary.failed.append((sample.id, region.id, str(err)))
    if not used:
        return
    dice = [attribute(r, names["dice"]) if r.id in todo else np.nan for r in used]
    labels = [index.get(r.label, -1) for r in used]
    review = review_masks(backbone, image, masks, labels, text, np.array(dice, dtype=float), blocks=inverter.blocks,
                          min_missing_score=thresholds[0] if missing_field else None, inverter=inverter,
                          confirmation=thresholds[1])
    for k, (region, score) in enumerate(zip(used, review.mask_mistakenness)):
        if region.id in todo:
            region[names["mask_mistakenness"]] = None if np.isnan(score) else float(score)
            region[names["mask_review"]] = stamp
            region[names["mask_reason"]] = review.reasons[k]
            for part in COMPONENTS:
                value = review.components[part][k]
                region[names[f"mask_{part}"]] = None if np.isnan(value) else float(value)
            summary.scored += not np.isnan(score)
            summary.unscorable += bool(np.isnan(score))
    if missing_field:
        classes = list(index)
        sample[missing_field] = fo.Detections(detections=[
            fo.Detection(label=classes[m.class_index], bounding_box=m.box, confidence=m.score,
                         confirmation=m.confirmation) for m in review.missing])
        summary.suggested += len(review.missing)


def find_bad_masks(samples, label_field: str, embeddings_field: str = defaults.EMBEDDINGS_FIELD):
    """A patches view of the field's scored regions, the most likely bad masks first. It only reads what
    :func:`score_masks` stored (run that first); it never computes."""
    run = require_run(samples, label_field, embeddings_field)
    name = attribute_names(run.embeddings_field)["mask_mistakenness"]
    if not run.mask_review:
        raise ValueError(f"the masks of {run.describe()} have not been reviewed: run score_masks first")
    patches = samples.filter_labels(run.regions_field, F(name) != None).to_patches(run.regions_field)  # noqa: E711
    return patches.sort_by(F(f"{run.regions_field}.{name}"), reverse=True)


def find_missing_regions(samples, label_field: str, embeddings_field: str = defaults.EMBEDDINGS_FIELD,
                         missing_field: Optional[str] = None):
    """A patches view of the suggested missing regions, the most confident first (needs score_masks)."""
    run = require_run(samples, label_field, embeddings_field)
    missing_field = missing_field or default_missing_field(run)
    if missing_field not in run.pred_fields or not samples._root_dataset.has_sample_field(missing_field):
        raise ValueError(f"no suggested regions {missing_field!r} of {run.describe()}: run score_masks first")
    return samples.to_patches(missing_field).sort_by(F(f"{missing_field}.confidence"), reverse=True)
