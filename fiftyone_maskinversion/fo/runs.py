"""Region-embedding runs as FiftyOne custom runs: one per (dataset, label field, embeddings field).

A run's record holds the settings that decide its embeddings (model identity, weights digest,
activation, method), their digest ``settings_id`` (also stored on every label the run embedded, so a
resumed or overwritten run knows which labels are current), where its regions live (the label field,
or the Detections field derived from a Segmentation field), the dataset it was computed on (a clone
has another id) and the outputs it owns (prediction fields, brain index).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import fiftyone.core.odm as foo

from ..core.backbone import Backbone, load_backbone
from . import heatmaps as heatmap_store
from .regions import attribute, list_path, regions_field_for

METHOD = "maskinversion"
BRAIN_RUN_ATTRIBUTES = ("brain_key", "visualization_key")  # the brain runs a run owns


@dataclass
class RegionRun:
    """The record of one run (see module docstring)."""

    key: str
    label_field: str
    regions_field: str
    embeddings_field: str
    settings: dict
    settings_id: str
    dataset_id: str
    pred_fields: List[str] = field(default_factory=list)
    brain_key: Optional[str] = None  # similarity index (build_region_index)
    visualization_key: Optional[str] = None  # 2-D layout (visualize_regions)
    version: str = ""

    @property
    def derived(self) -> bool:
        """Whether the regions live in a Detections field derived from a Segmentation field."""
        return self.regions_field != self.label_field

    def describe(self) -> str:
        where = f"{self.label_field!r}" + (f" (regions in {self.regions_field!r})" if self.derived else "")
        return f"embeddings {self.embeddings_field!r} on {where}"


def attribute_names(embeddings_field: str) -> dict:
    """The label attributes one run writes, all prefixed by the embeddings field name: the inversion's
    (embedding, dice, iou, error, run), the latest zero-shot relabel's (predicted label, top-k,
    mistakenness, low fidelity) and the mask review's (mask mistakenness), so the App's sidebar filters
    on the field the user reviews."""
    return {
        "embedding": embeddings_field,
        "dice": f"{embeddings_field}_dice",
        "iou": f"{embeddings_field}_iou",
        "error": f"{embeddings_field}_error",
        "run": f"{embeddings_field}_run",
        "predicted_label": f"{embeddings_field}_predicted_label",
        "topk_labels": f"{embeddings_field}_topk_labels",
        "topk_scores": f"{embeddings_field}_topk_scores",
        "mistakenness": f"{embeddings_field}_mistakenness",
        "low_fidelity": f"{embeddings_field}_low_fidelity",
        "mask_mistakenness": f"{embeddings_field}_mask_mistakenness",
    }


# the attributes that describe one embedding: cleared whenever a region's embedding is recomputed
REVIEW_ATTRIBUTES = ("predicted_label", "topk_labels", "topk_scores", "mistakenness", "low_fidelity",
                     "mask_mistakenness")


def is_current(region, run: RegionRun) -> bool:
    """Whether a region holds an embedding of the run's current settings (the Python twin of
    ``relabel.current_regions``, which filters a view the same way)."""
    names = attribute_names(run.embeddings_field)
    return attribute(region, names["embedding"]) is not None and attribute(region, names["run"]) == run.settings_id


def settings_digest(settings: dict) -> str:
    """A short digest of the settings that decide the embeddings (stored on every label embedded)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def make_settings(backbone: Backbone, **method) -> dict:
    """What decides a run's embeddings: model identity (name, tag or absolute checkpoint path, size,
    activation, weights digest) and the method's settings."""
    pretrained = backbone.pretrained
    if pretrained and os.path.isfile(os.path.expanduser(pretrained)):
        pretrained = os.path.abspath(os.path.expanduser(pretrained))
    return {
        "model_name": backbone.model_name,
        "pretrained": pretrained or None,
        "image_size": backbone.image_size,
        "activation": backbone.activation,
        "weights_id": backbone.weights_id,
        **method,
    }


def list_region_runs(samples) -> List[RegionRun]:
    """Every region-embedding run of the collection's dataset."""
    dataset = samples._dataset
    return [_load(dataset, key) for key in dataset.list_runs(method=METHOD)]


