"""The FiftyOne layer on real COCO images and masks, with the real FiftyOne database."""


import os

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F
from PIL import Image
from pycocotools.coco import COCO

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import MaskInverter
from fiftyone_maskinversion.fo.regions import region_mask
from fiftyone_maskinversion.fo.runs import find_run

from ..helpers import COCO_DIR, Interrupted, delete_with_heatmaps, interrupt_after, load_coco

PRED = "relabel_ground_truth_mi_embedding"  # the default predictions field of the default run

pytestmark = pytest.mark.slow


def cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def non_crowd(dataset, field="ground_truth"):
    return dataset.filter_labels(field, F("iscrowd") != 1).count(f"{field}.detections")


def test_instance_masks_are_coco_masks_and_embeddings_match_the_core(coco_dataset, tiny):
    coco = COCO(str(COCO_DIR / "instances.json"))
    sample = coco_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    dets = [d for d in sample.ground_truth.detections if not d.iscrowd]
    inter = union = 0
    for det in dets:
        ours = region_mask(det, width, height)
        truth = coco.annToMask(coco.loadAnns(int(det.coco_id))[0]) > 0
        inter, union = inter + (ours & truth).sum(), union + (ours | truth).sum()
        near_truth = np.zeros_like(truth)  # truth dilated by 2 px
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near_truth |= np.roll(truth, (dy, dx), axis=(0, 1))
        assert (ours & ~near_truth).sum() == 0 and abs(int(ours.sum()) - int(truth.sum())) <= 0.2 * truth.sum()
    # FiftyOne stores masks cropped to boxes rounded to pixels, so small shapes shift by a pixel
    assert inter / union > 0.9

    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=3)
    assert summary.computed == non_crowd(coco_dataset) and not summary.failed
    schema = coco_dataset.get_field_schema(flat=True)
    assert isinstance(schema["ground_truth.detections.mi_embedding"], fo.VectorField)
    sample.reload()
    # the run must hand the core exactly FiftyOne's own rendering of each label, in label order
    masks = [d.to_segmentation(frame_size=(width, height)).mask > 0 for d in dets]
    direct = MaskInverter(tiny, iterations=3).invert(sample.filepath, masks)
    for k, det in enumerate(dets):
        stored = coco_dataset[sample.id].ground_truth.detections
        got = next(d for d in stored if d.id == det.id)
        assert cosine(got.mi_embedding, direct.embeddings[k]) > 0.9999
        assert 0 <= got.mi_embedding_dice <= 1 and 0 <= got.mi_embedding_iou <= 1

    heat = mifo.heatmaps_dataset(coco_dataset)
    assert heat.name == summary.heatmaps_dataset and len(heat) == summary.computed
    assert len(set(heat.values("source_label_id"))) == summary.computed
    first = heat.first()
    assert isinstance(first.heatmap, fo.Heatmap) and first.heatmap.map.dtype == np.uint8
    assert first.filepath == coco_dataset[first.source_sample_id].filepath
    (run,) = mifo.list_region_runs(coco_dataset)
    assert run.settings["model_name"] == "mi-test-tiny" and run.settings["iterations"] == 3
    assert run.settings["weights_id"] == tiny.weights_id and run.settings["activation"] == "gelu"
    assert coco_dataset.list_runs() == [run.key] and "maskinversion" not in coco_dataset.info


def test_rerun_skips_done_regions_and_detects_other_settings(coco_dataset, tiny):
    first = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    again = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    assert again.computed == 0 and again.skipped_existing == first.computed
    with pytest.raises(ValueError, match="computed with other settings .*iterations"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=3)
    redo = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=3, overwrite=True)
    assert redo.computed == first.computed
    assert len(mifo.heatmaps_dataset(coco_dataset)) == first.computed  # replaced, not duplicated


def test_interrupted_run_resumes_without_duplicates(coco_dataset, tiny):
    with pytest.raises(Interrupted):
        mifo.compute_region_embeddings(
            coco_dataset, "ground_truth", backbone=tiny, iterations=2, batch_size=1, progress=interrupt_after(2)
        )
    resumed = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    total = non_crowd(coco_dataset)
    assert resumed.skipped_existing > 0 and resumed.computed + resumed.skipped_existing == total
    heat = mifo.heatmaps_dataset(coco_dataset)
    assert len(heat) == total == len(set(heat.values("source_label_id")))


