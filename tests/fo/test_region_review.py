"""What the MaskInversion panel reads about one region: exactly what the runs stored, nothing computed
(issue 16, observations 3 and 5), and the picture it draws: a colour scale and the region as an outline
(observation 4)."""

import fiftyone as fo
import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo import heatmaps as heatmap_store
from fiftyone_maskinversion.fo import runs as run_store
from fiftyone_maskinversion.fo.appearance import HEATMAP_COLORSCALE
from fiftyone_maskinversion.fo.preview import SCALE_WIDTH, draw_region, outline
from fiftyone_maskinversion.fo.region_review import review_region
from fiftyone_maskinversion.fo.regions import region_mask

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    return coco_dataset


def first_embedded(dataset):
    return next(d for d in dataset.values("ground_truth.detections", unwind=True) if d.has_field("mi_embedding"))


def documents(dataset):
    return [s.to_dict() for s in dataset.iter_samples()]


def test_a_review_is_what_the_runs_stored_and_reading_it_writes_and_computes_nothing(embedded, tiny, monkeypatch):
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, top_k=3)
    region = first_embedded(embedded)
    before, companion = documents(embedded), mifo.heatmaps_dataset(embedded)
    heat_before = documents(companion)

    def no_model(*args, **kwargs):
        raise AssertionError("the review loaded a model")

    monkeypatch.setattr(run_store, "_cached_backbone", no_model)
    review = review_region(embedded, region.id)
    assert documents(embedded) == before and documents(companion) == heat_before  # read only

    assert (review.label, review.field, review.run.embeddings_field) == (region.label, "ground_truth", "mi_embedding")
    assert (review.dice, review.iou) == (region.mi_embedding_dice, region.mi_embedding_iou)
    assert review.predicted_label == region.mi_embedding_predicted_label
    assert review.topk == list(zip(region.mi_embedding_topk_labels, region.mi_embedding_topk_scores))
    assert len(review.topk) == 3 and review.mistakenness == region.mi_embedding_mistakenness
    stored = companion.match(fo.ViewField("source_label_id") == region.id).first().heatmap.get_map()
    np.testing.assert_array_equal(review.heatmap, stored)
    sample = embedded.select_labels(ids=[region.id]).first()
    np.testing.assert_array_equal(review.mask, region_mask(region, sample.metadata.width, sample.metadata.height))
    assert review.missing == ["find bad masks, for the mask mistakenness and its components"]


def test_mask_components_and_reason_are_every_attribute_the_review_declares(embedded):
    region = first_embedded(embedded)
    path = "ground_truth.detections"
    written = {"mi_embedding_mask_mistakenness": 0.8, "mi_embedding_mask_shift": 0.7, "mi_embedding_mask_area": 0.25,
               "mi_embedding_mask_reason": "shifted", "mi_embedding_maskish": 0.5}  # the last: not the review's
    for name, value in written.items():
        embedded.add_sample_field(f"{path}.{name}", fo.StringField if isinstance(value, str) else fo.FloatField)
        embedded.set_label_values(f"{path}.{name}", {region.id: value})
    review = review_region(embedded, region.id)
    assert review.mask_mistakenness == 0.8
    assert review.mask_components == {"shift": 0.7, "area": 0.25} and review.mask_reason == "shifted"


def _stored_regions(dataset):
    """The regions' documents as the database holds them (key order included), by id."""
    raw = dataset._sample_collection.find({}, {"ground_truth.detections": 1})
    return {str(d["_id"]): d for s in raw for d in s["ground_truth"]["detections"]}


