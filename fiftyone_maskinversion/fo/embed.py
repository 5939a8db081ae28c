"""compute_region_embeddings: MaskInversion embeddings, heatmaps and fidelity for every region of a collection."""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import fiftyone as fo
import numpy as np

from .. import defaults
from ..core.backbone import Backbone, load_backbone
from ..core.inputs import InputError, load_rgb
from ..core.inversion import MaskInverter, check_method
from . import heatmaps as heatmap_store
from . import leases
from .adoption import adopt_region_runs
from .arguments import check_count, check_shard
from .ownership import check_free, check_name, claim, mark_field, release, set_role, still_owned
from .prefetch import prefetched
from .targets import resolve_target
from .regions import (
    LabelError,
    attribute,
    declare_attributes,
    derive_segmentation_regions,
    is_crowd,
    label_type,
    list_path,
    region_mask,
    regions_of,
)
from .runs import (
    EMBEDDING_REVIEW_ATTRIBUTES,
    RegionRun,
    attribute_names,
    attribute_paths,
    find_run,
    is_current,
    make_settings,
    new_run,
    restart_run,
    see_other_processes,
    store_in_tooltip_order,
)

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
INVERSION_ATTRIBUTES = {"embedding": fo.VectorField, "dice": fo.FloatField, "iou": fo.FloatField,
                        "error": fo.StringField, "run": fo.StringField}  # the embedding as a VectorField: brain indexes it