def test_boxes_polylines_and_segmentations(coco_dataset, tiny):
    sample = coco_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    for s in coco_dataset.iter_samples(autosave=True):
        dets = [d for d in s.ground_truth.detections if not d.iscrowd]
        s["boxes"] = fo.Detections(detections=[fo.Detection(label=d.label, bounding_box=d.bounding_box) for d in dets])
        s["polys"] = fo.Polylines(polylines=[d.to_polyline() for d in dets])
    boxes = mifo.compute_region_embeddings(coco_dataset, "boxes", backbone=tiny, iterations=2)
    assert boxes.computed == non_crowd(coco_dataset) and not boxes.failed
    box = coco_dataset.first().boxes.detections[0]
    rect = region_mask(box, width, height)
    direct = MaskInverter(tiny, iterations=2).invert(sample.filepath, [rect])
    assert cosine(box.mi_embedding, direct.embeddings[0]) > 0.9999
    ys, xs = np.nonzero(rect)
    x, y, w, h = box.bounding_box
    assert abs(xs.min() - x * width) <= 1 and abs(ys.max() + 1 - (y + h) * height) <= 1

    polys = mifo.compute_region_embeddings(coco_dataset, "polys", backbone=tiny, iterations=2)
    assert polys.computed == non_crowd(coco_dataset) and not polys.failed
    assert coco_dataset.count("polys.polylines.mi_embedding") == polys.computed


def test_semantic_segmentation_becomes_one_region_per_class(coco_dataset, tiny):
    import fiftyone.utils.labels as foul

    classes = coco_dataset.distinct("ground_truth.detections.label")
    targets = {i + 1: c for i, c in enumerate(classes)}
    coco_dataset.mask_targets = {"semantic": targets}
    coco_dataset.save()
    foul.objects_to_segmentations(coco_dataset, "ground_truth", "semantic", mask_targets=targets)
    summary = mifo.compute_region_embeddings(coco_dataset, "semantic", backbone=tiny, iterations=2)
    assert (summary.label_field, summary.regions_field) == ("semantic", "semantic_regions")
    sample = coco_dataset.first()
    present = {targets[v] for v in np.unique(sample.semantic.get_mask()) if v}
    assert {d.label for d in sample.semantic_regions.detections} == present
    assert all(d.mi_embedding is not None for d in sample.semantic_regions.detections)
    ids = coco_dataset.values("semantic_regions.detections.id")
    again = mifo.compute_region_embeddings(coco_dataset, "semantic", backbone=tiny, iterations=2)
    assert again.computed == 0 and coco_dataset.values("semantic_regions.detections.id") == ids


def test_bad_inputs_are_reported_per_label_and_the_run_completes(coco_dataset, tiny, tmp_path):
    samples = list(coco_dataset.iter_samples())
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(open(samples[0].filepath, "rb").read()[:200])
    samples[0].filepath = str(corrupt)
    samples[0].save()
    samples[1].filepath = str(tmp_path / "missing.jpg")
    samples[1].save()
    third = samples[2]
    dets = third.ground_truth.detections
    dets.append(fo.Detection(label="nothing"))  # neither mask nor box
    dets.append(fo.Detection(label="empty", bounding_box=[0.1, 0.1, 0.2, 0.2], mask=np.zeros((5, 5), bool)))
    third.save()
    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    reasons = {label_id: reason for _, label_id, reason in summary.failed}
    bad_ids = {dets[-2].id: "neither an instance mask nor a bounding box", dets[-1].id: "empty mask"}
    for label_id, text in bad_ids.items():
        assert text in reasons[label_id]
    first_ids = [d.id for d in samples[0].ground_truth.detections if not d.iscrowd]
    assert all("corrupt.jpg" in reasons[i] for i in first_ids)
    assert all("missing.jpg" in reasons[i] for i in [d.id for d in samples[1].ground_truth.detections if not d.iscrowd])
    rest = coco_dataset.select([s.id for s in samples[2:]])
    assert summary.computed == non_crowd(rest) - 2  # every other region of the readable images