def find_run(samples, label_field: str, embeddings_field: str) -> Optional[RegionRun]:
    """The run of ``embeddings_field`` on ``label_field`` (the user's field, or the derived regions field).

    On a clone, the first use adopts the run of the dataset it was cloned from: a dataset clone carries
    the record, a view clone only its labels (the record is found by the settings digest they hold);
    the run's heatmaps of the clone's labels are copied to the clone's companion."""
    dataset = samples._dataset
    matches = [r for r in list_region_runs(dataset)
               if r.embeddings_field == embeddings_field and label_field in (r.label_field, r.regions_field)]
    run = matches[0] if matches else _record_from_labels(dataset, label_field, embeddings_field)
    if run is not None and run.dataset_id != str(dataset._doc.id):
        heatmap_store.copy_for_clone(run.dataset_id, dataset, run.regions_field, run.embeddings_field)
        run.dataset_id = str(dataset._doc.id)
        save_run(dataset, run)
    return run


def _record_from_labels(dataset, label_field: str, embeddings_field: str) -> Optional[RegionRun]:
    """Register here the run of another dataset whose settings digest this dataset's labels hold (a view
    clone copies labels but no run records); None when the labels hold none."""
    if not dataset.has_sample_field(label_field):
        return None
    regions_field = regions_field_for(dataset, label_field)
    if not dataset.has_sample_field(regions_field):
        return None
    path = f"{list_path(dataset, regions_field)}.{attribute_names(embeddings_field)['run']}"
    digests = [d for d in dataset.distinct(path) if d] if dataset.has_field(path) else []
    if not digests:
        return None
    doc = foo.get_db_conn().runs.find_one({
        "config.method": METHOD, "config.settings_id": {"$in": digests},
        "config.embeddings_field": embeddings_field, "config.regions_field": regions_field,
    })
    if doc is None:
        return None
    config = doc["config"]
    run = RegionRun(
        key=_free_key(dataset, config["label_field"], embeddings_field),
        **{name: config[name] for name in ("label_field", "regions_field", "embeddings_field", "settings",
                                            "settings_id", "dataset_id", "version")},
        pred_fields=[f for f in config.get("pred_fields", []) if dataset.has_sample_field(f)],
    )
    dataset.register_run(run.key, dataset.init_run(method=METHOD, **_config(run, run.version)))
    return run


def require_run(samples, label_field: str, embeddings_field: str) -> RegionRun:
    """The run, or a clear error naming what exists and what to compute first."""
    run = find_run(samples, label_field, embeddings_field)
    if run is None:
        dataset = samples._dataset
        runs = list_region_runs(dataset)
        existing = [f"{r.label_field}/{r.embeddings_field}" for r in runs]
        gone = [r.label_field for r in runs if not dataset.has_sample_field(r.label_field)]
        hint = (f"; the field of the run(s) on {gone} no longer exists: a run follows no rename (nor do "
                "FiftyOne's brain runs), so rename the field back or compute again" if gone else "")
        raise ValueError(
            f"no region embeddings {embeddings_field!r} on {label_field!r} in {dataset.name!r}: "
            f"run compute_region_embeddings first (existing runs, field/embeddings: {existing or 'none'}){hint}"
        )
    return run


def start_run(samples, label_field: str, regions_field: str, embeddings_field: str, settings: dict,
              overwrite: bool) -> RegionRun:
    """Record the settings of a run that is about to start; other settings than recorded need overwrite."""
    from .. import __version__

    dataset = samples._dataset
    run = find_run(dataset, label_field, embeddings_field)
    if run is not None and run.settings != settings and not overwrite:
        changed = {k: (run.settings.get(k), v) for k, v in settings.items() if run.settings.get(k) != v}
        raise ValueError(
            f"{run.describe()} of {dataset.name!r} was computed with other settings {changed} (old, new); "
            "pass overwrite=True to recompute every region, or choose another embeddings_field"
        )
    if run is None:
        run = RegionRun(
            key=_free_key(dataset, label_field, embeddings_field), label_field=label_field,
            regions_field=regions_field, embeddings_field=embeddings_field, settings=settings,
            settings_id=settings_digest(settings), dataset_id=str(dataset._doc.id), version=__version__,
        )
        try:
            dataset.register_run(run.key, dataset.init_run(method=METHOD, **_config(run, __version__)))
        except ValueError:  # a parallel worker registered the same run first: join it if it agrees
            dataset.reload()
            if run.key not in dataset.list_runs():
                raise
            return start_run(samples, label_field, regions_field, embeddings_field, settings, overwrite=False)
        return run
    run.settings, run.settings_id, run.version = settings, settings_digest(settings), __version__
    save_run(dataset, run)
    return run


