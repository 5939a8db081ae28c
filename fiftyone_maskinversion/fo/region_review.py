"""What the runs stored about one region, read for the App's MaskInversion panel (nothing is computed).

For a region (label id) of a user's dataset and one of the runs that embedded it: the region's label
and tags, its heatmap from the companion dataset, the inversion's Dice/IoU, the latest relabel's
prediction and top-k, class mistakenness, mask mistakenness with its components and reason, the label
before the latest applied relabel, and the run's settings; plus what to run where something is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import heatmaps as heatmap_store
from .preview import mask_at_image_size
from .regions import attribute, list_path, regions_of
from .runs import RegionRun, attribute_names, is_current, list_region_runs

REVIEW_TAGS = ("mi:wrong-class", "mi:bad-mask", "mi:ok")  # a curator's verdict, as FiftyOne label tags


@dataclass
class RegionReview:
    """One region as one run saw it (None where the run has not computed that part)."""

    label_id: str
    sample_id: str
    field: str  # where the region lives (the run's regions field)
    label: str
    tags: List[str]
    filepath: str
    run: RegionRun
    current: bool  # the region holds an embedding of the run's current settings
    dice: Optional[float] = None
    iou: Optional[float] = None
    predicted_label: Optional[str] = None
    topk: List[tuple] = field(default_factory=list)  # (label, probability), most likely first
    mistakenness: Optional[float] = None
    low_fidelity: Optional[bool] = None
    mask_mistakenness: Optional[float] = None
    mask_components: Dict[str, float] = field(default_factory=dict)
    mask_reason: Optional[str] = None
    relabelled_from: Optional[str] = None  # the label before the latest applied relabel (what Undo restores)
    heatmap: Optional[np.ndarray] = None  # uint8 map from the companion, stretched over the image when drawn
    mask: Optional[np.ndarray] = None  # H x W bool, the region at image resolution

    @property
    def missing(self) -> List[str]:
        """What to run to fill the parts this review lacks, one readable line each."""
        steps = []
        if not self.current:
            steps.append("compute region embeddings (this region has no embedding of the run's settings)")
        elif self.heatmap is None and self.run.heatmaps["storage"] == "none":
            steps.append("compute region embeddings with heatmaps kept ('database' or 'files'): this run keeps none")
        elif self.heatmap is None:
            steps.append("compute region embeddings again: this region's heatmap is missing")
        if self.current and self.predicted_label is None:
            steps.append("zero-shot relabel, for the predicted label, top-k and class mistakenness")
        if self.current and self.mask_mistakenness is None:
            steps.append("find bad masks, for the mask mistakenness and its components")
        return steps


def runs_of_field(dataset: fo.Dataset, field_name: str) -> List[RegionRun]:
    """The runs whose regions live in ``field_name`` (a user's field or a derived regions field)."""
    return [run for run in list_region_runs(dataset) if field_name in (run.regions_field, run.label_field)]


def find_region(dataset: fo.Dataset, label_id: str, field_name: Optional[str] = None) -> tuple:
    """(sample, field name, region) of a label id in the dataset's run regions fields; ValueError if absent."""
    fields = [field_name] if field_name else list(dict.fromkeys(r.regions_field for r in list_region_runs(dataset)))
    for name in fields:
        if not dataset.has_sample_field(name):
            continue
        view = dataset.select_labels(ids=[label_id], fields=name)
        sample = view.first() if len(view) else None
        if sample is not None:
            return sample, name, regions_of(sample[name])[0]
    raise ValueError(f"no region {label_id!r} in the fields MaskInversion runs embedded of {dataset.name!r}")


def review_region(dataset: fo.Dataset, label_id: str, embeddings_field: Optional[str] = None,
                  field_name: Optional[str] = None) -> RegionReview:
    """Everything stored about region ``label_id`` by one run (``embeddings_field``, else the first run of
    its field); reads only."""
    sample, name, region = find_region(dataset, label_id, field_name)
    runs = [r for r in runs_of_field(dataset, name) if embeddings_field in (None, r.embeddings_field)]
    if not runs:
        raise ValueError(f"no MaskInversion run {embeddings_field or ''} on {name!r} of {dataset.name!r}")
    run = runs[0]
    names = attribute_names(run.embeddings_field)
    value = lambda key: attribute(region, names[key])  # noqa: E731
    review = RegionReview(
        label_id=region.id, sample_id=sample.id, field=name, label=region.label, tags=list(region.tags or []),
        filepath=sample.filepath, run=run, current=is_current(region, run), dice=value("dice"), iou=value("iou"),
        predicted_label=value("predicted_label"), mistakenness=value("mistakenness"),
        low_fidelity=value("low_fidelity"), mask_mistakenness=value("mask_mistakenness"),
        relabelled_from=(value("relabel_from") or [None])[-1],
    )
    review.topk = list(zip(value("topk_labels") or [], value("topk_scores") or []))
    review.mask_components, review.mask_reason = _mask_components(dataset, region, name, run)
    review.heatmap = _stored_heatmap(dataset, name, run, region.id)
    review.mask = mask_at_image_size(sample.filepath, region)
    return review


def _mask_components(dataset: fo.Dataset, region, field_name: str, run: RegionRun) -> tuple:
    """({component: value}, reason) of the mask review: every declared attribute named
    ``<embeddings_field>_mask_<component>`` besides the score itself (the review decides which exist)."""
    prefix = f"{list_path(dataset, field_name)}.{run.embeddings_field}_mask_"
    score = attribute_names(run.embeddings_field)["mask_mistakenness"]
    components, reason = {}, None
    for path in dataset.get_field_schema(flat=True):
        if not path.startswith(prefix):
            continue
        name = path.rsplit(".", 1)[1]
        value = attribute(region, name)
        if name == score or value is None:
            continue
        if name == f"{run.embeddings_field}_mask_reason":
            reason = str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            components[name[len(prefix.rsplit(".", 1)[1]):]] = float(value)
    return components, reason


def _stored_heatmap(dataset: fo.Dataset, field_name: str, run: RegionRun, label_id: str) -> Optional[np.ndarray]:
    companion = heatmap_store.heatmaps_dataset(dataset)
    if companion is None:
        return None
    view = companion.match((F("source_label_id") == label_id) & (F("source_field") == field_name)
                           & (F("embeddings_field") == run.embeddings_field))
    maps = view.limit(1).values("heatmap")
    return maps[0].get_map() if maps and maps[0] is not None else None