@dataclass
class RegionRunSummary:
    """What a run did and where its results went; each failed region as (sample id, label id, reason)."""

    label_field: str
    regions_field: str
    embeddings_field: str
    heatmaps_dataset: str = ""
    computed: int = 0
    recomputed_stale: int = 0  # of computed: regions that held an embedding of other settings
    recomputed_missing_heatmap: int = 0  # of computed: finished regions whose heatmap had been lost
    skipped_existing: int = 0
    skipped_crowd: int = 0
    skipped_other_worker: int = 0  # regions another process was computing at the same time
    failed: List[tuple] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    outdated_brain_runs: List[str] = field(default_factory=list)  # the run's layout, removed (it cannot be updated)
    index_updated: int = 0  # regions added to (or replaced in) the run's similarity index
    computed_ids: List[tuple] = field(default_factory=list, repr=False)  # (sample id, label id) of each computed
    failed_ids: List[tuple] = field(default_factory=list, repr=False)  # (sample id, label id) now without embedding

    def describe(self) -> str:
        where = f"{self.regions_field}.{self.embeddings_field}"
        lines = [
            f"computed {self.computed} (of which stale, recomputed: {self.recomputed_stale}; heatmap lost, "
            f"recomputed: {self.recomputed_missing_heatmap}), skipped (already "
            f"done) {self.skipped_existing}, skipped (crowd) {self.skipped_crowd}, failed {len(self.failed)} "
            f"in {self.seconds:.1f} s over {self.samples} samples",
            f"embeddings, dice, iou: label attributes {where}, {where}_dice, {where}_iou; "
            f"heatmaps: dataset {self.heatmaps_dataset!r}",
        ]
        if self.skipped_other_worker:
            lines.append(f"skipped {self.skipped_other_worker} regions another process was computing at the same time")
        if self.index_updated:
            lines.append(f"similarity index kept current: {self.index_updated} regions added or replaced")
        if self.outdated_brain_runs:
            lines.append(f"layout {self.outdated_brain_runs} no longer covered every region and was removed: "
                         "rebuild it with visualize_regions")
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
    regions_field: Optional[str] = None,
    heatmaps: str = defaults.HEATMAPS,
    heatmaps_dir: Optional[str] = None,
) -> RegionRunSummary:
    """Compute a localized embedding, heatmap and Dice/IoU for every region label of ``label_field``.

    ``label_field`` is a Detections (instance masks or boxes), Polylines or Segmentation field (whose
    classes become regions in the derived Detections field ``regions_field``, by default
    ``<label_field>_regions``; every later step accepts the Segmentation field's own name). Results go on each region label: ``<embeddings_field>``
    (a declared VectorField), ``_dice`` / ``_iou`` (fidelity of the final map), ``_error`` (why a region
    has none) and ``_run`` (the run's stamp: which run, with which settings); heatmaps go to the companion
    dataset (see ``heatmaps``). Regions holding an embedding of the current settings are skipped unless
    ``overwrite``, so a killed run resumes and recomputes exactly the stale ones (and the finished ones
    whose heatmap was lost). Every name the run writes is claimed by its record first (see
    :mod:`.ownership`): a name holding someone else's data is refused. ``shard=(i, k)``
    processes the i-th of k disjoint slices of the samples. ``heatmaps``: "database" (each map in its
    companion sample's document), "files" (PNG files referenced by ``map_path``, FiftyOne's way for large
    maps, in ``heatmaps_dir`` - by default ``maskinversion-heatmaps`` under FiftyOne's dataset directory -
    in a folder the run owns and deletes with it) or "none"; a run keeps the storage it started with. ``backbone`` replaces
    model_name/pretrained/image_size with an already loaded model. ``precision`` ("fp32", "bf16-mixed",
    "auto") is recorded resolved, so workers on other hardware cannot mix two. Every argument is checked before
    anything is written; the run's settings are recorded only once it starts.
    """
    start = time.perf_counter()
    samples = resolve_target(samples).samples  # a review view (patches, heatmaps) stands for its samples
    dataset = samples._root_dataset
    check_method(iterations, lr, alpha)
    check_count("batch_size", batch_size)
    shard_view = samples if shard is None else _shard(samples, check_shard(shard))
    check_name(embeddings_field, "embeddings_field")
    segmentation = label_type(samples, label_field) is fo.Segmentation
    if regions_field is not None and not segmentation:
        raise ValueError(f"regions_field is for Segmentation fields; {label_field!r} holds its regions itself")
    if regions_field is not None:
        check_name(regions_field, "regions_field")
    if heatmaps not in defaults.HEATMAP_STORAGES:
        raise ValueError(f"heatmaps must be one of {defaults.HEATMAP_STORAGES}, got {heatmaps!r}")
    if heatmaps_dir is not None and heatmaps != "files":
        raise ValueError("heatmaps_dir is where heatmap files go: pass it with heatmaps='files'")
    if backbone is None and not pretrained:
        raise ValueError(
            "random weights (pretrained=None) cannot be used for a dataset run: every process would draw "
            "other weights, so shards, resumes and later steps would mix models. Pass an open_clip tag, "
            "a checkpoint file (save a model with torch.save(model.state_dict(), path)), or backbone="
        )
    see_other_processes(dataset)  # what other processes added (fields, brain runs), before checking names
    adopt_region_runs(dataset)  # an explicit step: a clone's runs become this dataset's before anything else
    run = find_run(dataset, label_field, embeddings_field)
    regions_field = _regions_field(label_field, regions_field, run, segmentation)
    paths = attribute_paths(dataset, regions_field, embeddings_field)
    for name in paths.values():
        check_free(dataset, run, "attribute", name)
    if segmentation:
        check_free(dataset, run, "field", regions_field, label_field=label_field)
    if backbone is None:
        backbone = load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device)
    inverter = MaskInverter(backbone, iterations=iterations, lr=lr, alpha=alpha, blocks=blocks, precision=precision)
    settings = make_settings(backbone, iterations=iterations, lr=float(lr), alpha=float(alpha), blocks=inverter.blocks,
                             precision=inverter.precision)
    if run is not None and run.heatmaps["storage"] != heatmaps:
        raise ValueError(f"{run.describe()} keeps its heatmaps as {run.heatmaps['storage']!r}; pass "
                         f"heatmaps={run.heatmaps['storage']!r}, or delete_region_results first")
    if run is not None and run.settings != settings:
        if not overwrite:
            changed = {k: (run.settings.get(k), v) for k, v in settings.items() if run.settings.get(k) != v}
            raise ValueError(
                f"{run.describe()} of {dataset.name!r} was computed with other settings {changed} (old, new); "
                "pass overwrite=True to recompute every region, or choose another embeddings_field")

    heatmap_store.delete_orphaned_heatmaps()
    if run is None:
        uid, folder = uuid.uuid4().hex[:12], None
        if heatmaps == "files":  # the run's own folder of heatmap files
            folder = heatmap_store.run_folder(heatmaps_dir or os.path.join(fo.config.default_dataset_dir,
                                                                           defaults.HEATMAPS_DIR), dataset, uid)
            check_free(dataset, None, "folder", folder)
        run = new_run(dataset, label_field, regions_field, embeddings_field, settings, run_uid=uid,
                      heatmaps={"storage": heatmaps, "folder": folder})
    elif run.settings != settings:
        run = restart_run(dataset, run, settings)
    summary = RegionRunSummary(label_field, regions_field, embeddings_field)
    if run.derived:
        run = claim(dataset, run, "field", [regions_field], label_field=label_field)
        summary.failed += [(sample_id, None, reason) for sample_id, reason in
                           derive_segmentation_regions(shard_view, label_field, regions_field)]
        mark_field(dataset, run, regions_field)
    names = attribute_names(embeddings_field)
    run = claim(dataset, run, "attribute", [paths[key] for key in INVERSION_ATTRIBUTES])
    declare_attributes(dataset, list_path(dataset, regions_field),
                       {names[key]: kind for key, kind in INVERSION_ATTRIBUTES.items()})
    folder = run.heatmaps["folder"]
    if folder:
        run = claim(dataset, run, "folder", [folder])
        os.makedirs(folder, exist_ok=True)
    companion = heatmap_store.heatmaps_dataset(dataset, create=True) if heatmaps != "none" else None
    summary.heatmaps_dataset = companion.name if companion is not None else ""
    with_heatmaps = heatmap_store.labels_with_heatmaps(dataset, regions_field, embeddings_field) if companion else None

    view = shard_view.select_fields(regions_field)
    total = len(view)
    pending = functools.partial(_pending, run=run, overwrite=overwrite, include_crowd=include_crowd,
                                with_heatmaps=with_heatmaps)
    prepare = functools.partial(_prepare, pending=pending, min_side=backbone.patch_size)
    ahead = prefetched(view.iter_samples(progress=False), prepare)  # a second, read-only pass, same order
    group = []  # one database batch of samples, inverted in one call (several images per chunk where they fit)
    write = functools.partial(_invert_and_write, view=view, run=run, inverter=inverter, companion=companion,
                              summary=summary, progress=progress, total=total)
    try:
        for sample in view.iter_samples(progress=False):
            prepared = next(ahead, None)
            if prepared is None or prepared.sample_id != sample.id:  # the passes disagree: prepare it here
                prepared = prepare(sample)
            if prepared.masks or prepared.image_error:
                if not leases.take(run.doc_id, [sample.id]):
                    summary.skipped_other_worker += len(prepared.masks)  # another process is computing them
                    summary.samples += 1
                    continue
                sample = view[sample.id]  # as stored now: another process may have written it since it was read
                if with_heatmaps is not None:
                    with_heatmaps.update(heatmap_store.labels_with_heatmaps(
                        dataset, regions_field, embeddings_field, [r.id for r in regions_of(sample[regions_field])]))
            group.append(_gather(sample, prepared, run, pending, summary))
            if len(group) == batch_size:
                write(group)
        write(group)
    finally:
        ahead.close()
        leases.give_back(run.doc_id, [work.sample.id for work in group])
    if summary.computed or summary.failed_ids:
        run = find_run(dataset, label_field, embeddings_field)
        summary.index_updated = _update_index(dataset, run, summary)
        summary.outdated_brain_runs = _drop_outdated_layout(dataset, run)
    summary.seconds = time.perf_counter() - start
    return summary


