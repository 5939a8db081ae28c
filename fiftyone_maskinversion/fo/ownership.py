"""The one owner store: which run owns each name the package writes, and the only way to take one.

A run owns sample fields (the derived regions field of a Segmentation, prediction and suggestion
fields), label attributes (full paths such as ``ground_truth.detections.mi_embedding``), brain keys
and the folder of its heatmap files.
Before anything is written under a name, the run claims it with one atomic update of its record. A
name that exists and no run owns is the user's: it is refused, with a message saying so and what to
pass instead; a name another run owns is refused naming that run. The one shared name is a derived
regions field, which the runs of the same Segmentation field share. Deleting a run frees exactly what
it owns (see :mod:`.cleanup`). Every check reads the whole dataset, never a view of it.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import fiftyone as fo
import fiftyone.core.odm as foo
from fiftyone import ViewField as F
from pymongo.errors import DuplicateKeyError

from .region_index import is_region_index
from .runs import RegionRun, list_region_runs, update_run

# names a region label uses for its own data (FiftyOne's label fields, COCO's): never a run's attribute
LABEL_OWN_NAMES = set(fo.Detection._fields_ordered) | set(fo.Polyline._fields_ordered) | {"id", "_id", "iscrowd", "area", "source_field"}
ARGUMENT = {"field": "pred_field / missing_field / regions_field", "attribute": "embeddings_field",
            "brain_key": "brain_key", "folder": "heatmaps_dir"}  # the argument that names each kind


def check_name(name: str, what: str) -> None:
    """Raise ValueError unless ``name`` is a plain identifier (no dots, not private)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"{what} {name!r} must be a plain name (letters, digits, underscores; no dots; not "
                         "starting with '_')")


def owners(samples, kind: str, name: str, runs: Optional[list] = None) -> list:
    """The runs of the dataset that own ``name`` (read-only)."""
    runs = list_region_runs(samples) if runs is None else runs
    return [r for r in runs if r.owns(kind, name)]


def exists(samples, kind: str, name: str) -> bool:
    """Whether ``name`` holds data in the whole dataset: a declared field or attribute, an undeclared
    attribute some label holds, or a brain run."""
    dataset = samples._root_dataset
    if kind == "brain_key":
        return name in dataset.list_brain_runs()
    if kind == "field":
        return dataset.has_sample_field(name)
    if kind == "folder":
        return os.path.exists(name)
    if dataset.has_field(name):
        return True
    field, _, attribute = name.rpartition(".")
    label_field = field.split(".")[0]
    if not dataset.has_sample_field(label_field):
        return False
    return bool(len(dataset.filter_labels(label_field, F(attribute).exists(), only_matches=True).limit(1)))


MARK = "maskinversion_run"  # in a field's info: the run uid that made the field


def mark_field(samples, run: RegionRun, name: str) -> None:
    """Write the run's uid into the info of a field it created (a clone copies it; a field the user makes
    later under the same name lacks it, so it is never taken for the run's)."""
    field = samples._root_dataset.get_field(name)
    if (field.info or {}).get(MARK) != run.run_uid:
        field.info = {**(field.info or {}), MARK: run.run_uid}
        field.save()


def still_owned(samples, run: RegionRun, kind: str, name: str) -> bool:
    """Whether data under an owned name is still the run's: a field carries the run's mark, a brain run is
    the region index or the run's layout; attributes and folders are the run's while owned."""
    dataset = samples._root_dataset
    if kind == "field":
        field = dataset.get_field(name) if dataset.has_sample_field(name) else None
        return field is not None and (field.info or {}).get(MARK) == run.run_uid
    if kind == "brain_key":
        if name not in dataset.list_brain_runs():
            return False
        config = dataset.get_brain_info(name).config
        return is_region_index(config) or getattr(config, "patches_field", None) == run.regions_field
    return True


def check_free(samples, run: Optional[RegionRun], kind: str, name: str, label_field: Optional[str] = None,
               runs: Optional[list] = None) -> None:
    """Raise ValueError unless ``run`` (None: a run not started yet) may write ``name``: it owns it, or
    the name holds no data and no other run owns it (a derived regions field may be shared by the runs
    of its Segmentation field ``label_field``). Writes nothing."""
    if run is not None and run.owns(kind, name) and (not exists(samples, kind, name)
                                                     or still_owned(samples, run, kind, name)):
        return
    if kind == "attribute" and name.rpartition(".")[2] in LABEL_OWN_NAMES:
        raise ValueError(f"{name!r} is a label's own field; pass another {ARGUMENT[kind]}")
    others = [r for r in owners(samples, kind, name, runs) if (run is None or r.key != run.key)
              and (not exists(samples, kind, name) or still_owned(samples, r, kind, name))]
    if kind == "field" and label_field and others and all(r.regions_field == name and r.label_field == label_field
                                                          for r in others):
        return
    if others:
        raise ValueError(f"{kind} {name!r} of {samples._root_dataset.name!r} belongs to the MaskInversion run of "
                         f"{others[0].describe()}; pass another {ARGUMENT[kind]}")
    if exists(samples, kind, name):
        raise ValueError(f"{kind} {name!r} of {samples._root_dataset.name!r} holds data that no MaskInversion run "
                         f"wrote (yours, or another tool's): it is never written or deleted by this package; "
                         f"pass another {ARGUMENT[kind]}")


