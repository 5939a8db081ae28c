"""The state runs leave behind: run identity, resumes, validation before writing, name collisions, random
weights, search freshness, heatmaps that follow their dataset. Each test is a follow-up a user does next."""

import logging

import fiftyone as fo
import numpy as np
from bson import ObjectId
import pytest
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import MaskInverter
from fiftyone_maskinversion.fo.regions import region_mask
from fiftyone_maskinversion.fo.runs import backbone_for, find_run

from ..helpers import Interrupted, interrupt_after, make_backbone

pytestmark = pytest.mark.slow
SINGLE = "a photo of a {}."


def non_crowd_ids(dataset, field="ground_truth"):
    return set(dataset.filter_labels(field, F("iscrowd") != 1).values(f"{field}.detections.id", unwind=True))


def heatmap_ids(dataset, embeddings_field="mi_embedding", field="ground_truth"):
    companion = mifo.heatmaps_dataset(dataset)
    if companion is None:
        return []
    view = companion.match((F("embeddings_field") == embeddings_field) & (F("source_field") == field))
    return view.values("source_label_id")


def label_attr(dataset, label_id, name, field="ground_truth"):
    view = dataset.filter_labels(field, F("_id") == ObjectId(label_id))
    return view.first()[field].detections[0].get_attribute_value(name, None)


@pytest.fixture
def semantic(coco_dataset):
    """A Segmentation field 'semantic' of the COCO instances; one class left out of the mask targets."""
    import fiftyone.utils.labels as foul

    classes = coco_dataset.distinct("ground_truth.detections.label")
    targets = {i + 1: c for i, c in enumerate(classes)}
    foul.objects_to_segmentations(coco_dataset, "ground_truth", "semantic", mask_targets=targets)
    unnamed = 1  # the value of classes[0]: the dataset's targets will not name it
    coco_dataset.mask_targets = {"semantic": {v: c for v, c in targets.items() if v != unnamed}}
    coco_dataset.save()
    return coco_dataset, targets, unnamed


def test_a_segmentation_field_is_used_by_its_own_name_everywhere(semantic, tiny, caplog):
    dataset, targets, unnamed = semantic
    with caplog.at_level(logging.WARNING):
        summary = mifo.compute_region_embeddings(dataset, "semantic", backbone=tiny, iterations=2)
    assert (summary.label_field, summary.regions_field) == ("semantic", "semantic_regions")
    assert "semantic_regions.mi_embedding" in summary.describe()
    # a value missing from the mask targets is a region named by its value, with a warning naming it
    with_unnamed = [s for s in dataset if unnamed in np.unique(s.semantic.get_mask())]
    assert with_unnamed and "not in the mask targets" in caplog.text and f"[{unnamed}]" in caplog.text
    for sample in with_unnamed:
        assert str(unnamed) in {d.label for d in sample.semantic_regions.detections}

    relabel = mifo.zero_shot_relabel(dataset, "semantic", prompt=SINGLE, backbone=tiny)
    assert relabel.pred_field == "relabel_semantic_mi_embedding"
    assert relabel.regions == dataset.count("semantic_regions.detections.mi_embedding")
    assert len(mifo.find_mislabeled(dataset, "semantic", include_low_fidelity=True)) == relabel.regions
    assert len(mifo.search_regions(dataset, "semantic", text="a dog", k=3, backbone=tiny)) == 3
    changed = mifo.apply_relabel(dataset, "semantic", threshold=0.0, include_low_fidelity=True).count
    assert changed == dataset.count("semantic_regions.detections.mi_embedding_relabel_to")
    assert mifo.undo_relabel(dataset, "semantic").count == changed
    deleted = mifo.delete_region_results(dataset, "semantic")
    assert deleted["regions_field"] == "semantic_regions" and not dataset.has_sample_field("semantic_regions")
    assert deleted["pred_fields"] == ["relabel_semantic_mi_embedding"] and dataset.list_runs() == []
    assert dataset.has_sample_field("semantic")  # the user's own field stays


