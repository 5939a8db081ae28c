"""Per-region LeGrad heatmaps in a companion dataset the App renders natively.

A ``fo.Heatmap`` must be a sample-level label (nested in a Detection it breaks the App's label
schema), and a sample has one image but many regions. So each embedded region gets one sample in the
companion dataset ``maskinversion-heatmaps-<dataset id>``: the same image, the region itself (under
its field's name), its heatmap (field ``heatmap``), dice/iou, and the source sample and label ids.
Samples are keyed by (region field, embeddings field, label id): each run owns its own heatmaps.

The companion follows its dataset: it is named by the dataset's id (a rename keeps it), a clone gets
the heatmaps of its labels when its runs are adopted (see :mod:`.adoption`), and it lives exactly as
long as its dataset: it is always persistent (so FiftyOne's clean-up of non-persistent datasets never
takes it from a dataset made persistent later) and is deleted with its dataset's last run, or by
:func:`delete_orphaned_heatmaps` (called by every compute) once its dataset is gone. A finished label
whose heatmap is missing is recomputed by the next compute.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Dict, Iterable, List, Optional

import fiftyone as fo
import fiftyone.core.odm as foo
import numpy as np
from fiftyone import ViewField as F
from PIL import Image

from .regions import container_of, geometry_copy, list_path, regions_of

HEATMAP_CELLS_PER_PATCH = 4  # stored map: 4 x 4 pixels per patch; the App stretches it over the image
PREFIX = "maskinversion-heatmaps-"
SELECTION_VIEW = "selection"  # the companion's saved view of the regions last asked for


def heatmaps_dataset_name(dataset: fo.Dataset) -> str:
    return _companion_name(str(dataset._doc.id))


def _companion_name(dataset_id: str) -> str:
    return f"{PREFIX}{dataset_id}"


def heatmaps_dataset(dataset: fo.Dataset, create: bool = False) -> Optional[fo.Dataset]:
    """The companion dataset of ``dataset`` (created, persistent like its parent, if asked), else None."""
    name = heatmaps_dataset_name(dataset)
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    if not create:
        return None
    try:
        companion = fo.Dataset(name)
    except Exception:  # another worker created it meanwhile (FiftyOne or the database says so)
        if not fo.dataset_exists(name):
            raise
        return fo.load_dataset(name)
    companion.media_type = "image"  # set while empty: concurrent workers then agree on it
    companion.persistent = True  # removed with its dataset, never by FiftyOne's clean-up (module docstring)
    companion.app_config.active_fields = fo.ActiveFields(paths=["heatmap"])  # shown without a click
    for name_ in ("source_label_id", "source_field", "embeddings_field"):
        companion.add_sample_field(name_, fo.StringField)
    companion.create_index("source_label_id", unique=False)
    companion.info.update(source_dataset=dataset.name, source_dataset_id=str(dataset._doc.id))
    companion.save()
    return companion


def region_heatmaps_view(dataset: fo.Dataset, label_ids: Iterable[str] = (), sample_ids: Iterable[str] = (),
                         save: bool = False):
    """The companion's samples of the given regions and of every region of the given samples; ``save``
    also stores it as the companion's saved view ``SELECTION_VIEW`` (so the App can open it by URL)."""
    companion = heatmaps_dataset(dataset)
    if companion is None:
        raise ValueError(f"dataset {dataset.name!r} has no MaskInversion heatmaps: compute region embeddings first")
    view = companion.match(F("source_label_id").is_in(list(label_ids)) | F("source_sample_id").is_in(list(sample_ids)))
    if save:
        companion.save_view(SELECTION_VIEW, view, overwrite=True)
    return view


def source_dataset(companion: fo.Dataset) -> Optional[fo.Dataset]:
    """The dataset whose heatmaps ``companion`` holds (found by id, so a renamed dataset is found), else None."""
    if not companion.name.startswith(PREFIX):
        return None
    wanted = companion.name[len(PREFIX):]
    names = [doc["name"] for doc in foo.get_db_conn().datasets.find({}, {"name": 1}) if str(doc["_id"]) == wanted]
    return fo.load_dataset(names[0]) if names else None


def run_folder(base: str, dataset: fo.Dataset, run_uid: str) -> str:
    """The folder of one run's heatmap files: ``<base>/<dataset id>/<run uid>`` (the run owns it whole)."""
    return os.path.join(os.path.abspath(os.path.expanduser(base)), str(dataset._doc.id), run_uid)


