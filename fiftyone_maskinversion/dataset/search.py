"""Text-to-region and region-to-region search over the region embeddings, through fiftyone-brain.

The index is a brain similarity run over the label field's patches with our precomputed
embeddings. Whenever FiftyOne's "open-clip-torch" zoo model can load the same weights (a standard
tag that is cached or downloadable, a local checkpoint file, a tag this package ships), the index
names it, so the App's own text search box works; otherwise queries are embedded here with the
recorded backbone (see :func:`search_regions` and the search_regions operator).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import fiftyone.brain as fob
import numpy as np
from fiftyone import ViewField as F

from ..backbone import Backbone, weights_obtainable
from ..compact_weights import package_checkpoint
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
    embedded = samples.filter_labels(label_field, F(embeddings_field).exists(), only_matches=True)
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
    pretrained = _zoo_pretrained(settings)
    if pretrained:
        # text_prompt "": the zoo model would otherwise prefix every query ("A photo of ...")
        zoo_kwargs = {"clip_model": settings["model_name"], "pretrained": pretrained, "text_prompt": ""}
        try:
            return index(model="open-clip-torch", model_kwargs=zoo_kwargs)
        except Exception as err:  # the zoo model cannot load here
            logger.warning(
                "index %r built without the zoo text model (%s): the App's text search box will not work; "
                "search with search_regions() or the search_regions operator instead", brain_key, err
            )
            if brain_key in dataset.list_brain_runs():
                dataset.delete_brain_run(brain_key)
    else:
        logger.warning(
            "index %r built without a text model (%s / %s cannot be loaded by name here): the App's text "
            "search box will not work; search with search_regions() or the search_regions operator", brain_key,
            settings["model_name"], settings["pretrained"],
        )
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
    query = backbone_for(settings, backbone).encode_text([text])[0]  # unit norm already
    return patches.sort_by_similarity(query.cpu().numpy().astype(np.float32), k=k, brain_key=brain_key)


def _zoo_pretrained(settings: dict) -> Optional[str]:
    """What FiftyOne's open-clip-torch zoo model needs as ``pretrained`` to load the same weights:
    a checkpoint file (local checkpoints and tags this package ships), or a standard tag whose weights
    are cached or downloadable; None when there is no such way (random weights, offline)."""
    name, pretrained = settings["model_name"], settings.get("pretrained")
    if not pretrained:
        return None
    if os.path.isfile(str(pretrained)):
        return str(pretrained)
    shipped = package_checkpoint(name, pretrained)
    if shipped:
        return shipped
    return pretrained if weights_obtainable(name, pretrained) else None
