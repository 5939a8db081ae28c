"""The region similarity index: a FiftyOne Brain similarity index over a run's regions, on any backend
brain knows (sklearn in memory by default; LanceDB, Qdrant, Milvus, MongoDB vector search,
Elasticsearch, pgvector, ... as configured in the user's brain config), answering as ``search_regions``
does, so the App's text box, its "sort by similarity" and our search agree.

On every backend, text is embedded by the run's own model, rebuilt from the run's record (model,
weights, activation). On sklearn, queries rank by the plain cosine to the stored embeddings (the stock
index centres them first, which reorders results); the other backends rank by their cosine metric,
which is the plain cosine. The brain run stores these classes by import path, so any process with this package installed (the App server, a notebook that
never imported it, a teammate's machine sharing the database) loads the index; where the run's weights
cannot be loaded there, the text query fails with the loader's error naming what is missing.
"""

from __future__ import annotations

from typing import Sequence

import importlib
import fiftyone.brain as fb
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


class RegionIndexMixin:
    """What every region index adds to its FiftyOne Brain backend: text queries embedded by the run's own model."""

    @property
    def supports_prompts(self) -> bool:
        return bool(getattr(self.config, "supports_prompts", False))

    def get_model(self) -> RegionTextModel:
        if self._model is None:
            dataset = self.samples._root_dataset
            runs = [run for run in list_region_runs(dataset) if run.brain_key == self.key]
            if not runs:
                raise ValueError(f"index {self.key!r} of dataset {dataset.name!r}: no region run owns it any more")
            self._model = RegionTextModel(backbone_for(runs[0]))
        return self._model


class RegionSimilarityConfig(SklearnSimilarityConfig):
    """Settings of a region index on the sklearn backend; the class itself names the region index's code."""


class RegionSimilarity(SklearnSimilarity):
    """Builds sklearn region indexes (the brain method a :class:`RegionSimilarityConfig` names)."""

    def initialize(self, samples, brain_key):
        return RegionSimilarityIndex(samples, self.config, brain_key, backend=self)


class RegionSimilarityIndex(RegionIndexMixin, SklearnSimilarityIndex):
    """An sklearn index whose queries rank by plain cosine (the stock one centres the embeddings first)."""

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


def region_config_class(backend: str):
    """The region index config class for a FiftyOne Brain similarity backend by name ("sklearn", "lancedb",
    "qdrant", "milvus", "mongodb", "elasticsearch", "pgvector", ... as the user's brain config lists them),
    and that backend's own parameters from the brain config (URIs, credentials)."""
    backends = fb.brain_config.similarity_backends
    if backend not in backends:
        raise ValueError(f"unknown similarity backend {backend!r}; FiftyOne Brain knows {sorted(backends)}")
    params = dict(backends[backend])
    base = params.pop("config_cls")
    base = base if isinstance(base, str) else f"{base.__module__}.{base.__name__}"
    if backend == "sklearn":
        return RegionSimilarityConfig, params
    return globals().get(_region_name(base)) or _derive(base), params


def _region_name(base_path: str) -> str:
    return "Region" + base_path.rsplit(".", 1)[1]


def _derive(base_config_path: str):
    """Subclass a backend's config, run and index (named ``Region<name>``, importable from this module, so
    any process with the package loads the stored index); returns the config class."""
    base_config = _class(base_config_path)
    base_run = _class(base_config_path[:-len("Config")])
    base_index = _class(base_config_path[:-len("Config")] + "Index")
    names = {kind: _region_name(path) for kind, path in (
        ("config", base_config_path), ("run", base_config_path[:-len("Config")]),
        ("index", base_config_path[:-len("Config")] + "Index"))}
    index_cls = type(names["index"], (RegionIndexMixin, base_index), {"__module__": __name__})
    run_cls = type(names["run"], (base_run,), {
        "__module__": __name__,
        "initialize": lambda self, samples, brain_key: index_cls(samples, self.config, brain_key, backend=self)})
    config_cls = type(names["config"], (base_config,), {"__module__": __name__})
    globals().update({names["config"]: config_cls, names["run"]: run_cls, names["index"]: index_cls})
    return config_cls


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    """Derive on first use the region classes a stored index names (``Region<backend class>``)."""
    if name.startswith("Region"):
        for params in fb.brain_config.similarity_backends.values():
            path = params.get("config_cls")
            path = path if isinstance(path, str) else f"{path.__module__}.{path.__name__}" if path else ""
            stem = path[:-len("Config")] if path.endswith("Config") else ""
            if stem and name in (_region_name(path), _region_name(stem), _region_name(stem + "Index")):
                _derive(path)
                return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_region_index(config) -> bool:
    """Whether a brain run's config is one of a region index (any backend)."""
    return type(config).__module__ == __name__
