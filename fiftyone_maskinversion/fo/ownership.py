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
from fiftyone import ViewField as F

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


def check_free(samples, run: Optional[RegionRun], kind: str, name: str, label_field: Optional[str] = None,
               runs: Optional[list] = None) -> None:
    """Raise ValueError unless ``run`` (None: a run not started yet) may write ``name``: it owns it, or
    the name holds no data and no other run owns it (a derived regions field may be shared by the runs
    of its Segmentation field ``label_field``). Writes nothing."""
    if run is not None and run.owns(kind, name):
        return
    if kind == "attribute" and name.rpartition(".")[2] in LABEL_OWN_NAMES:
        raise ValueError(f"{name!r} is a label's own field; pass another {ARGUMENT[kind]}")
    others = [r for r in owners(samples, kind, name, runs) if run is None or r.key != run.key]
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
    return update_run(samples, run, add={f"owned.{kind}": {"$each": names}})


def release(samples, run: RegionRun, kind: str, names: Iterable[str]) -> RegionRun:
    """Record that the run no longer owns ``names`` (after their data was deleted)."""
    return update_run(samples, run, pull={f"owned.{kind}": {"$in": list(names)}})


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
