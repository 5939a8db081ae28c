"""The settings of a region-embedding run, recorded once on the dataset so later steps reuse the same model."""

from __future__ import annotations

import functools
import os
from typing import Optional

from ..backbone import Backbone, load_backbone

INFO_KEY = "maskinversion"


def run_key(label_field: str, embeddings_field: str) -> str:
    return f"{label_field}.{embeddings_field}"


def make_settings(backbone: Backbone, label_field: str, embeddings_field: str, **method) -> dict:
    """The record of a run: model identity (name, tag or absolute checkpoint path, size) and method settings."""
    from .. import __version__

    pretrained = backbone.pretrained
    if pretrained and os.path.isfile(os.path.expanduser(pretrained)):
        pretrained = os.path.abspath(os.path.expanduser(pretrained))
    return {
        "label_field": label_field,
        "embeddings_field": embeddings_field,
        "model_name": backbone.model_name,
        "pretrained": pretrained,
        "image_size": backbone.image_size,
        "version": __version__,
        **method,
    }


def recorded_settings(samples, label_field: str, embeddings_field: str) -> Optional[dict]:
    return samples._dataset.info.get(INFO_KEY, {}).get(run_key(label_field, embeddings_field))


def require_settings(samples, label_field: str, embeddings_field: str) -> dict:
    """The recorded settings of a run, or a clear error saying which run to compute first."""
    settings = recorded_settings(samples, label_field, embeddings_field)
    if settings is None:
        raise ValueError(
            f"no region embeddings {embeddings_field!r} on {label_field!r} in {samples._dataset.name!r}: "
            "run compute_region_embeddings first"
        )
    return settings


def record_settings(samples, settings: dict, overwrite: bool) -> None:
    """Store the settings; a different earlier run on the same field is an error unless overwrite."""
    dataset = samples._dataset
    key = run_key(settings["label_field"], settings["embeddings_field"])
    runs = dict(dataset.info.get(INFO_KEY, {}))
    previous = runs.get(key)
    comparable = {k: v for k, v in settings.items() if k != "version"}
    if previous and not overwrite and {k: v for k, v in previous.items() if k != "version"} != comparable:
        changed = {k: (previous.get(k), v) for k, v in comparable.items() if previous.get(k) != v}
        raise ValueError(
            f"{key!r} of {dataset.name!r} was computed with other settings {changed} (old, new); "
            "pass overwrite=True to recompute every instance, or choose another embeddings_field"
        )
    runs[key] = settings
    dataset.info[INFO_KEY] = runs
    dataset.save()


def forget_settings(samples, label_field: str, embeddings_field: str) -> None:
    dataset = samples._dataset
    runs = dict(dataset.info.get(INFO_KEY, {}))
    if runs.pop(run_key(label_field, embeddings_field), None) is not None:
        dataset.info[INFO_KEY] = runs
        dataset.save()


def backbone_for(settings: dict, backbone: Optional[Backbone] = None, device=None) -> Backbone:
    """The backbone a run used: the one given (checked against the record), else loaded from the record."""
    if backbone is not None:
        if (backbone.model_name, backbone.image_size) != (settings["model_name"], settings["image_size"]):
            raise ValueError(
                f"the given backbone is {backbone.model_name}@{backbone.image_size}, but the embeddings were "
                f"computed with {settings['model_name']}@{settings['image_size']}"
            )
        return backbone
    if not settings.get("pretrained"):
        raise ValueError(
            f"{settings['label_field']}.{settings['embeddings_field']} was computed with randomly initialised "
            "weights, which cannot be reloaded: pass the same backbone object"
        )
    return _cached_backbone(settings["model_name"], settings["pretrained"], settings["image_size"], device)


@functools.lru_cache(maxsize=2)
def _cached_backbone(model_name: str, pretrained: str, image_size: int, device) -> Backbone:
    return load_backbone(model_name, pretrained=pretrained, image_size=image_size, device=device)
