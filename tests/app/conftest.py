"""The App tests run the real App server against FiftyOne's own MongoDB, started here before fiftyone is imported."""

from ..helpers import configure_fiftyone

configure_fiftyone()