def test_two_embeddings_families_on_one_field_keep_their_own_outputs(coco_dataset, tiny):
    expected = non_crowd_ids(coco_dataset)
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    first_heatmaps = mifo.heatmaps_dataset(coco_dataset).match(F("embeddings_field") == "mi_embedding")
    first_maps = {s.source_label_id: s.heatmap.map.copy() for s in first_heatmaps}
    other = make_backbone(seed=5)
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=other, iterations=3,
                                   embeddings_field="mi_b")
    assert sorted(heatmap_ids(coco_dataset)) == sorted(expected) == sorted(heatmap_ids(coco_dataset, "mi_b"))
    for sample in mifo.heatmaps_dataset(coco_dataset).match(F("embeddings_field") == "mi_embedding"):
        assert np.array_equal(sample.heatmap.map, first_maps[sample.source_label_id])  # not replaced by mi_b's
    assert {r.embeddings_field for r in mifo.list_region_runs(coco_dataset)} == {"mi_embedding", "mi_b"}

    deleted = mifo.delete_region_results(coco_dataset, "ground_truth", "mi_b")
    assert deleted["heatmaps"] == len(expected) and deleted["pred_fields"] == []
    assert sorted(heatmap_ids(coco_dataset)) == sorted(expected)  # the other family's heatmaps stay
    assert coco_dataset.has_sample_field("relabel_ground_truth_mi_embedding")
    assert coco_dataset.count("ground_truth.detections.mi_embedding") == len(expected)
    assert not coco_dataset.has_field("ground_truth.detections.mi_b")
    assert [r.embeddings_field for r in mifo.list_region_runs(coco_dataset)] == ["mi_embedding"]


def test_a_killed_overwrite_run_resumes_exactly_the_stale_regions(coco_dataset, tiny):
    total = len(non_crowd_ids(coco_dataset))
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    with pytest.raises(Interrupted):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=3, overwrite=True,
                                       batch_size=1, progress=interrupt_after(2))
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    done = coco_dataset.count_values("ground_truth.detections.mi_embedding_run").get(run.stamp)
    assert 0 < done < total
    resumed = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=3)
    assert (resumed.skipped_existing, resumed.computed, resumed.recomputed_stale) == (done, total - done, total - done)
    runs = coco_dataset.count_values("ground_truth.detections.mi_embedding_run")
    assert runs.get(run.stamp) == total and set(runs) <= {run.stamp, None}  # None: crowd regions
    sample = coco_dataset.last()  # processed after the kill: must hold the iterations=3 embedding
    dets = [d for d in sample.ground_truth.detections if not d.iscrowd]
    width, height = sample.metadata.width, sample.metadata.height
    direct = MaskInverter(tiny, iterations=3).invert(sample.filepath, [region_mask(d, width, height) for d in dets])
    for k, det in enumerate(dets):
        np.testing.assert_allclose(det.mi_embedding, direct.embeddings[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"iterations": -1}, {"alpha": float("inf")},
                                 {"embeddings_field": "a.b"}, {"embeddings_field": "_hidden"},
                                 {"batch_size": 0}, {"shard": (3, 2)}, {"blocks": [7]}])
def test_bad_arguments_write_nothing_and_the_corrected_run_starts(coco_dataset, tiny, bad):
    fields_before = set(coco_dataset.get_field_schema(flat=True))
    with pytest.raises(ValueError):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, **{"iterations": 2, **bad})
    assert coco_dataset.list_runs() == [] and set(coco_dataset.get_field_schema(flat=True)) == fields_before
    assert mifo.heatmaps_dataset(coco_dataset) is None
    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    assert summary.computed == len(non_crowd_ids(coco_dataset))


