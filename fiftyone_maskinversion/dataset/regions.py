"""Turning FiftyOne region labels into binary masks at image resolution.

Supported fields: ``Detections`` (instance masks, cropped to the box as FiftyOne stores them, or
boxes only, in which case the box itself is the mask), ``Polylines`` (every polyline is rendered as
a filled polygon, closed or not), and ``Segmentation`` (converted once into a derived ``Detections``
field with one region per class present, see :func:`derive_segmentation_regions`).
COCO crowd regions (``iscrowd`` = 1) cover several objects at once; they are skipped unless asked for.
"""

from __future__ import annotations

from typing import Optional

import fiftyone as fo
import numpy as np

REGION_TYPES = {fo.Detections: "detections", fo.Polylines: "polylines"}
SUPPORTED_TYPES = (fo.Detections, fo.Polylines, fo.Segmentation)


class LabelError(ValueError):
    """A label that cannot be turned into a region mask."""


def label_type(samples, label_field: str):
    """The label class of a field; raises ValueError naming the field if it is not supported."""
    field = samples.get_field(label_field)
    doc_type = getattr(field, "document_type", None)
    if doc_type not in SUPPORTED_TYPES:
        found = doc_type.__name__ if doc_type else type(field).__name__ if field else "no such field"
        raise ValueError(
            f"field {label_field!r} of {samples._dataset.name!r} holds {found}; "
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
        filled = fo.Polyline(points=region.points, closed=True, filled=True)
        return filled.to_segmentation(frame_size=(width, height), target=255).mask > 0
    box = region.bounding_box
    if region.has_mask:
        try:
            return region.to_segmentation(frame_size=(width, height), target=255).mask > 0
        except (OSError, ValueError) as err:
            raise LabelError(f"cannot read the instance mask: {err}") from err
    if box is None or len(box) != 4:
        raise LabelError("label has neither an instance mask nor a bounding box")
    x, y, w, h = box
    left, top = int(round(x * width)), int(round(y * height))
    right, bottom = int(round((x + w) * width)), int(round((y + h) * height))
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
    return mask


def derive_segmentation_regions(samples, label_field: str, regions_field: Optional[str] = None) -> str:
    """Write a Detections field with one region per class present in each semantic mask; returns its name.

    Samples whose derived field is already set keep it, so the region ids (and anything computed on
    them) are stable across runs. Class names come from the dataset's mask targets when defined.
    """
    regions_field = regions_field or f"{label_field}_regions"
    dataset = samples._dataset
    targets = dataset.mask_targets.get(label_field) or dataset.default_mask_targets or None
    if not dataset.has_sample_field(regions_field):
        dataset.add_sample_field(regions_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    for sample in samples.select_fields([label_field, regions_field]).iter_samples(autosave=True):
        if sample[regions_field] is not None or sample[label_field] is None:
            continue
        detections = sample[label_field].to_detections(mask_targets=targets)
        for det in detections.detections:
            det["source_field"] = label_field
        sample[regions_field] = detections
    return regions_field


def geometry_copy(region, **attributes):
    """A new label (new id) with the same geometry as ``region`` and only the given attributes."""
    if isinstance(region, fo.Polyline):
        return fo.Polyline(points=region.points, closed=region.closed, filled=region.filled, **attributes)
    return fo.Detection(bounding_box=region.bounding_box, mask=region.mask, mask_path=region.mask_path, **attributes)


def container_of(regions: list, like):
    """A Detections/Polylines (the type of ``like``) holding ``regions``."""
    return type(like)(**{REGION_TYPES[type(like)]: regions})