def test_the_review_verdicts_are_stored_first_and_the_embedding_last(embedded, tiny):
    """Observation 3: the App's hover tooltip lists a label's attributes in stored order in a box 40% of the
    window high, and receives the embedding as a long base64 string; stored with the verdicts first and the
    embedding last, the mask mistakenness is among the first lines and the embedding the last."""
    old = first_embedded(embedded)
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, top_k=3)
    mifo.score_masks(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, suggest_missing=False)
    names = run_store.attribute_names("mi_embedding")
    assert set(run_store.TOOLTIP_ORDER) == set(names)  # every attribute a run writes has its place
    scored = 0
    for region_id, doc in _stored_regions(embedded).items():
        keys = list(doc)
        if names["embedding"] not in doc:
            continue
        ours = [k for k in keys if k in names.values()]
        assert keys[-len(ours):] == ours, keys  # the label's own attributes (label, iscrowd, ...) first
        assert ours[-1] == names["embedding"], keys
        if names["mask_mistakenness"] in doc:
            scored += 1
            assert ours.index(names["mask_mistakenness"]) < ours.index(names["topk_labels"]), keys
            assert ours.index(names["mistakenness"]) == 0, keys
    assert scored > 0
    region = first_embedded(embedded)  # the reordered label is the same label: id, values, embedding
    assert region.id == old.id and region.label == old.label and region.bounding_box == old.bounding_box
    np.testing.assert_array_equal(region.mask, old.mask)
    np.testing.assert_array_equal(region.mi_embedding, old.mi_embedding)

    applied = mifo.apply_relabel(embedded, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert applied.changed
    changed = _stored_regions(embedded)[next(iter(applied.changed))]
    assert list(changed)[-1] == names["embedding"], list(changed)  # the relabel history goes before it too


def test_review_fields_are_named_role_first_and_a_run_keeps_its_earlier_names(embedded, tiny):
    """Observation 10: "<field>_<embeddings>_relabel" and "..._missing" looked alike in the App's sidebar,
    which cuts names at about 27 characters; the defaults now start with the role. A run that wrote the
    earlier names keeps finding them without being told."""
    from fiftyone_maskinversion import defaults

    names = [template.format(label_field="ground_truth", embeddings_field="mi_embedding")
             for template in (defaults.PRED_FIELD, defaults.MISSING_FIELD)]
    assert names[0][:8] != names[1][:8]  # told apart by their first word
    earlier = ("ground_truth_mi_embedding_relabel", "ground_truth_mi_embedding_missing")
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, pred_field=earlier[0])
    mifo.score_masks(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, missing_field=earlier[1],
                     min_missing_score=0.0, confirmation=0.0)
    assert len(mifo.find_mislabeled(embedded, "ground_truth")) > 0  # the run's own field, found by default
    assert mifo.find_missing_regions(embedded, "ground_truth").patches_field == earlier[1]
    assert not any(embedded.has_sample_field(n) for n in names)


def test_what_is_missing_says_what_to_run(embedded):
    region = first_embedded(embedded)
    assert review_region(embedded, region.id).missing == [
        "zero-shot relabel, for the predicted label, top-k and class mistakenness",
        "find bad masks, for the mask mistakenness and its components"]
    heatmap_store.forget_region_samples(mifo.heatmaps_dataset(embedded), "ground_truth", "mi_embedding", [region.id])
    review = review_region(embedded, region.id)
    assert review.heatmap is None
    assert review.missing[0] == "compute region embeddings again: this region's heatmap is missing"
    with pytest.raises(ValueError, match="no region"):
        review_region(embedded, "0" * 24)


def test_a_run_without_heatmaps_says_so_and_file_heatmaps_are_read_from_their_files(coco_dataset, tiny, tmp_path):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, heatmaps="none")
    region = first_embedded(coco_dataset)
    review = review_region(coco_dataset, region.id)
    assert review.heatmap is None
    assert review.missing[0] == ("compute region embeddings with heatmaps kept ('database' or 'files'): "
                                 "this run keeps none")
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, heatmaps="files",
                                   heatmaps_dir=str(tmp_path), embeddings_field="mi_files")
    review = review_region(coco_dataset, region.id, embeddings_field="mi_files")
    stored = mifo.heatmaps_dataset(coco_dataset).match(fo.ViewField("source_label_id") == region.id).first().heatmap
    assert stored.map is None and stored.map_path.startswith(str(tmp_path))
    np.testing.assert_array_equal(review.heatmap, np.asarray(Image.open(stored.map_path)))
    assert not any("heatmap" in step for step in review.missing)


def test_outline_is_the_masks_border_ring():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 5:25] = True  # 10 x 20
    ring = outline(mask, thickness=2) > 0
    assert ring.sum() == 10 * 20 - 6 * 16  # hand count: the rectangle less its interior shrunk by 2 a side
    assert not (ring & ~mask).any() and ring[5, 5:25].all() and not ring[8:12, 8:22].any()


def test_the_panel_picture_draws_a_colour_scale_and_the_region_outline(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((60, 80, 3), 100, dtype=np.uint8)).save(path)
    heat = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (60, 1))  # dark left, bright right
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:40, 30:60] = True
    picture = np.asarray(draw_region(str(path), heat, mask, "", height=60)).astype(int)
    assert picture.shape == (60, 80 + SCALE_WIDTH, 3)
    colormap = colormaps[HEATMAP_COLORSCALE]
    top, bottom = (np.round(np.array(colormap(v)[:3]) * 255) for v in (1.0, 0.0))
    # the scale: the colour of 1 at the top, of 0 at the bottom (PNG rounding: within 1 of a level)
    assert np.abs(picture[0, 80 + 8] - top).max() <= 1 and np.abs(picture[59, 80 + 8] - bottom).max() <= 1
    assert (picture[20, 30:60] == 255).all() and (picture[39, 30:60] == 255).all()  # the outline, white
    inside, outside = picture[30, 45], picture[5, 45]
    assert not (inside == 255).all() and np.abs(inside - outside).max() <= 2  # the inside is not painted over
