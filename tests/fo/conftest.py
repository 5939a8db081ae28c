"""The FiftyOne layer's tests run against FiftyOne's own MongoDB, started here before fiftyone is imported."""

from ..helpers import configure_fiftyone

configure_fiftyone()

import pytest  # noqa: E402

from ..helpers import delete_with_heatmaps, load_coco  # noqa: E402


@pytest.fixture
def coco_dataset():
    dataset = load_coco(4)
    yield dataset
    delete_with_heatmaps(dataset)
