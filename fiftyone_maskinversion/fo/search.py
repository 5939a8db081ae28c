"""Text-to-region and region-to-region search over a run's region embeddings.

``search_regions`` ranks by the plain cosine between the query and each region embedding, the same
cosine the zero-shot classifier uses, computed on the stored embeddings at query time (never stale).

``build_region_index`` builds a fiftyone-brain similarity index over the regions for the App's own
search (its text box, "sort by similarity"). Note that brain's sklearn backend centres the indexed
embeddings (subtracts their mean) before its cosine, so the App's order can differ slightly from
``search_regions``. Whenever FiftyOne's "open-clip-torch" zoo model can load the same weights, the
index names it, so the App's text box embeds queries with the same model.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import fiftyone.brain as fob
import numpy as np
import open_clip

from .. import defaults
from ..core.backbone import Backbone, open_clip_folder, shipped_checkpoint, weights_obtainable
from .regions import list_path
from .relabel import current_regions
from .runs import RegionRun, backbone_for, claim_brain_key, require_run

logger = logging.getLogger(__name__)


def default_brain_key(run: RegionRun) -> str:
    return f"{run.key}_sim"


def rank_regions(
    samples,
    label_field: str,
    text: Optional[str] = None,
    region_id: Optional[str] = None,
    k: int = defaults.SEARCH_K,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    backbone: Optional[Backbone] = None,
) -> Tuple[RegionRun, List[Tuple[str, float]]]:
    """(run, the ``k`` best (region id, cosine) pairs, best first) for ``text`` or the region ``region_id``."""
    if (text is None) == (region_id is None):
        raise ValueError("pass exactly one of text= or region_id=")
    if text is not None and not text.strip():
        raise ValueError("the text query is empty")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    run = require_run(samples, label_field, embeddings_field)
    path = list_path(samples, run.regions_field)
    current = current_regions(samples, run)
    ids = [i for row in current.values(f"{path}.id") for i in row or []]
    vectors = [v for row in current.values(f"{path}.{run.embeddings_field}") for v in row or []]
    if not ids:
        raise ValueError(f"{run.describe()} has no embedded region in this collection")
    matrix = np.stack(vectors).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    if region_id is not None:
        if region_id not in ids:
            raise ValueError(f"region {region_id!r} has no embedding of {run.describe()} in this collection "
                             "(not embedded, failed, or not in the view)")
        query = matrix[ids.index(region_id)]
    else:
        query = backbone_for(run, backbone).encode_text([text])[0].cpu().numpy()
    scores = matrix @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return run, [(ids[i], float(scores[i])) for i in order]


def search_regions(samples, label_field: str, text: Optional[str] = None, region_id: Optional[str] = None,
                   k: int = defaults.SEARCH_K, embeddings_field: str = defaults.EMBEDDINGS_FIELD,
                   backbone: Optional[Backbone] = None):
    """A patches view of the ``k`` regions most similar (cosine) to ``text`` or to the region ``region_id``."""
    run, ranked = rank_regions(samples, label_field, text, region_id, k, embeddings_field, backbone)
    # a patch's id is its label's id
    return samples.to_patches(run.regions_field).select([i for i, _ in ranked], ordered=True)


def build_region_index(
    samples,
    label_field: str,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    brain_key: Optional[str] = None,
    overwrite: bool = False,
):
    """A brain similarity index (sklearn, cosine) over the run's embedded regions for the App; returns
    the brain results. The run owns it: a later compute that adds regions removes it (it would be
    outdated), and deleting the run deletes it."""
    run = require_run(samples, label_field, embeddings_field)
    brain_key = brain_key or default_brain_key(run)
    dataset = samples._dataset
    claim_brain_key(dataset, run, "brain_key", brain_key, overwrite)
    embedded = current_regions(samples, run)
    index_kwargs = dict(
        patches_field=run.regions_field,
        embeddings=f"{list_path(samples, run.regions_field)}.{run.embeddings_field}",
        brain_key=brain_key, backend="sklearn", metric="cosine", progress=False,
    )
    zoo_kwargs = zoo_model_kwargs(run)
    if zoo_kwargs:
        try:
            return fob.compute_similarity(embedded, model="open-clip-torch", model_kwargs=zoo_kwargs, **index_kwargs)
        except Exception as err:  # the zoo model cannot load here
            logger.warning("index %r built without the zoo text model (%s): the App's text search box will not "
                           "work; search with search_regions() or the search_regions operator", brain_key, err)
            if brain_key in dataset.list_brain_runs():
                dataset.delete_brain_run(brain_key)
    else:
        logger.warning("index %r built without a text model (%s / %s cannot be loaded by name here): the App's "
                       "text search box will not work; search with search_regions() or the search_regions "
                       "operator", brain_key, run.settings["model_name"], run.settings["pretrained"])
    return fob.compute_similarity(embedded, **index_kwargs)


def zoo_model_kwargs(run: RegionRun) -> Optional[dict]:
    """What FiftyOne's open-clip-torch zoo model needs to embed text exactly as the run's backbone does
    (same weights, same activation), or None when it cannot load them here (random weights, offline).

    An open_clip tag is named as such (``<model>-quickgelu`` where the weights need it), which any
    machine can load. Weights in a file (a checkpoint, or a tag an installed package ships) are named
    as ``local-dir:`` of a folder holding the model's config and a link to the file, so a process that
    never imported this package builds the same model; on another machine that folder must exist (any
    use of the run there, e.g. ``build_region_index``, creates it). ``text_prompt`` is empty: the zoo
    model would otherwise prefix every query ("A photo of ...")."""
    settings = run.settings
    name, pretrained = settings["model_name"], settings.get("pretrained")
    if not pretrained:
        return None
    quick_gelu = settings.get("activation") == "quick_gelu"
    checkpoint = str(pretrained) if os.path.isfile(str(pretrained)) else shipped_checkpoint(name, pretrained)
    if checkpoint:
        return {"clip_model": f"local-dir:{open_clip_folder(name, checkpoint, quick_gelu)}", "pretrained": None,
                "text_prompt": ""}
    if quick_gelu and not name.endswith("-quickgelu"):
        if f"{name}-quickgelu" not in open_clip.list_models():
            return None  # the zoo model cannot be told to build QuickGELU for this architecture
        name = f"{name}-quickgelu"
    if not weights_obtainable(settings["model_name"], pretrained) or \
            pretrained not in open_clip.list_pretrained_tags_by_model(name):
        return None
    return {"clip_model": name, "pretrained": pretrained, "text_prompt": ""}
