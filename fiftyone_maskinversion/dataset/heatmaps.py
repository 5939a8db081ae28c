"""Per-instance LeGrad heatmaps as a companion dataset the App renders natively.

A ``fo.Heatmap`` must be a sample-level label (nested in a Detection it breaks the App's label
schema), and a sample has one image but many instances. So each instance gets one sample in the
companion dataset ``<dataset>-maskinversion-heatmaps``: the same image, the instance itself (under
its source field's name), its heatmap (field ``heatmap``), dice/iou, and the source sample and label ids.
"""

from __future__ import annotations

from typing import Iterable, List

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F
from PIL import Image

from .regions import container_of, geometry_copy

HEATMAP_CELLS_PER_PATCH = 4  # stored map: 4 x 4 pixels per patch; the App stretches it over the image


def heatmaps_dataset_name(dataset_name: str) -> str:
    return f"{dataset_name}-maskinversion-heatmaps"


def heatmaps_dataset(dataset: fo.Dataset, create: bool = True):
    """The companion dataset of ``dataset`` (created, persistent like its parent, when missing)."""
    name = heatmaps_dataset_name(dataset.name)
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    if not create:
        return None
    try:
        companion = fo.Dataset(name)
    except ValueError:  # another worker created it meanwhile
        return fo.load_dataset(name)
    companion.media_type = "image"  # set while empty: concurrent workers then agree on it
    companion.persistent = dataset.persistent
    companion.app_config.active_fields = fo.ActiveFields(paths=["heatmap"])  # shown without a click
    companion.add_sample_field("source_label_id", fo.StringField)
    companion.create_index("source_label_id", unique=False)
    companion.info["source_dataset"] = dataset.name
    companion.save()
    return companion


def heatmap_label(heatmap: np.ndarray, grid: int) -> fo.Heatmap:
    """An 8-bit fo.Heatmap of a [0,1] map, stored at a few pixels per patch (the map is smooth)."""
    size = grid * HEATMAP_CELLS_PER_PATCH
    small = Image.fromarray(np.clip(heatmap * 255.0, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return fo.Heatmap(map=np.asarray(small), range=[0, 255])


def region_sample(sample, region, container, field_name: str, heatmap: fo.Heatmap, fidelity: dict) -> fo.Sample:
    """The companion sample of one instance (``container`` is the source Detections/Polylines)."""
    return fo.Sample(
        filepath=sample.filepath,
        heatmap=heatmap,
        label=region.label,
        source_sample_id=sample.id,
        source_label_id=region.id,
        source_field=field_name,
        **{field_name: container_of([geometry_copy(region, label=region.label)], container)},
        **fidelity,
    )


def replace_region_samples(companion: fo.Dataset, new_samples: List[fo.Sample]) -> None:
    """Insert the samples, first removing any earlier ones of the same labels (re-runs, resumed runs)."""
    if not new_samples:
        return
    delete_region_samples(companion, [s["source_label_id"] for s in new_samples])
    companion.add_samples(new_samples, progress=False)
    _show_in_app(companion, new_samples[0]["source_field"])


def _show_in_app(companion: fo.Dataset, field_name: str) -> None:
    """Make the App draw the instance (its source field) over the heatmap by default."""
    active = companion.app_config.active_fields
    if active is not None and field_name not in active.paths:
        active.paths.append(field_name)
        companion.save()


def delete_region_samples(companion: fo.Dataset, label_ids: Iterable[str]) -> None:
    stale = companion.match(F("source_label_id").is_in(list(label_ids)))
    if len(stale):
        companion.delete_samples(stale)