@pytest.mark.parametrize("name", ["mask", "label", "bounding_box", "iscrowd", "tags", "confidence", "note"])
def test_embeddings_field_never_overwrites_label_data(coco_dataset, tiny, name):
    sample = coco_dataset.first()
    sample.ground_truth.detections[0]["note"] = "an annotator's note"  # an undeclared attribute
    sample.save()
    masks_before = [d.mask.copy() for d in sample.ground_truth.detections]
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="embeddings_field|already hold"):
            mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2,
                                           embeddings_field=name, overwrite=overwrite)
    sample.reload()
    assert all(np.array_equal(a, d.mask) for a, d in zip(masks_before, sample.ground_truth.detections))
    assert sample.ground_truth.detections[0].note == "an annotator's note" and coco_dataset.list_runs() == []


def test_a_name_another_run_writes_is_refused(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2, embeddings_field="x")
    with pytest.raises(ValueError, match="belongs to the MaskInversion run of embeddings 'x'"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2,
                                       embeddings_field="x_dice", overwrite=True)
    with pytest.raises(ValueError, match="holds its regions field"):
        mifo.zero_shot_relabel(coco_dataset, "ground_truth", "x", pred_field="ground_truth", overwrite=True,
                               backbone=tiny)
    assert coco_dataset.count("ground_truth.detections") > 0 and coco_dataset.count("ground_truth.detections.x_dice")


def test_random_weights_are_one_model_or_refused(coco_dataset, tiny):
    with pytest.raises(ValueError, match="random weights"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", model_name="mi-test-tiny", pretrained=None,
                                       image_size=64)
    assert coco_dataset.list_runs() == []
    first = coco_dataset.limit(2)
    mifo.compute_region_embeddings(first, "ground_truth", backbone=tiny, iterations=2)
    other = make_backbone(seed=1)  # same architecture and size, other weights
    with pytest.raises(ValueError, match="other settings .*weights_id"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=other, iterations=2)
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    with pytest.raises(ValueError, match="weights_id"):
        backbone_for(run, other)
    with pytest.raises(ValueError, match="cannot be reloaded"):
        mifo.zero_shot_relabel(coco_dataset, "ground_truth")
    assert backbone_for(run, make_backbone(seed=0)) is not None  # equal weights are accepted


def test_search_sees_every_region_computed_since_and_ranks_by_cosine(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset.limit(2), "ground_truth", backbone=tiny, iterations=2)
    mifo.build_region_index(coco_dataset, "ground_truth")
    mifo.visualize_regions(coco_dataset, "ground_truth", method="pca")
    owned = sorted(coco_dataset.list_brain_runs())
    record = find_run(coco_dataset, "ground_truth", "mi_embedding")
    assert owned == sorted([record.brain_key, record.visualization_key])
    first = mifo.search_regions(coco_dataset, "ground_truth", text="a dog", k=1000, backbone=tiny)
    assert len(first) == coco_dataset.count("ground_truth.detections.mi_embedding")
    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    assert summary.outdated_brain_runs == [record.visualization_key]  # a layout cannot take recomputed points
    assert coco_dataset.list_brain_runs() == [record.brain_key]  # the index was kept current, not deleted
    index = coco_dataset.load_brain_results(record.brain_key)
    assert summary.index_updated == summary.computed and set(index.label_ids) == non_crowd_ids(coco_dataset)
    everything = mifo.search_regions(coco_dataset, "ground_truth", text="a dog", k=1000, backbone=tiny)
    assert len(everything) == len(non_crowd_ids(coco_dataset)) > len(first)
    by_index = coco_dataset.to_patches("ground_truth").sort_by_similarity(
        tiny.encode_text(["a dog"])[0].numpy(), k=1000, brain_key=record.brain_key)
    assert by_index.values("id") == everything.values("id")  # the index ranks the new regions too
    _, ranked = mifo.rank_regions(coco_dataset, "ground_truth", text="a dog", k=1000, backbone=tiny)
    query = tiny.encode_text(["a dog"])[0].numpy()
    for label_id, score in ranked:
        emb = label_attr(coco_dataset, label_id, "mi_embedding")
        assert score == pytest.approx(float(emb @ query / np.linalg.norm(emb)), abs=1e-5)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert everything.values("ground_truth.id") == [i for i, _ in ranked]
    crowd = coco_dataset.filter_labels("ground_truth", F("iscrowd") == 1).values("ground_truth.detections.id",
                                                                                  unwind=True)
    with pytest.raises(ValueError, match="has no embedding"):
        mifo.search_regions(coco_dataset, "ground_truth", region_id=crowd[0] if crowd else "0" * 24)


