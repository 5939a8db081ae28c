"""How the package's data looks in the App: masks drawn thin enough to see the object, heatmaps with a
colour scale, and the package's own fields grouped in the sidebar."""

from __future__ import annotations

import fiftyone as fo

from .runs import attribute_names, list_region_runs

REVIEW_OPACITY = 0.25  # the App's default (0.7) hides the colour that often defines the class
BAD_MASK_OPACITY = 0.6  # the bad-mask view: a moved mask must stand out from the object it missed
HEATMAP_OPACITY = 0.6  # the heatmaps dataset: at the review opacity the heatmap was a faint tint
HEATMAP_COLORSCALE = "viridis"  # perceptually ordered: a brighter colour always means a higher score
SIDEBAR_GROUP = "maskinversion"
# what each review view's tiles say besides its labels (attributes of the patch's label, by their
# attribute_names key, or a label field of the label such as the suggestions' confidence): the score the
# view is sorted by, and a bad mask's reason
TILE_TEXT = {"mislabeled": ("mistakenness",), "bad_masks": ("mask_mistakenness", "mask_reason"),
             "missing": ("confidence",), "search": ()}


def review_color_scheme(dataset: fo.Dataset) -> fo.ColorScheme:
    """The dataset's App colour scheme; one with a see-through mask opacity and a colour per label
    value is set first if the user has set none (a scheme the user chose is never replaced)."""
    if dataset.app_config.color_scheme is None:
        dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=REVIEW_OPACITY)
        dataset.save()
    return dataset.app_config.color_scheme


def heatmaps_look(companion: fo.Dataset) -> fo.ColorScheme:
    """The heatmaps dataset's look: the heatmap drawn clearly with a colour scale, and each tile showing
    its region's label and Dice; set once (what the user changes later is kept)."""
    if companion.app_config.color_scheme is None:
        companion.app_config.color_scheme = fo.ColorScheme(  # the App draws a heatmap in its colour scale only
            color_by="value", opacity=HEATMAP_OPACITY,       # when colouring by value (by field: one tint)
            colorscales=[{"path": "heatmap", "name": HEATMAP_COLORSCALE}])
        active = companion.app_config.active_fields or fo.ActiveFields(paths=["heatmap"])
        active.paths = list(dict.fromkeys(active.paths + ["label", "dice"]))
        companion.app_config.active_fields = active
        companion.save()
    return companion.app_config.color_scheme


def package_fields(dataset: fo.Dataset) -> list:
    """The sample fields the package's runs write (predictions, suggestions, derived regions)."""
    owned = [f for run in list_region_runs(dataset) for f in run.pred_fields + ([run.regions_field] if run.derived
                                                                              else [])]
    return [f for f in dict.fromkeys(owned) if dataset.has_sample_field(f)]


def group_package_fields(dataset: fo.Dataset) -> bool:
    """Put the fields the package's runs own (predictions, suggestions, derived regions) in one sidebar
    group named "maskinversion", so they are not mixed with the user's fields; returns whether the
    sidebar changed (the open App then needs to reload the dataset to show it)."""
    paths = package_fields(dataset)
    if not paths:
        return False
    groups = dataset.app_config.sidebar_groups or fo.DatasetAppConfig.default_sidebar_groups(dataset)
    mine = [g for g in groups if g.name == SIDEBAR_GROUP]
    if mine and mine[0].paths == paths and dataset.app_config.sidebar_groups:
        return False
    for group in groups:  # a field sits in one group only
        group.paths = [p for p in group.paths if p not in paths]
    if mine:
        mine[0].paths = paths
    else:
        groups.append(fo.SidebarGroupDocument(name=SIDEBAR_GROUP, paths=paths, expanded=True))
    dataset.app_config.sidebar_groups = groups
    dataset.save()
    return True


def tile_fields(view, kind: str, embeddings_field: str) -> list:
    """The App's active fields for a review view (a patches view of ``kind``, see :data:`TILE_TEXT`): its
    label fields (the region, and beside it the prediction in the mislabeled view), then the score the
    view is sorted by (and a bad mask's reason), each of which the App writes on every tile (a patch's
    label is one label, so its attributes are fields the grid can show)."""
    field = view.patches_field
    names = attribute_names(embeddings_field)
    labels = [name for name, f in view.get_field_schema().items()
              if isinstance(f, fo.EmbeddedDocumentField) and issubclass(f.document_type, fo.Label)]
    return list(dict.fromkeys([field, *labels, *(f"{field}.{names.get(key, key)}" for key in TILE_TEXT[kind])]))
