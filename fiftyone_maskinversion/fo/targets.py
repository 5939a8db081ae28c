"""Map any view the package opens back to the user's dataset and the regions it shows.

The review views are patches views (find_mislabeled, find_bad_masks, find_missing_regions,
search_regions) or samples of the heatmaps companion dataset; a follow-up operation (score, relabel,
apply, search) must act on the user's dataset and on the regions the view shows, never on the
patches or companion dataset itself. Read only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from .heatmaps import source_dataset
from .runs import RegionRun, list_region_runs


@dataclass
class Target:
    """What a view stands for in the user's dataset: the samples, and (for a region view) its regions."""

    dataset: fo.Dataset  # the user's dataset (never a patches or companion dataset)
    samples: object  # the user's samples the view shows (the view itself when it is not a region view)
    field: Optional[str] = None  # the field the view's regions live in (a run's regions or output field)
    label_ids: Optional[List[str]] = None  # the regions shown, in the view's order; None: not a region view
    run: Optional[RegionRun] = None  # the run that owns ``field``, if any
    kind: str = "samples"  # "samples", "patches" or "heatmaps"

    @property
    def label_field(self) -> Optional[str]:
        """The user's label field of the run the view belongs to (a derived or output field maps to it)."""
        return self.run.label_field if self.run else self.field

    @property
    def embeddings_field(self) -> Optional[str]:
        return self.run.embeddings_field if self.run else None

    @property
    def regions(self):
        """The user's samples with only the shown regions of ``field`` (every sample and label when the
        view shows no regions of the run's own regions field: output fields such as suggestions)."""
        if self.label_ids is None or self.run is None or self.field != self.run.regions_field:
            return self.samples
        return only_regions(self.samples, self.field, self.label_ids)


def only_regions(samples, field: str, label_ids: List[str]):
    """``samples`` with only the given regions of ``field`` (other fields, predictions included, kept whole,
    which FiftyOne's select_labels would drop), and only the samples holding one."""
    return samples.filter_labels(field, F("_id").is_in([ObjectId(i) for i in label_ids]))


def resolve_target(samples) -> Target:
    """The :class:`Target` of ``samples``: a patches view, a view of the heatmaps companion, or (as is)
    any view of a user's dataset."""
    if samples._is_patches:
        return _patches_target(samples)
    source = source_dataset(samples._dataset)
    if source is not None:
        return _heatmaps_target(samples, source)
    return Target(dataset=samples._dataset, samples=samples)


def _patches_target(patches) -> Target:
    dataset = patches._root_dataset
    field = patches.patches_field
    sample_ids = list(dict.fromkeys(patches.values("sample_id")))
    label_ids = [i for i in patches.values(f"{field}.id") if i is not None]
    return Target(dataset=dataset, samples=dataset.select(sample_ids, ordered=True), field=field,
                  label_ids=label_ids, run=_run_of(dataset, field), kind="patches")


def _heatmaps_target(companion_view, dataset: fo.Dataset) -> Target:
    fields = companion_view.distinct("source_field")
    embeddings = companion_view.distinct("embeddings_field")
    if len(fields) > 1:
        raise ValueError(f"this view of the heatmaps holds regions of several fields {fields}: "
                         "filter it to one (match source_field) first")
    field = fields[0] if fields else None
    sample_ids = list(dict.fromkeys(companion_view.values("source_sample_id")))
    run = _run_of(dataset, field, embeddings[0] if len(embeddings) == 1 else None) if field else None
    return Target(dataset=dataset, samples=dataset.select(sample_ids, ordered=True), field=field,
                  label_ids=list(companion_view.values("source_label_id")), run=run, kind="heatmaps")


def _run_of(dataset: fo.Dataset, field: str, embeddings_field: Optional[str] = None) -> Optional[RegionRun]:
    """The run whose regions or outputs live in ``field`` (the given embeddings family, if known)."""
    for run in list_region_runs(dataset):
        if embeddings_field not in (None, run.embeddings_field):
            continue
        if field in (run.regions_field, run.label_field) or field in run.pred_fields:
            return run
    return None