def test_heatmaps_follow_rename_clone_and_delete(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    expected = sorted(heatmap_ids(coco_dataset))
    coco_dataset.name = coco_dataset.name + "-renamed"
    assert sorted(heatmap_ids(coco_dataset)) == expected

    for clone in (coco_dataset.clone(), coco_dataset.limit(2).clone()):  # a dataset clone, a view clone
        try:
            clone_ids = non_crowd_ids(clone)
            if not clone.list_runs():  # a view clone copies labels, not runs: a follow-up says how to adopt them
                with pytest.raises(ValueError, match=f"labels hold embeddings of a run of dataset "
                                                     f"'{coco_dataset.name}'.*adopt_region_runs"):
                    mifo.zero_shot_relabel(clone, "ground_truth", prompt=SINGLE, backbone=tiny)
            assert heatmap_ids(clone) == []  # queries copy nothing
            assert len(mifo.adopt_region_runs(clone)) == 1 and mifo.adopt_region_runs(clone) == []
            assert sorted(heatmap_ids(clone)) == sorted(clone_ids)
            mifo.zero_shot_relabel(clone, "ground_truth", prompt=SINGLE, backbone=tiny)
            assert mifo.heatmaps_dataset(clone).name != mifo.heatmaps_dataset(coco_dataset).name
            again = mifo.compute_region_embeddings(clone, "ground_truth", backbone=tiny, iterations=2)
            assert again.computed == 0 and again.skipped_existing == len(clone_ids)  # the same run, resumed
            mifo.delete_region_results(clone, "ground_truth")
            assert sorted(heatmap_ids(coco_dataset)) == expected  # the original's heatmaps are untouched
        finally:
            clone.delete()
    name = mifo.heatmaps_dataset(coco_dataset).name
    orphan = fo.Dataset()
    orphan_companion = mifo.heatmaps_dataset(orphan, create=True).name
    orphan.delete()
    assert orphan_companion in mifo.delete_orphaned_heatmaps() and not fo.dataset_exists(orphan_companion)
    assert fo.dataset_exists(name)  # a live dataset's companion stays


def test_a_renamed_label_field_is_refused_with_the_way_back_and_nothing_written(coco_dataset, tiny):
    """A run does not follow a field rename (FiftyOne's brain runs do not either): every follow-up on
    the new name says so before writing anything, and renaming back restores the run."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    coco_dataset.rename_sample_field("ground_truth", "gt")
    fields = set(coco_dataset.get_field_schema(flat=True))
    for follow_up in (lambda: mifo.zero_shot_relabel(coco_dataset, "gt", prompt=SINGLE, backbone=tiny),
                      lambda: mifo.search_regions(coco_dataset, "gt", text="a dog", backbone=tiny),
                      lambda: mifo.score_masks(coco_dataset, "gt", backbone=tiny)):
        with pytest.raises(ValueError, match=r"\['ground_truth'\] no longer exists.*rename the field back"):
            follow_up()
    assert set(coco_dataset.get_field_schema(flat=True)) == fields
    coco_dataset.rename_sample_field("gt", "ground_truth")
    assert len(mifo.search_regions(coco_dataset, "ground_truth", text="a dog", k=3, backbone=tiny)) == 3


def test_a_failed_overwrite_removes_the_old_heatmap(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    sample = coco_dataset.first()
    det = next(d for d in sample.ground_truth.detections if not d.iscrowd)
    det.mask = np.zeros_like(det.mask)  # the region now has an empty mask
    sample.save()
    assert det.id in heatmap_ids(coco_dataset)
    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2, overwrite=True)
    assert [label_id for _, label_id, _ in summary.failed] == [det.id]
    assert det.id not in heatmap_ids(coco_dataset) and label_attr(coco_dataset, det.id, "mi_embedding") is None


def test_relabels_reach_the_heatmaps_companion(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    assert mifo.apply_relabel(coco_dataset, "ground_truth", threshold=0.0, include_low_fidelity=True).count > 0
    current = dict(zip(coco_dataset.values("ground_truth.detections.id", unwind=True),
                       coco_dataset.values("ground_truth.detections.label", unwind=True)))
    for sample in mifo.heatmaps_dataset(coco_dataset):
        assert sample.label == sample.ground_truth.detections[0].label == current[sample.source_label_id]
    mifo.undo_relabel(coco_dataset, "ground_truth")
    restored = dict(zip(coco_dataset.values("ground_truth.detections.id", unwind=True),
                        coco_dataset.values("ground_truth.detections.label", unwind=True)))
    assert all(s.label == restored[s.source_label_id] for s in mifo.heatmaps_dataset(coco_dataset))


def test_zero_area_polygons_are_reported(coco_dataset, tiny):
    sample = coco_dataset.first()
    sample["polys"] = fo.Polylines(polylines=[
        fo.Polyline(label="line", points=[[(0.1, 0.1), (0.5, 0.5), (0.9, 0.9)]], closed=True, filled=True),
        fo.Polyline(label="dot", points=[[(0.3, 0.3), (0.3, 0.3), (0.3, 0.3)]]),
        fo.Polyline(label="square", points=[[(0.1, 0.1), (0.4, 0.1), (0.4, 0.4), (0.1, 0.4)]]),
    ])
    sample.save()
    summary = mifo.compute_region_embeddings(coco_dataset, "polys", backbone=tiny, iterations=2)
    reasons = {label_id: reason for _, label_id, reason in summary.failed}
    line, dot, square = sample.polys.polylines
    assert "encloses no area" in reasons[line.id] and "encloses no area" in reasons[dot.id]
    assert summary.computed == 1 and square.id not in reasons


def test_runs_whose_names_collide_keep_separate_records(coco_dataset, tiny):
    for s in coco_dataset.iter_samples(autosave=True):
        s["gt"], s["gt_x"] = s.ground_truth.copy(), s.ground_truth.copy()
    # ("gt_x", "y_z") and ("gt", "x_y_z") sanitise to the same readable key
    first = mifo.compute_region_embeddings(coco_dataset.limit(1), "gt_x", backbone=tiny, iterations=1,
                                           embeddings_field="y_z")
    second = mifo.compute_region_embeddings(coco_dataset.limit(1), "gt", backbone=tiny, iterations=2,
                                            embeddings_field="x_y_z")
    assert first.computed and second.computed
    assert sorted(coco_dataset.list_runs()) == ["maskinversion_gt_x_y_z", "maskinversion_gt_x_y_z_2"]
    runs = {(r.label_field, r.embeddings_field): r for r in mifo.list_region_runs(coco_dataset)}
    assert runs[("gt_x", "y_z")].settings["iterations"] == 1 and runs[("gt", "x_y_z")].settings["iterations"] == 2
    again = mifo.compute_region_embeddings(coco_dataset.limit(1), "gt", backbone=tiny, iterations=2,
                                           embeddings_field="x_y_z")
    assert again.computed == 0 and again.skipped_existing == second.computed  # found by its pair, not its key
    mifo.delete_region_results(coco_dataset, "gt_x", "y_z")
    assert [(r.label_field, r.embeddings_field) for r in mifo.list_region_runs(coco_dataset)] == [("gt", "x_y_z")]


def test_a_prediction_field_of_another_run_is_not_applied(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, embeddings_field="mi_b")
    other = mifo.zero_shot_relabel(coco_dataset, "ground_truth", "mi_b", prompt=SINGLE, backbone=tiny)
    with pytest.raises(ValueError, match="no predictions"):
        mifo.apply_relabel(coco_dataset, "ground_truth", pred_field=other.pred_field, threshold=0.0)
    with pytest.raises(ValueError, match="belongs to the MaskInversion run of embeddings 'mi_b'"):
        mifo.zero_shot_relabel(coco_dataset, "ground_truth", pred_field=other.pred_field, overwrite=True,
                               backbone=tiny)
    assert coco_dataset.count("ground_truth.detections.mi_embedding_relabel_to") == 0


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_a_layout_of_the_current_regions_for_the_embeddings_panel(coco_dataset, tiny, method):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    results = mifo.visualize_regions(coco_dataset, "ground_truth", method=method)
    embedded = non_crowd_ids(coco_dataset)
    assert results.config.method == method and results.config.patches_field == "ground_truth"
    assert results.current_points.shape == (len(embedded), 2) and np.isfinite(results.current_points).all()
    assert set(results.current_label_ids) == embedded  # one point per embedded region, crowd regions excluded
    if method == "pca":  # independent check: PCA of the stored embeddings, up to each axis' sign
        ids = list(results.current_label_ids)
        vectors = np.stack([label_attr(coco_dataset, i, "mi_embedding") for i in ids])
        centred = vectors - vectors.mean(axis=0)
        expected = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
        np.testing.assert_allclose(np.abs(results.current_points), np.abs(expected), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="pass overwrite=True"):
        mifo.visualize_regions(coco_dataset, "ground_truth", method=method)
    deleted = mifo.delete_region_results(coco_dataset, "ground_truth")
    assert deleted["brain_runs"] == ["maskinversion_ground_truth_mi_embedding_viz"]
    assert coco_dataset.list_brain_runs() == []


def test_relabel_review_attributes_land_on_the_field_itself_and_nothing_else_changes(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    before = {d.id: (d.label, d.bounding_box, d.iscrowd) for d in coco_dataset.values("ground_truth.detections",
                                                                                       unwind=True)}
    summary = mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny, top_k=3)
    predictions = {p.source_label_id: p for p in coco_dataset.values(f"{summary.pred_field}.detections", unwind=True)}
    after = coco_dataset.values("ground_truth.detections", unwind=True)
    assert {d.id: (d.label, d.bounding_box, d.iscrowd) for d in after} == before  # every region kept, labels too
    for region in after:
        prediction = predictions.get(region.id)
        if prediction is None:  # crowd regions have no embedding, so no review attributes
            assert region.iscrowd and region.get_attribute_value("mi_embedding_predicted_label", None) is None
            continue
        assert region.mi_embedding_predicted_label == prediction.label
        assert region.mi_embedding_topk_labels == prediction.topk_labels and len(region.mi_embedding_topk_scores) == 3
        assert region.mi_embedding_mistakenness == pytest.approx(prediction.mistakenness)
    assert isinstance(coco_dataset.get_field("ground_truth.detections.mi_embedding_mistakenness"), fo.FloatField)
    # on a view that filters the labels, the hidden regions are not touched either
    person = coco_dataset.filter_labels("ground_truth", F("label") == "person")
    mifo.zero_shot_relabel(person, "ground_truth", prompt=SINGLE, backbone=tiny, overwrite=True)
    assert {d.id: (d.label, d.bounding_box, d.iscrowd) for d in coco_dataset.values("ground_truth.detections",
                                                                                    unwind=True)} == before
    deleted = mifo.delete_region_results(coco_dataset, "ground_truth")
    assert "ground_truth.detections.mi_embedding_mistakenness" in deleted["attributes"]
    assert coco_dataset.count("ground_truth.detections") == len(before)
