"""Review on the ground-truth field: the bad-mask finder, suggested missing regions, the mislabeled view
(annotation beside prediction, low-fidelity regions flagged) and a region's heatmaps, with the follow-ups a
user does next (rescore, recompute, delete, rename)."""

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import MaskInverter, defaults
from fiftyone_maskinversion.core.badmask import review_masks
from fiftyone_maskinversion.core.zeroshot import class_embeddings
from fiftyone_maskinversion.fo.appearance import REVIEW_OPACITY, review_color_scheme
from fiftyone_maskinversion.fo.heatmaps import region_heatmaps_view, source_dataset
from fiftyone_maskinversion.fo.regions import region_mask
from fiftyone_maskinversion.fo.runs import find_run

pytestmark = pytest.mark.slow
SINGLE = "a photo of a {}."
SCORE = "mi_embedding_mask_mistakenness"
MISSING = "missing_ground_truth_mi_embedding"


@pytest.fixture
def embedded(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    return coco_dataset


def ground_truth_snapshot(dataset):
    """Everything the annotator wrote: label, box, mask bytes, crowd flag, per region id."""
    return {d.id: (d.label, list(d.bounding_box), d.mask.tobytes() if d.mask is not None else None, d.iscrowd)
            for d in dataset.values("ground_truth.detections", unwind=True)}


def test_mask_scores_are_the_core_review_of_each_sample_and_labels_stay(embedded, tiny):
    before = ground_truth_snapshot(embedded)
    summary = mifo.score_masks(embedded, "ground_truth", prompt=SINGLE, min_missing_score=0.0, confirmation=0.0,
                               backbone=tiny)
    embedded_ids = set(embedded.filter_labels("ground_truth", F("mi_embedding").exists()).values(
        "ground_truth.detections.id", unwind=True))
    assert summary.scored == len(embedded_ids) and not summary.failed
    assert ground_truth_snapshot(embedded) == before  # only the run's own attributes were added
    assert isinstance(embedded.get_field(f"ground_truth.detections.{SCORE}"), fo.FloatField)

    classes = sorted(embedded.distinct("ground_truth.detections.label"))
    text = class_embeddings(tiny, classes, [SINGLE])
    settings = find_run(embedded, "ground_truth", "mi_embedding").settings
    inverter = MaskInverter(tiny, iterations=settings["iterations"], blocks=settings["blocks"])  # the run's own
    for sample in embedded:
        regions = sample.ground_truth.detections
        masks = [region_mask(r, sample.metadata.width, sample.metadata.height) for r in regions]
        dice = [r.mi_embedding_dice if r.id in embedded_ids else np.nan for r in regions]
        expected = review_masks(tiny, sample.filepath, masks, [classes.index(r.label) for r in regions], text,
                                np.array(dice, dtype=float), blocks=settings["blocks"], min_missing_score=0.0,
                                inverter=inverter, confirmation=0.0)
        for region, score in zip(regions, expected.mask_mistakenness):
            stored = region.get_attribute_value(SCORE, None)
            assert (stored is None) if region.id not in embedded_ids else stored == pytest.approx(score, abs=1e-6)
        stored_missing = sample[MISSING].detections
        assert [(m.label, m.confidence, m.confirmation) for m in stored_missing] == [
            (classes[m.class_index], pytest.approx(m.score), pytest.approx(m.confirmation, abs=1e-5))
            for m in expected.missing]

    view = mifo.find_bad_masks(embedded, "ground_truth")
    scores = view.values(f"ground_truth.{SCORE}")
    assert len(scores) == len(embedded_ids) and scores == sorted(scores, reverse=True)
    suggestions = mifo.find_missing_regions(embedded, "ground_truth")
    assert len(suggestions) == summary.suggested > 0
    confidences = suggestions.values(f"{MISSING}.confidence")
    assert confidences == sorted(confidences, reverse=True)

    again = mifo.score_masks(embedded, "ground_truth", prompt=SINGLE, min_missing_score=0.0, confirmation=0.0,
                             backbone=tiny)
    assert again.scored == 0 and again.skipped_scored == len(embedded_ids)
    named = sorted(set(embedded.distinct("ground_truth.detections.label")), reverse=True)  # the same vocabulary
    again = mifo.score_masks(embedded, "ground_truth", classes=named, prompt=SINGLE, min_missing_score=0.0,
                             confirmation=0.0, backbone=tiny)  # named, as the demo does: the same review
    assert again.scored == 0 and again.skipped_scored == len(embedded_ids)
    with pytest.raises(ValueError, match=r"other settings \{'min_missing_score': \(0.0, 0.1\)"):
        mifo.score_masks(embedded, "ground_truth", prompt=SINGLE, min_missing_score=0.1, confirmation=0.0,
                         backbone=tiny)  # arguments that could not take effect are refused, not ignored


def test_a_recompute_clears_the_reviews_of_the_old_embeddings_and_delete_removes_them(embedded, tiny):
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt=SINGLE, backbone=tiny)
    mifo.score_masks(embedded, "ground_truth", prompt=SINGLE, backbone=tiny)
    review_names = [SCORE, "mi_embedding_predicted_label", "mi_embedding_mistakenness", "mi_embedding_low_fidelity"]
    for name in review_names:
        assert embedded.count(f"ground_truth.detections.{name}") > 0
    mifo.compute_region_embeddings(embedded, "ground_truth", backbone=tiny, iterations=3, overwrite=True)
    for name in review_names:  # they described embeddings that no longer exist
        assert embedded.count(f"ground_truth.detections.{name}") == 0, name
    assert len(mifo.find_bad_masks(embedded, "ground_truth")) == 0  # it only reads: nothing is scored now
    mifo.score_masks(embedded, "ground_truth", prompt=SINGLE, backbone=tiny)  # rescores what is missing
    view = mifo.find_bad_masks(embedded, "ground_truth")
    assert len(view) == embedded.count("ground_truth.detections.mi_embedding")

    run = find_run(embedded, "ground_truth", "mi_embedding")
    assert MISSING in run.pred_fields
    deleted = mifo.delete_region_results(embedded, "ground_truth")
    assert MISSING in deleted["pred_fields"] and not embedded.has_sample_field(MISSING)
    assert not embedded.has_field(f"ground_truth.detections.{SCORE}")


