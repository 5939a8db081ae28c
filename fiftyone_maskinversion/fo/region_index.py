"""The region similarity index: FiftyOne Brain's sklearn index over a run's regions, made to answer as
``search_regions`` does, so the App's text box, its "sort by similarity" and our search agree.

Two things differ from the stock sklearn index: queries rank by the plain cosine to the stored
embeddings (the stock index centres them first, which reorders results), and text is embedded by the
run's own model, rebuilt from the run's record (model, weights, activation). The brain run stores these
classes by import path, so any process with this package installed (the App server, a notebook that
never imported it, a teammate's machine sharing the database) loads the index; where the run's weights
cannot be loaded there, the text query fails with the loader's error naming what is missing.
"""

from __future__ import annotations

from typing import Sequence

import fiftyone.core.models as fom
import numpy as np
from fiftyone.brain.internal.core.sklearn import SklearnSimilarity, SklearnSimilarityConfig, SklearnSimilarityIndex

from ..core.backbone import Backbone
from ..core.ranking import cosine_top_k
from .runs import backbone_for, list_region_runs


class RegionTextModel(fom.Model, fom.PromptMixin):
    """The run's text tower as a FiftyOne model: what the index uses to embed a text query."""

    def __init__(self, backbone: Backbone):
        self._backbone = backbone
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    @property
    def can_embed_prompts(self) -> bool:
        return True

    def embed_prompt(self, prompt: str) -> np.ndarray:
        return self.embed_prompts([prompt])[0]

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        return self._backbone.encode_text(list(prompts)).cpu().numpy()

    def predict(self, arg):
        raise TypeError("the region index's model embeds text queries only; regions are embedded by "
                        "compute_region_embeddings")


class RegionSimilarityConfig(SklearnSimilarityConfig):
    """Settings of a region index (the sklearn ones); the class itself names the region index's code."""


class RegionSimilarity(SklearnSimilarity):
    """Builds region indexes (the brain method a :class:`RegionSimilarityConfig` names)."""

    def initialize(self, samples, brain_key):
        return RegionSimilarityIndex(samples, self.config, brain_key, backend=self)


class RegionSimilarityIndex(SklearnSimilarityIndex):
    """An sklearn index whose queries rank by plain cosine and embed text with the run's own model."""

    @property
    def supports_prompts(self) -> bool:
        return bool(self.config.supports_prompts)

    def get_model(self) -> RegionTextModel:
        if self._model is None:
            dataset = self._dataset
            runs = [run for run in list_region_runs(dataset) if run.brain_key == self.key]
            if not runs:
                raise ValueError(f"index {self.key!r} of dataset {dataset.name!r}: no region run owns it any more")
            self._model = RegionTextModel(backbone_for(runs[0]))
        return self._model

    def _kneighbors(self, query=None, k=None, reverse=False, aggregation=None, return_dists=False):
        if query is None or aggregation not in (None, "mean"):  # whole-index queries, post-aggregations
            return super()._kneighbors(query, k, reverse, aggregation, return_dists)
        vectors, _, _, single_query = self._parse_neighbors_query(query)
        if aggregation == "mean":
            vectors, single_query = vectors.mean(axis=0, keepdims=True), True
        keep = self._current_inds
        embeddings = self._embeddings if keep is None else self._embeddings[keep]
        ranked = [cosine_top_k(embeddings, vector, k, reverse) for vector in vectors]
        inds = [order for order, _ in ranked]
        dists = [1.0 - cosines for _, cosines in ranked] if return_dists else None
        return self._format_output(inds, dists, False, single_query, return_dists)
