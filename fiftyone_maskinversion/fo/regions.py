"""Turning FiftyOne region labels into binary masks at image resolution.

Supported fields: ``Detections`` (instance masks, cropped to the box as FiftyOne stores them, or
boxes only, in which case the box itself is the mask), ``Polylines`` (every polyline is rendered as
a filled polygon, closed or not), and ``Segmentation`` (converted once into a derived ``Detections``
field with one region per class present, see :func:`derive_segmentation_regions`).
COCO crowd regions (``iscrowd`` = 1) cover several objects at once; they are skipped unless asked for.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import fiftyone as fo
import numpy as np

from ..core.inputs import box_mask

logger = logging.getLogger(__name__)
REGION_TYPES = {fo.Detections: "detections", fo.Polylines: "polylines"}
SUPPORTED_TYPES = (fo.Detections, fo.Polylines, fo.Segmentation)


class LabelError(ValueError):
    """A label that cannot be turned into a region mask."""


def label_type(samples, label_field: str):
    """The label class of a field; raises ValueError naming the field if it is not supported."""
    field = samples._root_dataset.get_field(label_field)
    doc_type = getattr(field, "document_type", None)
    if doc_type not in SUPPORTED_TYPES:
        found = doc_type.__name__ if doc_type else type(field).__name__ if field else "no such field"
        raise ValueError(
            f"field {label_field!r} of {samples._root_dataset.name!r} holds {found}; "
            "supported: Detections, Polylines, Segmentation"
        )
    return doc_type


def list_path(samples, label_field: str) -> str:
    """``field.detections`` or ``field.polylines``: where the region labels of a field live."""
    return f"{label_field}.{REGION_TYPES[label_type(samples, label_field)]}"


def regions_of(label) -> list:
    """The region labels (Detection or Polyline objects) of a Detections/Polylines value (None -> [])."""
    if label is None:
        return []
    return list(label[REGION_TYPES[type(label)]])


def attribute(region, name: str):
    """A label attribute's value, None when the label does not have it."""
    return region.get_attribute_value(name, None)


def is_crowd(region) -> bool:
    return bool(attribute(region, "iscrowd"))


def region_mask(region, width: int, height: int) -> np.ndarray:
    """H x W bool mask of one Detection or Polyline in an image of the given size."""
    if isinstance(region, fo.Polyline):
        if not region.points or not any(len(shape) >= 3 for shape in region.points):
            raise LabelError("polyline has no shape with at least 3 points")
        def raster(filled: bool) -> np.ndarray:
            shape = fo.Polyline(points=region.points, closed=True, filled=filled)
            return shape.to_segmentation(frame_size=(width, height), target=255).mask > 0

        mask = raster(True)
        # judged on the raster, not on signed areas (a self-intersecting polygon's cancel): some pixel must be
        # inside the outline, not only on it
        if not (mask & ~raster(False)).any():
            raise LabelError("polyline encloses no area (its points are collinear or repeated, or it is "
                             "smaller than one pixel)")
        return mask
    box = region.bounding_box
    if region.has_mask:
        try:
            return region.to_segmentation(frame_size=(width, height), target=255).mask > 0
        except (OSError, ValueError) as err:
            raise LabelError(f"cannot read the instance mask: {err}") from err
    if box is None or len(box) != 4:
        raise LabelError("label has neither an instance mask nor a bounding box")
    return box_mask(box, width, height)


def derive_segmentation_regions(samples, label_field: str, regions_field: str) -> List[tuple]:
    """Write ``regions_field``: one Detection per class present in each semantic mask of ``label_field``;
    returns the samples that failed as (sample id, reason) - an unreadable mask is reported, the rest runs.

    Samples whose derived field is already set keep it, so the region ids (and anything computed on
    them) are stable across runs. Class names come from the dataset's mask targets when defined; a
    value the targets do not name becomes a region labelled by its value, with a warning naming it.
    """
    dataset = samples._root_dataset
    targets = dataset.mask_targets.get(label_field) or dataset.default_mask_targets or None
    if not dataset.has_sample_field(regions_field):
        dataset.add_sample_field(regions_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    failed = []
    for sample in samples.select_fields([label_field, regions_field]).iter_samples(autosave=True, progress=False):
        if sample[regions_field] is not None or sample[label_field] is None:
            continue
        try:
            detections = sample[label_field].to_detections(mask_targets=_complete_targets(sample, label_field, targets))
        except (OSError, ValueError) as err:
            reason = f"cannot read the segmentation mask of {label_field!r}: {err}"
            logger.warning("sample %s (%s): %s", sample.id, sample.filepath, reason)
            failed.append((sample.id, reason))
            continue
        for det in detections.detections:
            det["source_field"] = label_field
        sample[regions_field] = detections
    return failed


def _complete_targets(sample, label_field: str, targets: Optional[dict]) -> Optional[dict]:
    """The mask targets plus, for values of this sample's mask they do not name, the value as its label."""
    if not targets:
        return None
    mask = sample[label_field].get_mask()
    if mask.ndim != 2:  # RGB masks: targets are hex colours, converted as FiftyOne does
        return targets
    missing = sorted(int(v) for v in np.unique(mask) if v and int(v) not in targets)
    if missing:
        logger.warning("sample %s: values %s of %r are not in the mask targets; their regions are labelled "
                       "by value", sample.id, missing, label_field)
    return {**targets, **{v: str(v) for v in missing}}


def declare_attributes(dataset, path: str, kinds: dict) -> None:
    """Declare label attributes under a list path (``field.detections``) so the App's sidebar filters on
    them; a kind is a field class, or (ListField, element class) for lists."""
    for name, kind in kinds.items():
        full = f"{path}.{name}"
        if not dataset.has_field(full):
            outer, inner = kind if isinstance(kind, tuple) else (kind, None)
            dataset.add_sample_field(full, outer, **({"subfield": inner} if inner else {}))


def geometry_copy(region, **attributes):
    """A new label (new id) with the same geometry as ``region`` and only the given attributes."""
    if isinstance(region, fo.Polyline):
        return fo.Polyline(points=region.points, closed=region.closed, filled=region.filled, **attributes)
    return fo.Detection(bounding_box=region.bounding_box, mask=region.mask, mask_path=region.mask_path, **attributes)


def container_of(regions: list, like):
    """A Detections/Polylines (the type of ``like``) holding ``regions``."""
    return type(like)(**{REGION_TYPES[type(like)]: regions})
