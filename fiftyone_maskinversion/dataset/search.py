"""Text-to-region and region-to-region search over the region embeddings, through fiftyone-brain.

The index is a brain similarity run over the label field's patches with our precomputed
embeddings. When the backbone is a standard open_clip model + pretrained tag, the index also names
the equivalent zoo model ("open-clip-torch") so the App's own text search box works; otherwise
queries are embedded here with the recorded backbone (see :func:`search_regions`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import fiftyone.brain as fob
import numpy as np
import torch.nn.functional as F

from ..backbone import Backbone, weights_obtainable
from ..compact_weights import PACKAGE_TAGS
from .regions import list_path
from .settings import backbone_for, require_settings

logger = logging.getLogger(__name__)


def default_brain_key(label_field: str, embeddings_field: str) -> str:
    return f"{label_field}_{embeddings_field}_sim".replace(".", "_")


def build_region_index(
    samples,
    label_field: str,
    embeddings_field: str = "mi_embedding",
    brain_key: Optional[str] = None,
    overwrite: bool = False,
):
    """A sklearn similarity index over the region embeddings (cosine); returns the brain results."""
    settings = require_settings(samples, label_field, embeddings_field)
    brain_key = brain_key or default_brain_key(label_field, embeddings_field)
    dataset = samples._dataset
    if brain_key in dataset.list_brain_runs():
        if not overwrite:
            raise ValueError(f"brain run {brain_key!r} exists in {dataset.name!r}; pass overwrite=True")
        dataset.delete_brain_run(brain_key)
    embedded = samples.filter_labels(label_field, _has(embeddings_field), only_matches=True)
    index = functools.partial(
        fob.compute_similarity,
        embedded,
        patches_field=label_field,
        embeddings=f"{list_path(samples, label_field)}.{embeddings_field}",
        brain_key=brain_key,
        backend="sklearn",
        metric="cosine",
        progress=False,
    )
    if _is_zoo_compatible(settings):
        zoo_kwargs = {"clip_model": settings["model_name"], "pretrained": settings["pretrained"]}
        try:
            if not weights_obtainable(settings["model_name"], settings["pretrained"]):
                raise RuntimeError("its weights are neither cached nor downloadable")
            return index(model="open-clip-torch", model_kwargs=zoo_kwargs)
        except Exception as err:  # the zoo model cannot load here
            logger.warning(
                "index %r built without the zoo text model (%s): the App's text search box will not work; "
                "search with search_regions() or the search_regions operator instead", brain_key, err
            )
            if brain_key in dataset.list_brain_runs():
                dataset.delete_brain_run(brain_key)
    return index()


def search_regions(
    samples,
    label_field: str,
    text: Optional[str] = None,
    region_id: Optional[str] = None,
    k: int = 25,
    embeddings_field: str = "mi_embedding",
    brain_key: Optional[str] = None,
    backbone: Optional[Backbone] = None,
):
    """A patches view of the ``k`` regions most similar to ``text`` or to the region ``region_id``."""
    if (text is None) == (region_id is None):
        raise ValueError("pass exactly one of text= or region_id=")
    brain_key = brain_key or default_brain_key(label_field, embeddings_field)
    if brain_key not in samples._dataset.list_brain_runs():
        build_region_index(samples, label_field, embeddings_field, brain_key)
    patches = samples.to_patches(label_field)
    if region_id is not None:
        return patches.sort_by_similarity(region_id, k=k, brain_key=brain_key)
    settings = require_settings(samples, label_field, embeddings_field)
    query = backbone_for(settings, backbone).encode_text([text])[0]
    return patches.sort_by_similarity(F.normalize(query, dim=-1).cpu().numpy().astype(np.float32), k=k, brain_key=brain_key)


def _has(embeddings_field: str):
    from fiftyone import ViewField

    return ViewField(embeddings_field).exists()


def _is_zoo_compatible(settings: dict) -> bool:
    """A standard open_clip name + tag (not a local file) that FiftyOne's zoo model can load too."""
    pretrained = settings.get("pretrained")
    return bool(pretrained) and not os.path.isfile(str(pretrained)) and package_checkpoint_free(settings)


def package_checkpoint_free(settings: dict) -> bool:
    """Tags shipped by this package are unknown to FiftyOne's zoo."""
    return (settings["model_name"], settings["pretrained"]) not in PACKAGE_TAGS