@pytest.fixture
def embedded(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    return coco_dataset


def test_zero_shot_relabel_apply_and_undo(embedded, tiny):
    before = embedded.values("ground_truth.detections.label")
    summary = mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny, top_k=3)
    assert embedded.values("ground_truth.detections.label") == before  # ground truth untouched
    classes = sorted(set(embedded.distinct("ground_truth.detections.label")))
    assert summary.classes == classes and summary.regions == non_crowd(embedded)
    schema = embedded.get_field_schema(flat=True)  # declared, so the App's sidebar can filter on them
    for name, kind in {"gt_label": fo.StringField, "mistakenness": fo.FloatField, "topk_labels": fo.ListField,
                       "topk_scores": fo.ListField, "source_label_id": fo.StringField}.items():
        assert isinstance(schema[f"{PRED}.detections.{name}"], kind), name
    text = tiny.encode_text([f"a photo of a {c}." for c in classes]).numpy()  # one template: its own embedding
    scale = float(tiny.model.logit_scale.exp())
    sample = embedded.first()
    gt = {d.id: d for d in sample.ground_truth.detections}
    for pred in sample[PRED].detections:
        source = gt[pred.source_label_id]
        assert pred.bounding_box == source.bounding_box and np.array_equal(pred.mask, source.mask)
        assert pred.id != source.id and pred.gt_label == source.label
        # independent softmax over the scaled cosine similarities
        emb = source.mi_embedding / np.linalg.norm(source.mi_embedding)
        logits = scale * text @ emb
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert pred.label == classes[int(np.argmax(probs))]
        np.testing.assert_allclose(pred.confidence, probs.max(), rtol=1e-4)
        np.testing.assert_allclose(pred.mistakenness, 1 - probs[classes.index(source.label)], rtol=1e-4, atol=1e-6)
        assert len(pred.topk_labels) == 3 and pred.topk_scores == sorted(pred.topk_scores, reverse=True)

    with pytest.raises(ValueError, match="already exists"):
        mifo.zero_shot_relabel(embedded, "ground_truth", backbone=tiny)

    changes = mifo.apply_relabel(embedded, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert isinstance(embedded.get_field("ground_truth.detections.mi_embedding_relabel_from"), fo.ListField)
    assert changes.count == summary.changed > 0
    after = embedded.first().ground_truth.detections
    preds = {p.source_label_id: p.label for p in embedded.first()[PRED].detections}
    for det in after:
        if det.id in preds:
            assert det.label == preds[det.id]
            if det.id in changes.changed:
                assert det.mi_embedding_relabel_from == [gt[det.id].label] and changes.changed[det.id][0] == gt[det.id].label
    assert mifo.undo_relabel(embedded, "ground_truth").changed == {i: (new, old) for i, (old, new) in changes.changed.items()}
    assert embedded.values("ground_truth.detections.label") == before


def test_find_mislabeled_sorts_by_mistakenness(embedded, tiny):
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny)
    view = mifo.find_mislabeled(embedded, "ground_truth", include_low_fidelity=True)
    scores = view.values("ground_truth.mi_embedding_mistakenness")
    assert len(scores) == non_crowd(embedded) and scores == sorted(scores, reverse=True)


def test_text_and_region_search(embedded, tiny):
    view = mifo.search_regions(embedded, "ground_truth", text="a photo of a person", k=5, backbone=tiny)
    got = view.values("ground_truth.id")
    # independent ranking by cosine between the text embedding and every stored region embedding
    query = tiny.encode_text(["a photo of a person"])[0].numpy()
    ids, embs = [], []
    for det_ids, det_embs in zip(
        embedded.values("ground_truth.detections.id"), embedded.values("ground_truth.detections.mi_embedding")
    ):
        for i, e in zip(det_ids, det_embs):
            if e is not None:
                ids.append(i)
                embs.append(e / np.linalg.norm(e))
    expected = [ids[i] for i in np.argsort(-(np.stack(embs) @ query))[:5]]
    assert got == expected
    region = expected[2]
    similar = mifo.search_regions(embedded, "ground_truth", region_id=region, k=3, backbone=tiny)
    assert similar.values("ground_truth.id")[0] == region


def test_delete_region_results(embedded, tiny):
    mifo.zero_shot_relabel(embedded, "ground_truth", prompt="a photo of a {}.", backbone=tiny)
    mifo.build_region_index(embedded, "ground_truth")
    deleted = mifo.delete_region_results(embedded, "ground_truth")
    assert deleted["heatmaps"] == non_crowd(embedded) and deleted["pred_fields"] == [PRED]
    assert not embedded.has_field("ground_truth.detections.mi_embedding")
    assert embedded.list_brain_runs() == [] and embedded.list_runs() == [] and "maskinversion" not in embedded.info
    assert mifo.heatmaps_dataset(embedded) is None  # emptied, so deleted
    assert embedded.count("ground_truth.detections") > 0  # the ground truth itself stays