def claim(samples, run: RegionRun, kind: str, names: Iterable[str], label_field: Optional[str] = None) -> RegionRun:
    """Check and record ``names`` as the run's, in one atomic update, before anything is written under
    them; returns the record after it."""
    names = [n for n in dict.fromkeys(names) if not run.owns(kind, n)]
    if not names:
        return run
    runs = list_region_runs(samples)
    for name in names:
        check_free(samples, run, kind, name, label_field, runs)
    for name in names:
        _lock(samples, run, kind, name, label_field)
    run = update_run(samples, run, add={f"owned.{kind}": {"$each": names}})
    return run


def release(samples, run: RegionRun, kind: str, names: Iterable[str]) -> RegionRun:
    """Record that the run no longer owns ``names`` (after their data was deleted)."""
    names = list(names)
    for name in names:
        _locks().update_one({"_id": _lock_id(samples, kind, name)}, {"$pull": {"runs": run.doc_id}})
    return update_run(samples, run, pull={f"owned.{kind}": {"$in": names}})


LOCKS = "maskinversion_name_locks"


def _locks():
    return foo.get_db_conn()[LOCKS]


def _lock_id(samples, kind: str, name: str) -> str:
    return f"{samples._root_dataset._doc.id}|{kind}|{name}"


def _lock(samples, run: RegionRun, kind: str, name: str, label_field: Optional[str]) -> None:
    """Make the claim of one name atomic across runs and processes: one lock document per (dataset, kind,
    name), taken by inserting it (the runs of one Segmentation field share a derived field's lock). A lock
    whose runs were all deleted is stale and taken over."""
    key = _lock_id(samples, kind, name)
    try:
        _locks().insert_one({"_id": key, "runs": [run.doc_id], "label_field": label_field})
        return
    except DuplicateKeyError:
        pass
    lock = _locks().find_one({"_id": key}) or {"runs": []}
    if run.doc_id in lock["runs"]:
        return
    holders = [r for r in list_region_runs(samples) if r.doc_id in lock["runs"]]  # records that still exist
    if kind == "field" and label_field and holders and all(r.label_field == label_field for r in holders):
        _locks().update_one({"_id": key}, {"$addToSet": {"runs": run.doc_id}})
        return
    if not holders and _locks().find_one_and_update({"_id": key, "runs": lock["runs"]},
                                                    {"$set": {"runs": [run.doc_id], "label_field": label_field}}):
        return
    rival = holders[0].describe() if holders else "another run"
    raise ValueError(f"{kind} {name!r} was claimed at the same time by the MaskInversion run of {rival}; "
                     f"pass another {ARGUMENT[kind]}")


def check_output_field(run: RegionRun, name: str, role: str) -> None:
    """A field plays one role for a run: its label and regions fields are never outputs, and predictions
    and missing-region suggestions never share a field (``role``: "predictions" or "missing")."""
    other = run.roles.get("missing_field") if role == "predictions" else None
    taken = {run.label_field: "its label field", run.regions_field: "its regions field"}
    if role == "missing":
        taken.update({f: "its predictions" for f in run.pred_fields if f != run.roles.get("missing_field")})
    elif other:
        taken[other] = "its missing-region suggestions"
    if name in taken:
        raise ValueError(f"field {name!r} holds {taken[name]} of {run.describe()}; pass another "
                         f"{'pred_field' if role == 'predictions' else 'missing_field'}")


def set_role(samples, run: RegionRun, role: str, name: Optional[str]) -> RegionRun:
    """Name which owned brain key plays ``role`` (``brain_key``: the region index; ``visualization_key``)."""
    return update_run(samples, run, set_={f"roles.{role}": name})


def claim_brain_run(samples, run: RegionRun, role: str, brain_key: str, overwrite: bool) -> RegionRun:
    """Claim ``brain_key`` for the run's brain run ``role`` before FiftyOne computes it (so a killed
    computation is still deleted with the run). An existing brain run of that key must be this run's own
    and ``overwrite`` asked for; it is then deleted."""
    dataset = samples._root_dataset
    check_name(brain_key, "brain_key")
    check_free(dataset, run, "brain_key", brain_key)
    if brain_key in dataset.list_brain_runs():
        if not overwrite:
            raise ValueError(f"brain run {brain_key!r} of {run.describe()} exists in {dataset.name!r}; pass overwrite=True")
        dataset.delete_brain_run(brain_key)
    return set_role(dataset, claim(dataset, run, "brain_key", [brain_key]), role, brain_key)


def release_all(samples, run: RegionRun) -> None:
    """Drop the run from every lock it holds (its record is about to be deleted)."""
    _locks().update_many({"runs": run.doc_id}, {"$pull": {"runs": run.doc_id}})
    _locks().delete_many({"runs": {"$size": 0}})
