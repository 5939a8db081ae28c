"""Views of a run's regions that several steps share (relabel, mask review, search, layout)."""

from __future__ import annotations

from fiftyone import ViewField as F

from .runs import RegionRun, attribute_names


def current_regions(samples, run: RegionRun):
    """The samples whose regions hold an embedding of the run's current settings, only those regions."""
    name = attribute_names(run.embeddings_field)["run"]
    return samples.filter_labels(run.regions_field, (F(name) == run.stamp) & F(run.embeddings_field).exists())


def samples_with_current(samples, run: RegionRun, fields):
    """The samples that have such regions, with their whole label lists (never a filtered view of them,
    so saving cannot drop the regions not embedded) and only ``fields``."""
    return samples.select(current_regions(samples, run).values("id")).select_fields(fields)
