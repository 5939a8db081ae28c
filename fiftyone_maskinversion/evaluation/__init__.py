"""Evaluation: baseline region embeddings, the tasks (classify, refer, mislabel), the report and the
runner behind ``maskinversion eval``. Needs only the core; never imports FiftyOne."""

from .baselines import METHODS, region_embeddings, supported_methods
from .runner import TASKS, run, run_seeds

__all__ = ["METHODS", "TASKS", "region_embeddings", "run", "run_seeds", "supported_methods"]