def _regions_field(label_field: str, asked: Optional[str], run: Optional[RegionRun], segmentation: bool) -> str:
    """Where the regions live: the field itself, or a Segmentation's derived field (the run's, else the one
    asked for, else ``<label_field>_regions``)."""
    if not segmentation:
        return label_field
    if run is not None and asked is not None and asked != run.regions_field:
        raise ValueError(f"{run.describe()} keeps its regions in {run.regions_field!r}; pass that regions_field "
                         "(or none), or choose another embeddings_field")
    return run.regions_field if run is not None else asked or f"{label_field}_regions"


@dataclass
class PreparedSample:
    """What the engine needs of one sample, made ahead of time: its image (or why it cannot be read)
    and, per pending region id, its mask (or why it has none)."""

    sample_id: str
    image: object = None
    image_error: Optional[str] = None
    masks: dict = field(default_factory=dict)


def _pending(sample, run: RegionRun, overwrite: bool, include_crowd: bool, with_heatmaps: Optional[set]) -> tuple:
    """(regions to compute, regions holding the current settings' results and their heatmap, crowd regions
    skipped, how many of the regions to compute are finished but lost their heatmap)."""
    pending, done, crowd, lost = [], [], [], 0
    for region in regions_of(sample[run.regions_field]):
        current = is_current(region, run)
        has_map = with_heatmaps is None or region.id in with_heatmaps  # None: the run keeps no heatmaps
        lost += current and not has_map
        if current and not overwrite and has_map:
            done.append(region)
        elif is_crowd(region) and not include_crowd:
            crowd.append(region)
        else:
            pending.append(region)
    return pending, done, crowd, lost