def test_several_images_per_call_give_the_per_image_results(tiny):
    """The dataset path inverts one database batch of samples per call (several images per chunk); results
    equal one image per call up to fp32 rounding (measured in the core: embeddings within 1.1e-5)."""
    one, many = load_coco(4), load_coco(4)
    try:
        mifo.compute_region_embeddings(one, "ground_truth", backbone=tiny, iterations=2, batch_size=1)
        mifo.compute_region_embeddings(many, "ground_truth", backbone=tiny, iterations=2, batch_size=4)
        for dataset in (one, many):
            assert dataset.count("ground_truth.detections.mi_embedding") == non_crowd(dataset)
        path = "ground_truth.detections.mi_embedding"
        for a, b in zip(one.values(path, unwind=True), many.values(path, unwind=True)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-4)
        maps = [{s.source_label_id: s.heatmap.map.astype(int) for s in mifo.heatmaps_dataset(d)} for d in (one, many)]
        by_position = dict(zip(one.values("ground_truth.detections.id", unwind=True),
                               many.values("ground_truth.detections.id", unwind=True)))
        assert len(maps[0]) == len(maps[1]) > 0
        for label_id, heatmap in maps[0].items():  # 8-bit maps: one level of rounding either way
            assert np.abs(heatmap - maps[1][by_position[label_id]]).max() <= 1
    finally:
        delete_with_heatmaps(one)
        delete_with_heatmaps(many)


def test_heatmaps_as_files_or_none(coco_dataset, tiny, tmp_path):
    """heatmaps="files": PNGs referenced by map_path in a folder the run owns (deleted with it, and a clone
    copies them into a folder of its own); "none": no heatmaps at all; a run keeps the storage it began with."""
    summary = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1,
                                             heatmaps="files", heatmaps_dir=str(tmp_path / "maps"))
    companion = mifo.heatmaps_dataset(coco_dataset)
    paths = companion.values("heatmap.map_path")
    assert len(paths) == summary.computed > 0 and all(p.startswith(str(tmp_path / "maps")) for p in paths)
    assert companion.values("heatmap.map") == [None] * len(paths)  # not in the documents
    stored = np.asarray(Image.open(paths[0]))
    assert stored.dtype == np.uint8 and stored.shape == (4 * tiny.grid_size,) * 2 and stored.max() > 0
    from fiftyone_maskinversion.fo.preview import heatmap_overlay

    assert heatmap_overlay(companion.first()).size[0] > 0  # what the App's heatmap preview draws, from the file
    with pytest.raises(ValueError, match="keeps its heatmaps as 'files'"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    redo = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2, overwrite=True,
                                          heatmaps="files")
    assert redo.computed == summary.computed and not any(os.path.exists(p) for p in paths)  # replaced, not piling up
    folder = find_run(coco_dataset, "ground_truth", "mi_embedding").heatmaps["folder"]
    assert len(os.listdir(folder)) == summary.computed

    clone = coco_dataset.limit(2).clone()
    try:
        mifo.adopt_region_runs(clone)
        clone_folder = find_run(clone, "ground_truth", "mi_embedding").heatmaps["folder"]
        assert clone_folder != folder and sorted(os.listdir(clone_folder)) == sorted(
            os.path.basename(p) for p in mifo.heatmaps_dataset(clone).values("heatmap.map_path"))
        mifo.delete_region_results(clone, "ground_truth")
        assert not os.path.exists(clone_folder) and len(os.listdir(folder)) == summary.computed  # the source's stay
    finally:
        delete_with_heatmaps(clone)
    mifo.delete_region_results(coco_dataset, "ground_truth")
    assert not os.path.exists(folder) and os.listdir(tmp_path / "maps") == []  # the run's folder and the emptied
    # dataset folder went; the folder the user named stays

    none = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, heatmaps="none")
    assert none.computed == summary.computed and mifo.heatmaps_dataset(coco_dataset) is None
    again = mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, heatmaps="none")
    assert again.computed == 0 and again.recomputed_missing_heatmap == 0  # no heatmap is not a lost heatmap
    with pytest.raises(ValueError, match="heatmaps_dir .* heatmaps='files'"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, heatmaps_dir=str(tmp_path))
