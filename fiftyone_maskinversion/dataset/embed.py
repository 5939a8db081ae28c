"""compute_region_embeddings: MaskInversion embeddings, heatmaps and fidelity for every region of a collection."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import fiftyone as fo

from ..backbone import Backbone, load_backbone
from ..images import InputError, load_rgb
from ..inversion import MaskInverter
from . import heatmaps as heatmap_store
from .regions import (
    LabelError,
    attribute,
    derive_segmentation_regions,
    is_crowd,
    label_type,
    list_path,
    region_mask,
    regions_of,
)
from .settings import make_settings, record_settings

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass
class RegionRunSummary:
    """What a run did: counts per outcome and, for each failed region, (sample id, label id, reason)."""

    label_field: str
    embeddings_field: str
    computed: int = 0
    skipped_existing: int = 0
    skipped_crowd: int = 0
    failed: List[tuple] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0


def attribute_names(embeddings_field: str) -> dict:
    """The label attributes one run writes, all prefixed by the embeddings field name."""
    return {
        "embedding": embeddings_field,
        "dice": f"{embeddings_field}_dice",
        "iou": f"{embeddings_field}_iou",
        "error": f"{embeddings_field}_error",
    }


def compute_region_embeddings(
    samples,
    label_field: str,
    model_name: str = "ViT-B-16",
    pretrained: Optional[str] = "openai",
    image_size: int = 448,
    iterations: int = 10,
    lr: float = 0.5,
    alpha: float = 0.0,
    embeddings_field: str = "mi_embedding",
    overwrite: bool = False,
    include_crowd: bool = False,
    blocks: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    device: Optional[str] = None,
    backbone: Optional[Backbone] = None,
    shard: Optional[tuple] = None,
    progress: Optional[Progress] = None,
) -> RegionRunSummary:
    """Compute a localized embedding, heatmap and Dice/IoU for every region label of ``label_field``.

    Results are written on each label: ``<embeddings_field>`` (a declared VectorField),
    ``<embeddings_field>_dice`` / ``_iou`` (fidelity of the final map) and ``<embeddings_field>_error``
    (why a region has no embedding). Heatmaps go to the companion dataset (see ``heatmaps``).
    Regions that already have an embedding are skipped unless ``overwrite``; so a killed run resumes.
    ``shard=(i, k)`` processes the i-th of k disjoint slices of the samples (for parallel workers).
    ``backbone`` replaces model_name/pretrained/image_size with an already loaded model.
    """
    start = time.perf_counter()
    shard_view = _shard(samples, shard)
    if label_type(samples, label_field) is fo.Segmentation:
        label_field = derive_segmentation_regions(shard_view, label_field)  # each worker derives its own shard
    backbone = backbone or load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device)
    inverter = MaskInverter(backbone, iterations=iterations, lr=lr, alpha=alpha, blocks=blocks)
    settings = make_settings(
        backbone, label_field, embeddings_field, iterations=iterations, lr=lr, alpha=alpha, blocks=inverter.blocks
    )
    record_settings(samples, settings, overwrite)
    names = attribute_names(embeddings_field)
    _declare_fields(samples, list_path(samples, label_field), names)
    companion = heatmap_store.heatmaps_dataset(samples._dataset)

    view = shard_view.select_fields(label_field)
    summary = RegionRunSummary(label_field=label_field, embeddings_field=embeddings_field)
    total = len(view)
    for index, sample in enumerate(view.iter_samples(autosave=True, batch_size=batch_size, progress=False)):
        _process_sample(sample, label_field, inverter, companion, names, overwrite, include_crowd, summary)
        summary.samples += 1
        if progress:
            progress(index + 1, total)
    summary.seconds = time.perf_counter() - start
    return summary


def _process_sample(sample, label_field, inverter, companion, names, overwrite, include_crowd, summary) -> None:
    """Invert every pending region of one sample; heatmaps are stored before the labels are saved."""
    container = sample[label_field]
    pending = []
    for region in regions_of(container):
        if attribute(region, names["embedding"]) is not None and not overwrite:
            summary.skipped_existing += 1
        elif is_crowd(region) and not include_crowd:
            summary.skipped_crowd += 1
            region[names["error"]] = "crowd region (iscrowd=1) skipped; pass include_crowd=True to embed it"
        else:
            pending.append(region)
    if not pending:
        return
    try:
        image = load_rgb(sample.filepath, min_side=inverter.backbone.patch_size)
    except InputError as err:
        _fail(summary, sample, pending, names, str(err))
        return
    masks, regions = [], []
    for region in pending:
        try:
            masks.append(region_mask(region, image.width, image.height))
            regions.append(region)
        except LabelError as err:
            _fail(summary, sample, [region], names, str(err))
    if not regions:
        return
    result = inverter.invert(image, masks)
    new_heatmaps = []
    for k, region in enumerate(regions):
        if not result.valid[k]:
            _fail(summary, sample, [region], names, result.errors[k])
            continue
        region[names["embedding"]] = result.embeddings[k]
        region[names["dice"]] = float(result.dice[k])
        region[names["iou"]] = float(result.iou[k])
        region[names["error"]] = None
        heatmap = heatmap_store.heatmap_label(result.heatmaps[k], inverter.backbone.grid_size)
        fidelity = {"dice": float(result.dice[k]), "iou": float(result.iou[k])}
        new_heatmaps.append(heatmap_store.region_sample(sample, region, container, label_field, heatmap, fidelity))
        summary.computed += 1
    heatmap_store.replace_region_samples(companion, new_heatmaps)


def _fail(summary, sample, regions, names, reason: str) -> None:
    for region in regions:
        region[names["embedding"]] = None
        region[names["error"]] = reason
        summary.failed.append((sample.id, region.id, reason))
        logger.warning("sample %s (%s), label %s: %s", sample.id, sample.filepath, region.id, reason)


def _declare_fields(samples, path: str, names: dict) -> None:
    """Declare the label attributes (the embedding as a VectorField, so brain can index it)."""
    dataset = samples._dataset
    kinds = {"embedding": fo.VectorField, "dice": fo.FloatField, "iou": fo.FloatField, "error": fo.StringField}
    for key, kind in kinds.items():
        full = f"{path}.{names[key]}"
        if not dataset.has_field(full):
            dataset.add_sample_field(full, kind)


def _shard(samples, shard: Optional[tuple]):
    """The i-th of k disjoint, covering slices of the samples (by sorted sample id)."""
    if shard is None:
        return samples
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    ids = sorted(samples.values("id"))
    return samples.select(ids[index::count], ordered=True)