def _prepare(sample, pending: Callable, min_side: int) -> PreparedSample:
    """Decode the image and rasterise the masks of a sample's pending regions (runs in the prefetch thread)."""
    prepared = PreparedSample(sample.id)
    pending = pending(sample)[0]
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


@dataclass
class _Work:
    """One sample's part of a group: its regions to invert with their masks, and those that failed already."""

    sample: object
    image: object = None
    regions: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (region, reason)


def _gather(sample, prepared: PreparedSample, run: RegionRun, pending: Callable, summary) -> _Work:
    """Sort one sample's regions: skipped (done, crowd), failed before inversion (no image, no mask), to invert."""
    names = attribute_names(run.embeddings_field)
    todo, done, crowd, lost = pending(sample)
    summary.skipped_existing += len(done)
    summary.skipped_crowd += len(crowd)
    for region in crowd:
        region[names["error"]] = "crowd region (iscrowd=1) skipped; pass include_crowd=True to embed it"
    summary.recomputed_stale += sum(attribute(r, names["embedding"]) is not None and not is_current(r, run)
                                    for r in todo)
    summary.recomputed_missing_heatmap += lost
    work = _Work(sample, prepared.image)
    for region in todo:
        for key in EMBEDDING_REVIEW_ATTRIBUTES:  # they described the embedding about to be replaced
            if attribute(region, names[key]) is not None:
                region[names[key]] = None
        mask = prepared.image_error or prepared.masks.get(region.id)
        if isinstance(mask, (str, Exception)) or mask is None:
            work.failed.append((region, str(mask) if mask is not None else "the region changed while the run read it"))
        else:
            work.regions.append(region)
            work.masks.append(mask)
    return work


def _invert_and_write(group: List[_Work], view, run: RegionRun, inverter, companion, summary, progress, total) -> None:
    """Invert the regions of a group of samples in one call, store their heatmaps, save the samples in one
    batch, then return their leases."""
    inverted = [work for work in group if work.regions]
    results = inverter.invert_many([(work.image, work.masks) for work in inverted]) if inverted else []
    for work, result in zip(inverted, results):
        _write(work, result, run, inverter.backbone.grid_size, companion, summary)
    with view.save_context(batch_size=max(len(group), 1)) as saver:
        for work in group:
            _record_failures(work, run, companion, summary)
            saver.save(work.sample)
    store_in_tooltip_order(view._root_dataset, run, [work.sample.id for work in group])
    for work in group:
        summary.samples += 1
        if progress:
            progress(summary.samples, total)
    leases.give_back(run.doc_id, [work.sample.id for work in group])
    group.clear()