def heatmap_label(heatmap: np.ndarray, grid: int, folder: Optional[str] = None) -> fo.Heatmap:
    """An 8-bit fo.Heatmap of a [0,1] map, stored at a few pixels per patch (the map is smooth): in the
    document, or (``folder``) as a PNG file it references by ``map_path``, as FiftyOne does for large maps."""
    size = grid * HEATMAP_CELLS_PER_PATCH
    small = Image.fromarray(np.clip(heatmap * 255.0, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    if folder is None:
        return fo.Heatmap(map=np.asarray(small), range=[0, 255])
    path = os.path.join(folder, f"{uuid.uuid4().hex}.png")  # a new name per write: replacing never removes the new file
    small.save(path)
    return fo.Heatmap(map_path=path, range=[0, 255])


def region_sample(sample, region, container, field_name: str, embeddings_field: str, heatmap: fo.Heatmap,
                  fidelity: dict) -> fo.Sample:
    """The companion sample of one region (``container`` is the source Detections/Polylines)."""
    return fo.Sample(
        filepath=sample.filepath,
        heatmap=heatmap,
        label=region.label,
        source_sample_id=sample.id,
        source_label_id=region.id,
        source_field=field_name,
        embeddings_field=embeddings_field,
        **{field_name: container_of([geometry_copy(region, label=region.label)], container)},
        **fidelity,
    )


def _of_run(companion: fo.Dataset, field_name: str, embeddings_field: str, label_ids: Optional[Iterable[str]] = None):
    if not companion.has_sample_field("source_label_id"):
        companion.reload()  # another process may be creating it right now
        if not companion.has_sample_field("source_label_id"):
            return companion.limit(0)  # created, not set up yet: no heatmap in it
    view = companion.match((F("source_field") == field_name) & (F("embeddings_field") == embeddings_field))
    return view if label_ids is None else view.match(F("source_label_id").is_in(list(label_ids)))


def replace_region_samples(companion: fo.Dataset, field_name: str, embeddings_field: str,
                           new_samples: List[fo.Sample]) -> None:
    """Insert a run's samples, first removing its earlier ones of the same labels (re-runs, resumes)."""
    if not new_samples:
        return
    forget_region_samples(companion, field_name, embeddings_field, [s["source_label_id"] for s in new_samples])
    companion.add_samples(new_samples, progress=False)
    active = companion.app_config.active_fields
    if active is not None and field_name not in active.paths:  # draw the region over its heatmap
        active.paths.append(field_name)
        companion.save()


def forget_region_samples(companion: fo.Dataset, field_name: str, embeddings_field: str,
                          label_ids: Optional[Iterable[str]] = None) -> int:
    """Delete a run's heatmaps of the given labels (or all of them); returns how many."""
    stale = _of_run(companion, field_name, embeddings_field, label_ids)
    count = len(stale)
    if count:
        files = [p for p in stale.values("heatmap.map_path") if p]
        companion.delete_samples(stale)
        for path in files:  # the run's own files (see run_folder)
            if os.path.isfile(path):
                os.remove(path)
    return count


def delete_run_heatmaps(dataset: fo.Dataset, field_name: str, embeddings_field: str) -> int:
    """Delete all of a run's heatmaps, and the companion once it is empty; returns how many."""
    companion = heatmaps_dataset(dataset)
    if companion is None:
        return 0
    count = forget_region_samples(companion, field_name, embeddings_field)
    if not len(companion):
        companion.delete()
    return count


def update_labels(dataset: fo.Dataset, field_name: str, labels: Dict[str, str]) -> None:
    """Keep the companion's copies of relabelled regions (every run's) in step with the dataset."""
    companion = heatmaps_dataset(dataset)
    if companion is None or not labels:
        return
    view = companion.match((F("source_field") == field_name) & F("source_label_id").is_in(list(labels)))
    for sample in view.iter_samples(autosave=True, progress=False):
        new_label = labels[sample.source_label_id]
        sample["label"] = new_label
        for region in regions_of(sample[field_name]):
            region.label = new_label


def copy_for_clone(source_dataset_id: str, dataset: fo.Dataset, field_name: str, embeddings_field: str,
                   folder: Optional[str] = None) -> int:
    """Copy a run's heatmaps from the dataset it was cloned from, for the labels this dataset holds (files
    into ``folder``, the clone's run folder: the clone never shares the source's files)."""
    source_name = _companion_name(source_dataset_id)
    if not fo.dataset_exists(source_name):
        return 0
    label_ids = {i for ids in dataset.values(f"{list_path(dataset, field_name)}.id") for i in (ids or [])}
    source = _of_run(fo.load_dataset(source_name), field_name, embeddings_field, label_ids)
    copies = [fo.Sample.from_dict({k: v for k, v in s.to_dict().items() if k != "_id"})
              for s in source.iter_samples(progress=False)]
    for copy in copies:
        if copy.heatmap is not None and copy.heatmap.map_path:
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, os.path.basename(copy.heatmap.map_path))
            shutil.copyfile(copy.heatmap.map_path, target)
            copy.heatmap.map_path = target
    if copies:
        replace_region_samples(heatmaps_dataset(dataset, create=True), field_name, embeddings_field, copies)
    return len(copies)


def labels_with_heatmaps(dataset: fo.Dataset, field_name: str, embeddings_field: str,
                         label_ids: Optional[Iterable[str]] = None) -> set:
    """The label ids of a run (of ``label_ids``, or all) that have a heatmap in the companion."""
    companion = heatmaps_dataset(dataset)
    return set() if companion is None else set(
        _of_run(companion, field_name, embeddings_field, label_ids).values("source_label_id"))


def delete_orphaned_heatmaps() -> List[str]:
    """Delete companions whose dataset no longer exists (and that no clone still has to copy from);
    parallel callers may race for the same orphan: whoever deletes it first reports it."""
    conn = foo.get_db_conn()
    alive = {str(i) for i in conn.datasets.distinct("_id")}
    pending = {str(doc["config"].get("dataset_id")) for doc in conn.runs.find(
        {"config.method": "maskinversion"}, {"config.dataset_id": 1})}
    deleted = []
    for name in fo.list_datasets(glob_patt=f"{PREFIX}*"):
        owner = name[len(PREFIX):]
        if owner not in alive and owner not in pending:
            try:
                fo.delete_dataset(name)
            except ValueError:  # another process deleted it meanwhile
                continue
            deleted.append(name)
    return deleted
