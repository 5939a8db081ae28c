"""How the views the package opens look in the App: masks drawn thin enough to see the object."""

from __future__ import annotations

import fiftyone as fo

REVIEW_OPACITY = 0.25  # the App's default (0.7) hides the colour that often defines the class


def review_color_scheme(dataset: fo.Dataset) -> fo.ColorScheme:
    """The dataset's App colour scheme; one with a see-through mask opacity and a colour per label
    value is set first if the user has set none (a scheme the user chose is never replaced)."""
    if dataset.app_config.color_scheme is None:
        dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=REVIEW_OPACITY)
        dataset.save()
    return dataset.app_config.color_scheme