def _write(work: _Work, result, run: RegionRun, grid: int, companion, summary) -> None:
    """Put one sample's inversion results on its labels; its heatmaps (if the run keeps them) go to the
    companion first."""
    names = attribute_names(run.embeddings_field)
    container = work.sample[run.regions_field]
    new_heatmaps = []
    for k, region in enumerate(work.regions):
        if not result.valid[k]:
            work.failed.append((region, result.errors[k]))
            continue
        fidelity = {"dice": float(result.dice[k]), "iou": float(result.iou[k])}
        region[names["embedding"]] = result.embeddings[k]
        region[names["dice"]], region[names["iou"]] = fidelity["dice"], fidelity["iou"]
        region[names["error"]] = None
        region[names["run"]] = run.stamp
        if companion is not None:
            new_heatmaps.append(heatmap_store.region_sample(
                work.sample, region, container, run.regions_field, run.embeddings_field,
                heatmap_store.heatmap_label(result.heatmaps[k], grid, run.heatmaps["folder"]), fidelity))
        summary.computed += 1
        summary.computed_ids.append((work.sample.id, region.id))
    if companion is not None:
        heatmap_store.replace_region_samples(companion, run.regions_field, run.embeddings_field, new_heatmaps)


def _record_failures(work: _Work, run: RegionRun, companion, summary) -> None:
    """Say on each failed region why it has no embedding, and drop an earlier run's heatmap of it."""
    names = attribute_names(run.embeddings_field)
    sample = work.sample
    for region, reason in work.failed:
        for key in ("embedding", "dice", "iou"):
            region[names[key]] = None
        region[names["error"]], region[names["run"]] = reason, run.stamp
        summary.failed.append((sample.id, region.id, reason))
        summary.failed_ids.append((sample.id, region.id))
        logger.warning("sample %s (%s), label %s: %s", sample.id, sample.filepath, region.id, reason)
    if work.failed and companion is not None:
        heatmap_store.forget_region_samples(companion, run.regions_field, run.embeddings_field,
                                            [region.id for region, _ in work.failed])


def _update_index(dataset, run: RegionRun, summary: RegionRunSummary) -> int:
    """Keep the run's similarity index current (FiftyOne Brain's add_to_index / remove_from_index): the
    regions computed now are added or replaced, those that now have no embedding removed; returns how many
    were added or replaced."""
    key = run.brain_key
    if not key or not still_owned(dataset, run, "brain_key", key):
        return 0
    index = dataset.load_brain_results(key)
    if summary.failed_ids:
        index.remove_from_index(label_ids=[label_id for _, label_id in summary.failed_ids], allow_missing=True)
    if summary.computed_ids:
        label_ids = [label_id for _, label_id in summary.computed_ids]
        path = list_path(dataset, run.regions_field)
        view = dataset.select_labels(ids=label_ids, fields=run.regions_field)
        stored = dict(zip(view.values(f"{path}.id", unwind=True),
                          view.values(f"{path}.{run.embeddings_field}", unwind=True)))
        index.add_to_index(np.stack([stored[i] for i in label_ids]),
                           [sample_id for sample_id, _ in summary.computed_ids], label_ids=label_ids)
    index.save()
    return len(summary.computed_ids)


def _drop_outdated_layout(dataset, run: RegionRun) -> List[str]:
    """Remove the run's 2-D layout (FiftyOne Brain extends a layout with new samples only, never with
    recomputed ones, so it would show outdated points); returns its key."""
    key = run.visualization_key
    if not key:
        return []
    if key in dataset.list_brain_runs():
        dataset.delete_brain_run(key)
    release(dataset, set_role(dataset, run, "visualization_key", None), "brain_key", [key])
    logger.warning("layout %r no longer covers every region of %s and was removed; rebuild it with visualize_regions",
                   key, run.describe())
    return [key]


def _shard(samples, shard: tuple):
    """The i-th of k disjoint, covering slices of the samples (by sorted sample id)."""
    index, count = shard
    ids = sorted(samples.values("id"))
    return samples.select(ids[index::count], ordered=True)