def test_bad_arguments_and_foreign_fields_are_refused_before_writing(embedded, tiny):
    embedded.add_sample_field("notes", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    for kwargs, message in (({"missing_field": "notes"}, "no MaskInversion run wrote"),
                            ({"missing_field": "ground_truth"}, "holds its regions field"),
                            ({"min_missing_score": 2}, "min_missing_score"),
                            ({"confirmation": -0.1}, "confirmation"),
                            ({"prompt": "no placeholder"}, "must contain")):
        with pytest.raises(ValueError, match=message):
            mifo.score_masks(embedded, "ground_truth", backbone=tiny, **kwargs)
    assert embedded.count(f"ground_truth.detections.{SCORE}") == 0 and not embedded.has_sample_field(MISSING)
    with pytest.raises(ValueError, match="run score_masks first"):
        mifo.find_missing_regions(embedded, "ground_truth")


def test_the_mislabeled_view_shows_annotation_and_prediction_and_flags_low_fidelity(embedded, tiny):
    sample = embedded.first()
    weak, good = sample.ground_truth.detections[:2]
    weak["mi_embedding_dice"], good["mi_embedding_dice"] = 0.01, 0.9  # one inversion that did not match its mask
    sample.save()
    summary = mifo.zero_shot_relabel(embedded, "ground_truth", prompt=SINGLE, backbone=tiny)
    regions = embedded.filter_labels("ground_truth", F("mi_embedding").exists()).values(
        "ground_truth.detections", unwind=True)
    low = {r.id for r in regions if r.mi_embedding_dice < defaults.MIN_FIDELITY}
    flagged = embedded.filter_labels("ground_truth", F("mi_embedding_low_fidelity") == True)  # noqa: E712
    assert set(flagged.values("ground_truth.detections.id", unwind=True)) == low
    assert weak.id in low and good.id not in low

    view = mifo.find_mislabeled(embedded, "ground_truth")
    assert len(view) == summary.regions - len(low) and not low & set(view.values("ground_truth.id"))
    scores = view.values("ground_truth.mi_embedding_mistakenness")
    assert scores == sorted(scores, reverse=True)
    for patch in view:
        predictions = patch[summary.pred_field].detections
        assert len(predictions) == 1  # the region's own prediction, beside the annotation
        assert predictions[0].source_label_id == patch.ground_truth.id
        assert predictions[0].gt_label == patch.ground_truth.label
        assert predictions[0].label == patch.ground_truth.mi_embedding_predicted_label
    assert len(mifo.find_mislabeled(embedded, "ground_truth", include_low_fidelity=True)) == summary.regions


def test_a_regions_heatmaps_and_back_survive_a_rename(embedded):
    label = embedded.first().ground_truth.detections[0]
    sample_id = embedded.skip(1).first().id
    view = region_heatmaps_view(embedded, label_ids=[label.id])
    assert view.values("source_label_id") == [label.id]
    whole = region_heatmaps_view(embedded, sample_ids=[sample_id])
    assert set(whole.values("source_sample_id")) == {sample_id}
    assert len(whole) == embedded.select(sample_id).count("ground_truth.detections.mi_embedding")
    embedded.name = f"{embedded.name}-renamed"
    companion = mifo.heatmaps_dataset(embedded)
    assert source_dataset(companion).name == embedded.name
    assert source_dataset(embedded) is None
    with pytest.raises(ValueError, match="no MaskInversion heatmaps"):
        region_heatmaps_view(fo.Dataset(), label_ids=[str(ObjectId())])


def test_the_review_colour_scheme_never_replaces_the_users(coco_dataset):
    scheme = review_color_scheme(coco_dataset)
    assert scheme.opacity == REVIEW_OPACITY and coco_dataset.reload() is None
    assert coco_dataset.app_config.color_scheme.opacity == REVIEW_OPACITY
    coco_dataset.app_config.color_scheme = fo.ColorScheme(opacity=0.9)
    coco_dataset.save()
    assert review_color_scheme(coco_dataset).opacity == 0.9
