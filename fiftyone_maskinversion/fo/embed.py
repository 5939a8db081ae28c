"""compute_region_embeddings: MaskInversion embeddings, heatmaps and fidelity for every region of a collection."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import fiftyone as fo

from .. import defaults
from ..core.backbone import Backbone, load_backbone
from ..core.inputs import InputError, load_rgb
from ..core.inversion import MaskInverter, check_method
from . import heatmaps as heatmap_store
from .prefetch import prefetched
from .regions import (
    LabelError,
    attribute,
    declare_attributes,
    derive_segmentation_regions,
    is_crowd,
    list_path,
    region_mask,
    regions_field_for,
    regions_of,
)
from .runs import (
    BRAIN_RUN_ATTRIBUTES,
    REVIEW_ATTRIBUTES,
    RegionRun,
    attribute_names,
    find_run,
    is_current,
    list_region_runs,
    make_settings,
    save_run,
    start_run,
)

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]

# Names a region label uses for its own data (FiftyOne's label fields, COCO's, and this package's).
RESERVED_NAMES = (
    set(fo.Detection._fields_ordered) | set(fo.Polyline._fields_ordered)
    | {"id", "_id", "_cls", "iscrowd", "area", "source_field", "mi_original_label"}
)


@dataclass
class RegionRunSummary:
    """What a run did and where its results went; each failed region as (sample id, label id, reason)."""

    label_field: str
    regions_field: str
    embeddings_field: str
    heatmaps_dataset: str = ""
    computed: int = 0
    recomputed_stale: int = 0  # of computed: regions that held an embedding of other settings
    skipped_existing: int = 0
    skipped_crowd: int = 0
    failed: List[tuple] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    outdated_brain_runs: List[str] = field(default_factory=list)  # the run's index / layout, removed

    def describe(self) -> str:
        where = f"{self.regions_field}.{self.embeddings_field}"
        lines = [
            f"computed {self.computed} (of which stale, recomputed: {self.recomputed_stale}), skipped (already "
            f"done) {self.skipped_existing}, skipped (crowd) {self.skipped_crowd}, failed {len(self.failed)} "
            f"in {self.seconds:.1f} s over {self.samples} samples",
            f"embeddings, dice, iou: label attributes {where}, {where}_dice, {where}_iou; "
            f"heatmaps: dataset {self.heatmaps_dataset!r}",
        ]
        if self.outdated_brain_runs:
            lines.append(f"brain runs {self.outdated_brain_runs} no longer covered every region and were removed: "
                         "rebuild them with build_region_index / visualize_regions")
        return "\n".join(lines)


def compute_region_embeddings(
    samples,
    label_field: str,
    model_name: str = defaults.MODEL_NAME,
    pretrained: Optional[str] = defaults.PRETRAINED,
    image_size: int = defaults.IMAGE_SIZE,
    iterations: int = defaults.ITERATIONS,
    lr: float = defaults.LR,
    alpha: float = defaults.ALPHA,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    overwrite: bool = False,
    include_crowd: bool = False,
    blocks: Optional[Sequence[int]] = defaults.BLOCKS,
    precision: str = defaults.PRECISION,
    batch_size: int = defaults.BATCH_SIZE,
    device: Optional[str] = None,
    backbone: Optional[Backbone] = None,
    shard: Optional[tuple] = None,
    progress: Optional[Progress] = None,
) -> RegionRunSummary:
    """Compute a localized embedding, heatmap and Dice/IoU for every region label of ``label_field``.

    ``label_field`` is a Detections (instance masks or boxes), Polylines or Segmentation field (whose
    classes become regions in the derived Detections field ``<label_field>_regions``; every later step
    accepts the Segmentation field's own name). Results go on each region label: ``<embeddings_field>``
    (a declared VectorField), ``_dice`` / ``_iou`` (fidelity of the final map), ``_error`` (why a region
    has none) and ``_run`` (the digest of the settings that made it); heatmaps go to the companion
    dataset (see ``heatmaps``). Regions holding an embedding of the current settings are skipped unless
    ``overwrite``, so a killed run resumes and recomputes exactly the stale ones. ``shard=(i, k)``
    processes the i-th of k disjoint slices of the samples. ``backbone`` replaces
    model_name/pretrained/image_size with an already loaded model. ``precision`` ("fp32", "bf16-mixed",
    "auto") is recorded resolved, so workers on other hardware cannot mix two. Every argument is checked before
    anything is written; the run's settings are recorded only once it starts.
    """
    start = time.perf_counter()
    dataset = samples._dataset
    regions_field = regions_field_for(samples, label_field)
    check_method(iterations, lr, alpha)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    shard_view = _shard(samples, shard)
    _check_embeddings_field(samples, regions_field, embeddings_field, find_run(samples, label_field, embeddings_field))
    if backbone is None:
        if not pretrained:
            raise ValueError(
                "random weights (pretrained=None) cannot be used for a dataset run: every process would draw "
                "other weights, so shards, resumes and later steps would mix models. Pass an open_clip tag, "
                "a checkpoint file (save a model with torch.save(model.state_dict(), path)), or backbone="
            )
        backbone = load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device)
    inverter = MaskInverter(backbone, iterations=iterations, lr=lr, alpha=alpha, blocks=blocks, precision=precision)

    heatmap_store.delete_orphaned_heatmaps()
    settings = make_settings(backbone, iterations=iterations, lr=float(lr), alpha=float(alpha), blocks=inverter.blocks,
                             precision=inverter.precision)
    run = start_run(samples, label_field, regions_field, embeddings_field, settings, overwrite)
    if run.derived:
        derive_segmentation_regions(shard_view, label_field)  # each worker derives its own shard
    names = attribute_names(embeddings_field)
    declare_attributes(dataset, list_path(samples, regions_field), {
        names["embedding"]: fo.VectorField, names["dice"]: fo.FloatField, names["iou"]: fo.FloatField,
        names["error"]: fo.StringField, names["run"]: fo.StringField})  # the embedding as a VectorField: brain indexes it
    companion = heatmap_store.heatmaps_dataset(dataset, create=True)

    view = shard_view.select_fields(regions_field)
    summary = RegionRunSummary(label_field, regions_field, embeddings_field, heatmaps_dataset=companion.name)
    total = len(view)
    prepare = functools.partial(_prepare, run=run, overwrite=overwrite, include_crowd=include_crowd,
                                min_side=backbone.patch_size)
    ahead = prefetched(view.iter_samples(progress=False), prepare)  # a second, read-only pass, same order
    try:
        for index, sample in enumerate(view.iter_samples(autosave=True, batch_size=batch_size, progress=False)):
            prepared = next(ahead, None)
            if prepared is None or prepared.sample_id != sample.id:  # the passes disagree: prepare it here
                prepared = prepare(sample)
            _process_sample(sample, prepared, run, inverter, companion, overwrite, include_crowd, summary)
            summary.samples += 1
            if progress:
                progress(index + 1, total)
    finally:
        ahead.close()
    if summary.computed:
        summary.outdated_brain_runs = _drop_outdated_brain_runs(dataset, run)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_embeddings_field(samples, regions_field: str, embeddings_field: str, run: Optional[RegionRun]) -> None:
    """Refuse a name that would write over data a label already holds (its own fields, another run's
    attributes, any attribute this run did not write)."""
    if not isinstance(embeddings_field, str) or not embeddings_field.isidentifier() or embeddings_field.startswith("_"):
        raise ValueError(f"embeddings_field {embeddings_field!r} must be a plain attribute name (letters, digits, "
                         "underscores; no dots; not starting with '_')")
    names = set(attribute_names(embeddings_field).values())
    clash = sorted(names & RESERVED_NAMES)
    if clash:
        raise ValueError(f"embeddings_field {embeddings_field!r} would write the label's own field(s) {clash}")
    for other in list_region_runs(samples):
        if other.regions_field != regions_field or (run is not None and other.key == run.key):
            continue
        clash = sorted(names & set(attribute_names(other.embeddings_field).values()))
        if clash:
            raise ValueError(f"embeddings_field {embeddings_field!r} would overwrite {clash}, written by the run "
                             f"of {other.embeddings_field!r} on {regions_field!r}")
    if run is not None or not samples._dataset.has_sample_field(regions_field):
        return
    from fiftyone import ViewField as F

    path = list_path(samples, regions_field)
    for name in sorted(names):
        if samples._dataset.has_field(f"{path}.{name}") or len(
                samples.filter_labels(regions_field, F(name).exists(), only_matches=True).limit(1)):
            raise ValueError(f"labels of {regions_field!r} already hold an attribute {name!r} that no "
                             f"MaskInversion run wrote; choose another embeddings_field")


@dataclass
class PreparedSample:
    """What the engine needs of one sample, made ahead of time: its image (or why it cannot be read)
    and, per pending region id, its mask (or why it has none)."""

    sample_id: str
    image: object = None
    image_error: Optional[str] = None
    masks: dict = field(default_factory=dict)


def _pending(sample, run: RegionRun, overwrite: bool, include_crowd: bool) -> tuple:
    """(regions to compute, regions holding the current settings' results, crowd regions skipped)."""
    pending, done, crowd = [], [], []
    for region in regions_of(sample[run.regions_field]):
        if is_current(region, run) and not overwrite:
            done.append(region)
        elif is_crowd(region) and not include_crowd:
            crowd.append(region)
        else:
            pending.append(region)
    return pending, done, crowd


def _prepare(sample, run: RegionRun, overwrite: bool, include_crowd: bool, min_side: int) -> PreparedSample:
    """Decode the image and rasterise the masks of a sample's pending regions (runs in the prefetch thread)."""
    prepared = PreparedSample(sample.id)
    pending, _, _ = _pending(sample, run, overwrite, include_crowd)
    if not pending:
        return prepared
    try:
        prepared.image = load_rgb(sample.filepath, min_side=min_side)
    except InputError as err:
        prepared.image_error = str(err)
        return prepared
    for region in pending:
        try:
            prepared.masks[region.id] = region_mask(region, prepared.image.width, prepared.image.height)
        except LabelError as err:
            prepared.masks[region.id] = err
    return prepared


def _process_sample(sample, prepared: PreparedSample, run: RegionRun, inverter, companion, overwrite,
                    include_crowd, summary) -> None:
    """Invert every pending region of one sample; heatmaps are stored before the labels are saved."""
    names = attribute_names(run.embeddings_field)
    container = sample[run.regions_field]
    pending, done, crowd = _pending(sample, run, overwrite, include_crowd)
    summary.skipped_existing += len(done)
    summary.skipped_crowd += len(crowd)
    for region in crowd:
        region[names["error"]] = "crowd region (iscrowd=1) skipped; pass include_crowd=True to embed it"
    summary.recomputed_stale += sum(attribute(r, names["embedding"]) is not None for r in pending)
    if not pending:
        return
    failed, regions, masks = [], [], []
    for region in pending:
        for key in REVIEW_ATTRIBUTES:  # they described the embedding about to be replaced
            if attribute(region, names[key]) is not None:
                region[names[key]] = None
        mask = prepared.image_error or prepared.masks.get(region.id)
        if isinstance(mask, (str, Exception)) or mask is None:
            failed.append((region, str(mask) if mask is not None else "the region changed while the run read it"))
        else:
            regions.append(region)
            masks.append(mask)
    new_heatmaps = []
    if regions:
        result = inverter.invert(prepared.image, masks)
        for k, region in enumerate(regions):
            if not result.valid[k]:
                failed.append((region, result.errors[k]))
                continue
            fidelity = {"dice": float(result.dice[k]), "iou": float(result.iou[k])}
            region[names["embedding"]] = result.embeddings[k]
            region[names["dice"]], region[names["iou"]] = fidelity["dice"], fidelity["iou"]
            region[names["error"]] = None
            region[names["run"]] = run.settings_id
            heatmap = heatmap_store.heatmap_label(result.heatmaps[k], inverter.backbone.grid_size)
            new_heatmaps.append(heatmap_store.region_sample(
                sample, region, container, run.regions_field, run.embeddings_field, heatmap, fidelity))
            summary.computed += 1
    heatmap_store.replace_region_samples(companion, run.regions_field, run.embeddings_field, new_heatmaps)
    for region, reason in failed:
        for key in ("embedding", "dice", "iou"):
            region[names[key]] = None
        region[names["error"]], region[names["run"]] = reason, run.settings_id
        summary.failed.append((sample.id, region.id, reason))
        logger.warning("sample %s (%s), label %s: %s", sample.id, sample.filepath, region.id, reason)
    if failed:  # an earlier run's heatmap of a region that now has no embedding must not stay
        heatmap_store.forget_region_samples(companion, run.regions_field, run.embeddings_field,
                                            [region.id for region, _ in failed])


def _drop_outdated_brain_runs(dataset, run: RegionRun) -> List[str]:
    """Remove the run's similarity index and layout (they lack the new embeddings); returns their keys."""
    dropped = []
    for attr in BRAIN_RUN_ATTRIBUTES:
        key = getattr(run, attr)
        if key:
            if key in dataset.list_brain_runs():
                dataset.delete_brain_run(key)
            setattr(run, attr, None)
            dropped.append(key)
    if dropped:
        save_run(dataset, run)
        logger.warning("brain runs %s no longer cover every region of %s and were removed; rebuild them with "
                       "build_region_index / visualize_regions", dropped, run.describe())
    return dropped


def _shard(samples, shard: Optional[tuple]):
    """The i-th of k disjoint, covering slices of the samples (by sorted sample id)."""
    if shard is None:
        return samples
    try:
        index, count = (int(part) for part in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (i, k) of integers, got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard ({index}, {count}): need k >= 1 and 0 <= i < k")
    ids = sorted(samples.values("id"))
    return samples.select(ids[index::count], ordered=True)
