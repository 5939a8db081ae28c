"""Text-to-region and region-to-region search over a run's region embeddings.

``search_regions`` ranks by the plain cosine between the query and each region embedding, the same
cosine the zero-shot classifier uses, computed on the stored embeddings at query time (never stale).
``build_region_index`` builds the region index (:mod:`.region_index`) for the App's own search, which
ranks with the same function, so the App's text box and ``search_regions`` agree.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import fiftyone.brain as fob
import numpy as np

from .. import defaults
from ..core.backbone import Backbone
from ..core.ranking import cosine_top_k
from .region_index import is_region_index, region_config_class
from .regions import list_path
from .ownership import claim_brain_run
from .run_views import current_regions
from .runs import RegionRun, backbone_for, require_run

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
    if region_id is not None:
        if region_id not in ids:
            raise ValueError(f"region {region_id!r} has no embedding of {run.describe()} in this collection "
                             "(not embedded, failed, or not in the view)")
        query = np.asarray(vectors[ids.index(region_id)])
    else:
        query = backbone_for(run, backbone).encode_text([text])[0].cpu().numpy()
    order, scores = cosine_top_k(np.stack(vectors), query, k)
    return run, [(ids[i], float(score)) for i, score in zip(order, scores)]


def search_regions(samples, label_field: str, text: Optional[str] = None, region_id: Optional[str] = None,
                   k: int = defaults.SEARCH_K, embeddings_field: str = defaults.EMBEDDINGS_FIELD,
                   backbone: Optional[Backbone] = None):
    """A patches view of the ``k`` regions most similar (cosine) to ``text`` or to the region ``region_id``.

    Where the run's region index gives these very regions (it ranks with the same function, but an
    index loaded before a label was deleted may still hold it), the view is FiftyOne's own
    ``SortBySimilarity`` stage over it, so the App's view bar reads the query."""
    run, ranked = rank_regions(samples, label_field, text, region_id, k, embeddings_field, backbone)
    ids = [i for i, _ in ranked]
    patches = samples.to_patches(run.regions_field)
    if _index_answers(samples, run, text is not None):
        view = patches.sort_by_similarity(text if text is not None else region_id, k=k, brain_key=run.brain_key)
        if view.values("id") == ids:
            return view
    return patches.select(ids, ordered=True)  # a patch's id is its label's id


def _index_answers(samples, run: RegionRun, is_text: bool) -> bool:
    """Whether the run has a region index that can answer this kind of query."""
    if not run.brain_key or run.brain_key not in samples._root_dataset.list_brain_runs():
        return False
    config = samples._root_dataset.get_brain_info(run.brain_key).config
    return is_region_index(config) and (getattr(config, "supports_prompts", False) or not is_text)


def build_region_index(
    samples,
    label_field: str,
    embeddings_field: str = defaults.EMBEDDINGS_FIELD,
    brain_key: Optional[str] = None,
    overwrite: bool = False,
    backend: str = defaults.INDEX_BACKEND,
    **backend_kwargs,
):
    """A brain similarity index over the run's embedded regions for the App's own search (its text box,
    "sort by similarity"), ranking as ``search_regions`` does; returns the brain results. The run owns
    it: a later compute adds its new and recomputed regions to it, and deleting the run deletes it. Text
    queries work where the run's weights can be loaded by name or path (not for a backbone of random
    weights passed as an object). ``backend`` is any FiftyOne Brain similarity backend ("sklearn" in
    memory; "lancedb", "qdrant", "milvus", "mongodb", "elasticsearch", "pgvector", ...), with its
    parameters from the user's brain config, overridden by ``backend_kwargs`` (e.g. ``uri=`` for LanceDB)."""
    config_cls, params = region_config_class(backend)
    run = require_run(samples, label_field, embeddings_field)
    brain_key = brain_key or default_brain_key(run)
    dataset = samples._root_dataset
    run = claim_brain_run(dataset, run, "brain_key", brain_key, overwrite)
    results = fob.compute_similarity(
        current_regions(samples, run), backend=config_cls, brain_key=brain_key, metric="cosine",
        patches_field=run.regions_field, progress=False, **{**params, **backend_kwargs},
        embeddings=f"{list_path(samples, run.regions_field)}.{run.embeddings_field}",
    )
    try:
        results.get_model()
    except Exception as err:  # the run's weights cannot be loaded here (random weights, offline tag)
        logger.warning("index %r has no text model (%s): the App's text search box will not work on it; its "
                       "region-to-region search does, and search_regions() searches by text with backbone=",
                       brain_key, err)
    else:
        results.config.supports_prompts = True
        results.save_config()
    return results