def save_run(samples, run: RegionRun) -> None:
    """Persist a changed record (outputs added or removed, adoption by a clone)."""
    dataset = samples._dataset
    dataset.update_run_config(run.key, dataset.init_run(method=METHOD, **_config(run, run.version)))


def claim_output_field(samples, run: RegionRun, field: str) -> None:
    """Record ``field`` as one the run writes (deleted with it), before the first write, so a killed
    step's partial output is still owned."""
    if field not in run.pred_fields:
        run.pred_fields.append(field)
        save_run(samples, run)


def claim_brain_key(samples, run: RegionRun, attribute: str, brain_key: str, overwrite: bool) -> None:
    """Make ``brain_key`` the run's brain run ``attribute`` (see BRAIN_RUN_ATTRIBUTES). An existing brain
    run of that key must be this run's own and overwrite asked for; it is then deleted. Recorded before
    FiftyOne computes it, so a killed computation is still deleted with the run."""
    dataset = samples._dataset
    own = getattr(run, attribute)
    if brain_key in dataset.list_brain_runs():
        if not overwrite or brain_key != own:
            raise ValueError(f"brain run {brain_key!r} exists in {dataset.name!r}"
                             + ("; pass overwrite=True" if brain_key == own else " and is not this run's"))
        dataset.delete_brain_run(brain_key)
    setattr(run, attribute, brain_key)
    save_run(dataset, run)


def delete_run_record(samples, run: RegionRun) -> None:
    samples._dataset.delete_run(run.key)


def _config(run: RegionRun, version: str) -> dict:
    config = asdict(run)
    config.pop("key")
    config["version"] = version
    return config


def _load(dataset, key: str) -> RegionRun:
    config = dataset.get_run_info(key).config.serialize()
    fields = {name: config[name] for name in RegionRun.__dataclass_fields__ if name in config and name != "key"}
    return RegionRun(key=key, **fields)


def _free_key(dataset, label_field: str, embeddings_field: str) -> str:
    """A readable run key (FiftyOne run keys must be identifiers): the same for the same pair, so
    parallel workers agree; suffixed only where another pair's sanitised name collides."""
    base = "".join(c if c.isalnum() else "_" for c in f"{METHOD}_{label_field}_{embeddings_field}")
    taken = set(dataset.list_runs())
    key, suffix = base, 2
    while key in taken and not _same_pair(dataset, key, label_field, embeddings_field):
        key, suffix = f"{base}_{suffix}", suffix + 1
    return key


def _same_pair(dataset, key: str, label_field: str, embeddings_field: str) -> bool:
    config = dataset.get_run_info(key).config
    return (getattr(config, "label_field", None), getattr(config, "embeddings_field", None)) == (
        label_field, embeddings_field)


def backbone_for(run: RegionRun, backbone: Optional[Backbone] = None, device=None) -> Backbone:
    """The backbone a run used: the one given (checked against the record, weights included), else
    reloaded from the record (and checked: a checkpoint file may have changed since)."""
    recorded = run.settings
    if backbone is None:
        if not recorded.get("pretrained"):
            raise ValueError(
                f"{run.describe()} was computed with a backbone object of random weights (weights id "
                f"{recorded['weights_id']}), which cannot be reloaded: pass that backbone= (or save its "
                "state_dict to a file and compute with pretrained='/path/to/file')"
            )
        backbone = _cached_backbone(recorded["model_name"], recorded["pretrained"], recorded["image_size"],
                                    recorded["activation"] == "quick_gelu", device)
    found = {"model_name": backbone.model_name, "image_size": backbone.image_size,
             "activation": backbone.activation, "weights_id": backbone.weights_id}
    different = {k: (recorded.get(k), v) for k, v in found.items() if recorded.get(k) != v}
    if different:
        raise ValueError(f"the backbone differs from the one {run.describe()} was computed with: "
                         f"{different} (recorded, given)")
    return backbone


@functools.lru_cache(maxsize=2)
def _cached_backbone(model_name: str, pretrained: str, image_size: int, quick_gelu: bool, device) -> Backbone:
    return load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device, quick_gelu=quick_gelu)
