"""One owner for every name: each defect of the review that lost or silently changed a curator's data, as the
follow-up a user does next (issue "One owner for every name"). Every test failed on the code before the owner store."""

import subprocess
import sys
import textwrap

import fiftyone as fo
import fiftyone.utils.labels as foul
import pytest
from bson import ObjectId
from fiftyone import ViewField as F

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion.fo import heatmaps as heatmap_store
from fiftyone_maskinversion.fo.regions import region_mask
from fiftyone_maskinversion.fo.runs import find_run

from ..helpers import delete_with_heatmaps, load_coco, make_backbone

pytestmark = pytest.mark.slow
SINGLE = "a photo of a {}."


def detection(dataset, label_id, field="ground_truth"):
    view = dataset.filter_labels(field, F("_id") == ObjectId(label_id))
    return view.first()[field].detections[0]


def set_label(dataset, label_id, label, field="ground_truth"):
    """The curator's own edit of one label, as the App or a notebook makes it."""
    sample = dataset.match(F(f"{field}.detections._id").contains(ObjectId(label_id))).first()
    for det in sample[field].detections:
        if det.id == label_id:
            det.label = label
    sample.save()


def run_in_process(code: str) -> subprocess.Popen:
    """Start ``code`` in another Python process against the tests' database (its environment is inherited)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def semantic(coco_dataset):
    classes = coco_dataset.distinct("ground_truth.detections.label")
    targets = {i + 1: c for i, c in enumerate(classes)}
    foul.objects_to_segmentations(coco_dataset, "ground_truth", "seg", mask_targets=targets)
    coco_dataset.mask_targets = {"seg": targets}
    coco_dataset.save()
    return coco_dataset


def test_a_users_field_named_like_the_derived_regions_is_refused_and_survives_delete(semantic, tiny):
    """Defect 1: a user's own Detections field ``seg_regions`` was embedded, then deleted with the run."""
    for sample in semantic.iter_samples(autosave=True):
        sample["seg_regions"] = sample.ground_truth.copy()  # the user's own field with the derived name
    before = semantic.values("seg_regions")
    with pytest.raises(ValueError, match="'seg_regions'.*no MaskInversion run wrote.*pass another.*regions_field"):
        mifo.compute_region_embeddings(semantic, "seg", backbone=tiny, iterations=1)
    assert semantic.list_runs() == [] and semantic.values("seg_regions") == before
    summary = mifo.compute_region_embeddings(semantic, "seg", backbone=tiny, iterations=1, regions_field="seg_mi")
    assert summary.regions_field == "seg_mi" and summary.computed > 0
    mifo.delete_region_results(semantic, "seg")
    assert semantic.values("seg_regions") == before and not semantic.has_sample_field("seg_mi")


@pytest.fixture
def relabelled(coco_dataset, tiny):
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=2)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    preds = coco_dataset.values("relabel_ground_truth_mi_embedding.detections", unwind=True)
    changing = [p for p in preds if p.label != p.gt_label]
    assert len(changing) >= 2  # the tiny random model disagrees with most COCO labels
    return coco_dataset, changing


def test_apply_never_overwrites_a_label_the_curator_changed_since_the_prediction(relabelled):
    """Defect 2a: a label corrected by hand after the relabel was replaced by the prediction."""
    dataset, changing = relabelled
    edited, other = changing[0], changing[1]
    set_label(dataset, edited.source_label_id, "fixed by hand")
    preview = mifo.apply_relabel(dataset, "ground_truth", threshold=0.0, include_low_fidelity=True, dry_run=True)
    assert edited.source_label_id in preview.skipped_edited
    assert detection(dataset, edited.source_label_id).label == "fixed by hand"
    assert other.source_label_id in preview.changed and detection(dataset, other.source_label_id).label == other.gt_label
    changes = mifo.apply_relabel(dataset, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert changes.changed == preview.changed and changes.skipped_edited == preview.skipped_edited
    assert detection(dataset, edited.source_label_id).label == "fixed by hand"
    assert detection(dataset, other.source_label_id).label == other.label
    assert "changed by hand since the prediction" in changes.describe()


def test_predictions_of_recomputed_embeddings_are_not_applied(relabelled, tiny):
    """Defect 2b: after a recompute, predictions of the old embeddings stayed applicable."""
    dataset, changing = relabelled
    mifo.compute_region_embeddings(dataset, "ground_truth", backbone=tiny, iterations=3, overwrite=True)
    changes = mifo.apply_relabel(dataset, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert changes.count == 0 and {p.source_label_id for p in changing} <= set(changes.skipped_stale)
    assert all(detection(dataset, p.source_label_id).label == p.gt_label for p in changing)


def test_per_region_apply_and_undo_keep_every_step_and_the_curators_edit(relabelled, tiny):
    """Defect 2c: a second apply lost the intermediate edit (only the first original label was kept)."""
    dataset, changing = relabelled
    target = changing[0]
    first = mifo.apply_relabel(dataset, "ground_truth", threshold=0.0, include_low_fidelity=True,
                               label_ids=[target.source_label_id])
    assert list(first.changed) == [target.source_label_id]  # one region only
    assert dataset.count("ground_truth.detections.mi_embedding_relabel_to") == 1
    set_label(dataset, target.source_label_id, "intermediate edit")
    mifo.zero_shot_relabel(dataset, "ground_truth", prompt=SINGLE, backbone=tiny, overwrite=True)
    pred = [p for p in dataset.values("relabel_ground_truth_mi_embedding.detections", unwind=True)
            if p.source_label_id == target.source_label_id][0]
    assert pred.gt_label == "intermediate edit"
    second = mifo.apply_relabel(dataset, "ground_truth", threshold=0.0, include_low_fidelity=True,
                                label_ids=[target.source_label_id])
    assert second.changed == {target.source_label_id: ("intermediate edit", pred.label)}
    undone = mifo.undo_relabel(dataset, "ground_truth", label_ids=[target.source_label_id])
    assert undone.changed == {target.source_label_id: (pred.label, "intermediate edit")}
    again = mifo.undo_relabel(dataset, "ground_truth", label_ids=[target.source_label_id])
    # the first apply set target.label, then the curator wrote "intermediate edit": undoing it would erase the edit
    assert again.count == 0 and again.skipped_edited == [target.source_label_id]
    assert detection(dataset, target.source_label_id).label == "intermediate edit"


def test_find_bad_masks_only_reads_what_score_masks_stored(coco_dataset, tiny, monkeypatch):
    """Defect 3: after score_masks(classes=..., suggest_missing=False) find_bad_masks re-ran the review with
    defaults, because an unscorable region (stored None) looked unscored; summary.scored counted them."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    classes = sorted(coco_dataset.distinct("ground_truth.detections.label"))[:2]
    summary = mifo.score_masks(coco_dataset, "ground_truth", classes=classes, prompt=SINGLE, suggest_missing=False,
                               backbone=tiny)
    embedded = coco_dataset.count("ground_truth.detections.mi_embedding")
    in_vocabulary = len(coco_dataset.filter_labels("ground_truth", F("mi_embedding").exists() & F("label").is_in(
        classes)).values("ground_truth.detections", unwind=True))
    assert (summary.scored, summary.unscorable) == (in_vocabulary, embedded - in_vocabulary)
    import fiftyone_maskinversion.fo.badmask as badmask

    monkeypatch.setattr(badmask, "review_masks", lambda *a, **k: pytest.fail("find_bad_masks computed"))
    view = mifo.find_bad_masks(coco_dataset, "ground_truth")
    assert len(view) == in_vocabulary and not coco_dataset.has_sample_field("missing_ground_truth_mi_embedding")
    again = mifo.score_masks(coco_dataset, "ground_truth", classes=classes, prompt=SINGLE, suggest_missing=False,
                             backbone=tiny)  # the same settings: nothing left to do, nothing recomputed
    assert (again.scored, again.skipped_scored) == (0, embedded)
    with pytest.raises(TypeError):
        mifo.find_bad_masks(coco_dataset, "ground_truth", confirmation=0.0)  # a view takes no scoring arguments


def test_claims_from_two_processes_at_once_are_all_kept(coco_dataset, tiny):
    """Defect 4: processes adding outputs to one run each rewrote the whole record and dropped the other's."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    coco_dataset.persistent = True  # visible to the other processes
    code = """
        import fiftyone as fo
        from fiftyone_maskinversion.fo.ownership import claim
        from fiftyone_maskinversion.fo.runs import find_run
        dataset = fo.load_dataset(%r)
        for i in range(40):
            claim(dataset, find_run(dataset, "ground_truth", "mi_embedding"), "field", ["p%%s_%%d" %% (%r, i)])
    """
    procs = [run_in_process(code % (coco_dataset.name, who)) for who in ("a", "b")]
    for proc in procs:
        finish(proc)
    owned = find_run(coco_dataset, "ground_truth", "mi_embedding").owned["field"]
    assert sorted(owned) == sorted(f"p{who}_{i}" for who in "ab" for i in range(40))


def test_a_relabel_and_an_index_built_at_once_are_both_owned_and_deleted(coco_dataset, tiny, tmp_path):
    """Defect 4, as users meet it: a delegated index build and a relabel on one run at the same time."""
    from ..helpers import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.pt")
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", model_name="mi-test-tiny", pretrained=checkpoint,
                                   image_size=64, iterations=1)
    coco_dataset.persistent = True
    head = "import fiftyone as fo, fiftyone_maskinversion.fo as mifo\ndataset = fo.load_dataset(%r)\n" % coco_dataset.name
    procs = [run_in_process(head + "mifo.zero_shot_relabel(dataset, 'ground_truth', prompt='a photo of a {}.')"),
             run_in_process(head + "mifo.build_region_index(dataset, 'ground_truth')")]
    for proc in procs:
        finish(proc)
    coco_dataset.reload()  # the other processes' fields and brain runs
    run = find_run(coco_dataset, "ground_truth", "mi_embedding")
    assert run.pred_fields == ["relabel_ground_truth_mi_embedding"] and run.brain_key in coco_dataset.list_brain_runs()
    deleted = mifo.delete_region_results(coco_dataset, "ground_truth")
    assert deleted["brain_runs"] == [run.brain_key] and coco_dataset.list_brain_runs() == []
    assert deleted["pred_fields"] == ["relabel_ground_truth_mi_embedding"]


def test_heatmaps_survive_fiftyones_clean_up_and_lost_ones_are_recomputed(tiny):
    """Defect 5: the companion copied the persistence flag only when created; FiftyOne deleted it; the labels
    still counted as done, so the heatmaps were never rebuilt."""
    dataset = load_coco(2)
    try:
        mifo.compute_region_embeddings(dataset, "ground_truth", backbone=tiny, iterations=1)
        dataset.persistent = True
        companion = mifo.heatmaps_dataset(dataset)
        count = len(companion)
        import fiftyone.core.dataset as fod

        fod.delete_non_persistent_datasets()  # what FiftyOne does to non-persistent datasets at shutdown
        assert fo.dataset_exists(companion.name) and len(mifo.heatmaps_dataset(dataset)) == count
        lost = mifo.heatmaps_dataset(dataset).take(3, seed=0).values("source_label_id")
        heatmap_store.forget_region_samples(mifo.heatmaps_dataset(dataset), "ground_truth", "mi_embedding", lost)
        again = mifo.compute_region_embeddings(dataset, "ground_truth", backbone=tiny, iterations=1)
        assert (again.computed, again.recomputed_missing_heatmap, again.skipped_existing) == (3, 3, count - 3)
        assert sorted(mifo.heatmaps_dataset(dataset).values("source_label_id")) == sorted(
            dataset.filter_labels("ground_truth", F("mi_embedding").exists()).values("ground_truth.detections.id",
                                                                                     unwind=True))
    finally:
        delete_with_heatmaps(dataset)


def test_an_orphan_deleted_by_another_worker_meanwhile_is_not_an_error(monkeypatch):
    """Defect 7: two shards both deleted the same orphaned companion; one failed."""
    orphan = fo.Dataset()
    name = mifo.heatmaps_dataset(orphan, create=True).name
    orphan.delete()
    real = fo.delete_dataset

    def other_worker_first(target, *args, **kwargs):
        fo.load_dataset(target).delete()  # the other shard wins the race
        return real(target, *args, **kwargs)

    monkeypatch.setattr(fo, "delete_dataset", other_worker_first)
    assert name not in mifo.delete_orphaned_heatmaps() and not fo.dataset_exists(name)


def test_two_shards_in_two_processes_with_an_orphaned_companion(tmp_path):
    """Defect 7 with real processes: both shards run to the end and every region is embedded once."""
    from ..helpers import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.pt")
    dataset = load_coco(4, persistent=True)
    orphan = fo.Dataset()
    orphan_name = mifo.heatmaps_dataset(orphan, create=True).name
    orphan.delete()
    try:
        code = """
            import fiftyone as fo, fiftyone_maskinversion.fo as mifo
            s = mifo.compute_region_embeddings(fo.load_dataset(%r), "ground_truth", model_name="mi-test-tiny",
                                               pretrained=%r, image_size=64, iterations=1, shard=(%d, 2))
            print("computed", s.computed)
        """
        outs = [finish(p) for p in [run_in_process(code % (dataset.name, checkpoint, i)) for i in range(2)]]
        computed = sum(int(out.split("computed")[-1]) for out in outs)
        regions = dataset.filter_labels("ground_truth", F("iscrowd") != 1).count("ground_truth.detections")
        assert computed == regions == len(mifo.heatmaps_dataset(dataset)) and not fo.dataset_exists(orphan_name)
    finally:
        delete_with_heatmaps(dataset)


def test_apply_undo_delete_leaves_the_schema_as_it_was(coco_dataset, tiny):
    """Defect 8: the declared ``mi_original_label`` stayed in the schema after undo and delete."""
    schema = coco_dataset.get_field_schema(flat=True)
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    assert mifo.apply_relabel(coco_dataset, "ground_truth", threshold=0.0, include_low_fidelity=True).count
    with pytest.raises(ValueError, match="carry applied relabels: undo_relabel them first"):
        mifo.delete_region_results(coco_dataset, "ground_truth")
    mifo.undo_relabel(coco_dataset, "ground_truth")
    mifo.score_masks(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    mifo.delete_region_results(coco_dataset, "ground_truth")
    assert coco_dataset.get_field_schema(flat=True).keys() == schema.keys()


def test_a_name_used_by_labels_outside_the_view_is_refused(coco_dataset, tiny):
    """Defect 9: the check looked inside the view only; the skipped sample's annotator text was overwritten and
    the dataset no longer loaded."""
    first = coco_dataset.first()
    first.ground_truth.detections[0]["reviewer_note"] = "check the left edge"
    first.save()
    with pytest.raises(ValueError, match="reviewer_note.*no MaskInversion run wrote"):
        mifo.compute_region_embeddings(coco_dataset.skip(1), "ground_truth", backbone=tiny, iterations=1,
                                       embeddings_field="reviewer_note")
    assert len(list(coco_dataset.iter_samples())) == len(coco_dataset)  # the dataset still loads
    assert coco_dataset.first().ground_truth.detections[0].reviewer_note == "check the left edge"
    assert coco_dataset.list_runs() == []


def test_a_clone_is_recognised_by_where_it_came_from_not_by_equal_settings(tiny):
    """Defect 10: records were looked up by settings digest across datasets, so a view clone of A adopted B's
    record (and got none of its heatmaps), and a renamed field adopted another dataset's record."""
    a, b = load_coco(3), load_coco(3)
    clone = None
    try:
        for dataset in (b, a):  # same settings, same images: the same settings digest
            mifo.compute_region_embeddings(dataset, "ground_truth", backbone=tiny, iterations=1)
        clone = a.limit(2).clone()
        mifo.adopt_region_runs(clone)
        wanted = clone.filter_labels("ground_truth", F("mi_embedding").exists()).values("ground_truth.detections.id",
                                                                                     unwind=True)
        assert sorted(mifo.heatmaps_dataset(clone).values("source_label_id")) == sorted(wanted)
        assert find_run(clone, "ground_truth", "mi_embedding").run_uid == find_run(a, "ground_truth",
                                                                                  "mi_embedding").run_uid
        b.rename_sample_field("ground_truth", "gt")
        with pytest.raises(ValueError, match=r"\['ground_truth'\] no longer exists"):
            mifo.zero_shot_relabel(b, "gt", prompt=SINGLE, backbone=tiny)
        assert mifo.adopt_region_runs(b) == [] and mifo.list_region_runs(b)[0].label_field == "ground_truth"
    finally:
        for dataset in (a, b, clone):
            if dataset is not None:
                delete_with_heatmaps(dataset)


def test_an_unreadable_segmentation_mask_is_reported_per_sample_and_the_rest_runs(semantic, tiny):
    """Defect 11: one unreadable mask aborted the run with a bare OSError naming no sample."""
    broken = semantic.first()
    broken.seg.mask, broken.seg.mask_path = None, "/tmp/nope-maskinversion.png"
    broken.save()
    summary = mifo.compute_region_embeddings(semantic, "seg", backbone=tiny, iterations=1)
    assert [(sample_id, reason.split(":")[0]) for sample_id, _, reason in summary.failed] == [
        (broken.id, "cannot read the segmentation mask of 'seg'")]
    assert summary.computed == semantic.count("seg_regions.detections") > 0
    broken.reload()  # the in-memory sample, as after any writer in FiftyOne
    assert broken.seg_regions is None


def test_a_self_intersecting_polygon_is_embedded(coco_dataset, tiny):
    """Defect 13: a closed, filled bowtie covers ~half its box, but its signed areas cancel and it was refused."""
    sample = coco_dataset.first()
    bowtie = fo.Polyline(label="bowtie", points=[[(.1, .1), (.9, .9), (.9, .1), (.1, .9)]], closed=True, filled=True)
    sample["polys"] = fo.Polylines(polylines=[bowtie])
    sample.save()
    mask = region_mask(bowtie, sample.metadata.width, sample.metadata.height)
    box = sample.metadata.width * sample.metadata.height * 0.64
    assert 0.4 * box < mask.sum() < 0.6 * box  # two triangles, each a quarter of the box
    summary = mifo.compute_region_embeddings(coco_dataset, "polys", backbone=tiny, iterations=1)
    assert summary.computed == 1 and not summary.failed


@pytest.mark.parametrize("shard", [(0.5, 2), (True, 2), ("0", 2), (0, 2.0), (2, 2)])
def test_a_shard_that_is_not_two_integers_is_refused(coco_dataset, tiny, shard):
    """Defect 14: shard=(0.5, 2) was taken as shard 0."""
    with pytest.raises(ValueError, match="shard"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1, shard=shard)
    assert coco_dataset.list_runs() == []


def test_two_identical_runs_at_once_share_the_work(tmp_path):
    """Defect 14: two identical runs started at once each redid all the work; the second now leaves what the first
    holds to it (and a killed worker's samples are taken over at once by the next run, see test_workers)."""
    from ..helpers import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.pt")
    dataset = load_coco(6, persistent=True)
    try:
        code = """
            import fiftyone as fo, fiftyone_maskinversion.fo as mifo
            s = mifo.compute_region_embeddings(fo.load_dataset(%r), "ground_truth", model_name="mi-test-tiny",
                                               pretrained=%r, image_size=64, iterations=40, batch_size=1)
            print("computed", s.computed)
        """ % (dataset.name, checkpoint)
        outs = [finish(p) for p in [run_in_process(code), run_in_process(code)]]
        regions = dataset.filter_labels("ground_truth", F("iscrowd") != 1).count("ground_truth.detections")
        assert sum(int(out.split("computed")[-1]) for out in outs) == regions  # every region once
        assert dataset.count("ground_truth.detections.mi_embedding") == regions == len(mifo.heatmaps_dataset(dataset))
    finally:
        delete_with_heatmaps(dataset)


def test_two_runs_claiming_one_name_at_once_leave_exactly_one_owner(coco_dataset, tiny, monkeypatch):
    """Review finding: the check and the claim were two steps, so two runs checking at once both owned the name.
    Here the second run's check happens before the first run's claim lands (as two processes interleave)."""
    import fiftyone_maskinversion.fo.ownership as ownership

    for family in ("ea", "eb"):
        mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1,
                                       embeddings_field=family)
    first, second = (find_run(coco_dataset, "ground_truth", f) for f in ("ea", "eb"))
    real_check = ownership.check_free
    monkeypatch.setattr(ownership, "check_free", lambda *a, **k: None)  # both pass the check "at once"
    results = []
    for run in (second, first):  # the later record claims first
        try:
            ownership.claim(coco_dataset, run, "field", ["preds"])
            results.append(run.embeddings_field)
        except ValueError as err:
            assert "claimed at the same time" in str(err)
    monkeypatch.setattr(ownership, "check_free", real_check)
    owners = [r.embeddings_field for r in mifo.list_region_runs(coco_dataset) if r.owns("field", "preds")]
    assert owners == ["eb"]  # exactly one owner: the one whose claim landed first; the other was refused


def test_a_name_freed_and_made_again_by_the_user_is_the_users(coco_dataset, tiny):
    """Review finding: ownership outlived the data: a field the user deleted and made again under the run's name
    was cleared by the next relabel and deleted with the run; a clone adopted a same-named field of the user's."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, pred_field="review", backbone=tiny)
    coco_dataset.delete_sample_field("review")
    coco_dataset.add_sample_field("review", fo.StringField)
    coco_dataset.set_values("review", ["mine"] * len(coco_dataset))
    with pytest.raises(ValueError, match="'review'.*no MaskInversion run wrote"):
        mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, pred_field="review", overwrite=True,
                               backbone=tiny)
    mifo.delete_region_results(coco_dataset, "ground_truth")
    assert coco_dataset.values("review") == ["mine"] * len(coco_dataset)


def test_a_regions_field_is_never_an_output_field(semantic, tiny):
    """Review finding: pred_field / missing_field equal to the run's own regions field wiped the regions."""
    mifo.compute_region_embeddings(semantic, "seg", backbone=tiny, iterations=1)
    regions = semantic.count("seg_regions.detections")
    with pytest.raises(ValueError, match="holds its regions field"):
        mifo.zero_shot_relabel(semantic, "seg", prompt=SINGLE, pred_field="seg_regions", overwrite=True,
                               backbone=tiny)
    with pytest.raises(ValueError, match="holds its regions field"):
        mifo.score_masks(semantic, "seg", prompt=SINGLE, missing_field="seg_regions", backbone=tiny)
    mifo.zero_shot_relabel(semantic, "seg", prompt=SINGLE, pred_field="p", backbone=tiny)
    with pytest.raises(ValueError, match="holds its predictions"):
        mifo.score_masks(semantic, "seg", prompt=SINGLE, missing_field="p", backbone=tiny)
    assert semantic.count("seg_regions.detections") == regions


def test_lookups_keep_the_users_unsaved_edits(coco_dataset, tiny):
    """Review finding: every lookup reloaded the dataset, which reloads in-memory samples: unsaved edits lost."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    mifo.zero_shot_relabel(coco_dataset, "ground_truth", prompt=SINGLE, backbone=tiny)
    sample = coco_dataset.first()
    sample.ground_truth.detections[0].label = "fixed-by-hand"
    sample["status"] = "reviewed"
    mifo.find_mislabeled(coco_dataset, "ground_truth")
    mifo.search_regions(coco_dataset, "ground_truth", text="a dog", backbone=tiny)
    sample.save()
    assert coco_dataset.first().ground_truth.detections[0].label == "fixed-by-hand"
    assert coco_dataset.first().status == "reviewed"


def test_deleting_by_a_renamed_fields_old_name_is_refused(coco_dataset, tiny):
    """Review finding: delete by the old name deleted heatmaps and record and stranded the attributes."""
    mifo.compute_region_embeddings(coco_dataset, "ground_truth", backbone=tiny, iterations=1)
    coco_dataset.rename_sample_field("ground_truth", "gt")
    with pytest.raises(ValueError, match="'ground_truth' no longer exists.*rename the field back"):
        mifo.delete_region_results(coco_dataset, "ground_truth")
    assert len(mifo.heatmaps_dataset(coco_dataset)) == coco_dataset.count("gt.detections.mi_embedding") > 0
    coco_dataset.rename_sample_field("gt", "ground_truth")
    mifo.delete_region_results(coco_dataset, "ground_truth")
    assert not coco_dataset.has_field("ground_truth.detections.mi_embedding")


def test_a_derived_regions_field_holding_the_curators_data_is_kept(semantic, tiny):
    """Review finding: deleting a Segmentation run deleted the curator's attributes on the derived regions."""
    mifo.compute_region_embeddings(semantic, "seg", backbone=tiny, iterations=1)
    sample = semantic.first()
    sample.seg_regions.detections[0]["verified_by"] = "ana"
    sample.save()
    deleted = mifo.delete_region_results(semantic, "seg")
    assert deleted["regions_field"] is None and "verified_by" in deleted["regions_field_kept"]
    assert semantic.first().seg_regions.detections[0].verified_by == "ana"
    assert not semantic.has_field("seg_regions.detections.mi_embedding")  # the run's own attributes went


def test_applying_from_the_mislabeled_view_applies_its_regions(relabelled):
    """Review finding: apply_relabel on find_mislabeled's own view crashed after claiming."""
    dataset, changing = relabelled
    view = mifo.find_mislabeled(dataset, "ground_truth", include_low_fidelity=True).limit(2)
    shown = view.values("ground_truth.id")
    changes = mifo.apply_relabel(view, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert set(changes.changed) <= set(shown) and changes.count >= 1
    assert dataset.count("ground_truth.detections.mi_embedding_relabel_to") == changes.count


def test_views_that_hide_or_change_label_content_never_write_it_back(coco_dataset, tiny):
    """Every write run through a view that hides the curator's attributes (``exclude_fields``), or shows labels
    other than stored (``map_labels``, ``set_field``): the stored labels keep the curator's attributes, tags and
    names; only the package's own attributes (and the labels apply_relabel reports) change."""
    path = "ground_truth.detections"
    ids = coco_dataset.values(f"{path}.id", unwind=True)
    coco_dataset.set_label_values(f"{path}.my_note", {i: f"note {k}" for k, i in enumerate(ids)})
    coco_dataset.set_label_values(f"{path}.tags", {i: ["curator:checked"] for i in ids})

    def curators_data():
        return {name: coco_dataset.values(f"{path}.{name}", unwind=True) for name in ("id", "my_note", "tags")}

    before, labels = curators_data(), dict(zip(ids, coco_dataset.values(f"{path}.label", unwind=True)))
    hidden = coco_dataset.exclude_fields(f"{path}.my_note")
    renamed = coco_dataset.map_labels("ground_truth", {label: f"VIEW ONLY {label}" for label in set(labels.values())})
    untagged = coco_dataset.set_field(f"{path}.tags", [])
    mifo.compute_region_embeddings(hidden, "ground_truth", backbone=tiny, iterations=1)
    mifo.zero_shot_relabel(renamed, "ground_truth", prompt="a photo of a {}.", backbone=tiny)
    mifo.zero_shot_relabel(hidden, "ground_truth", prompt="a photo of a {}.", backbone=tiny, overwrite=True)
    mifo.score_masks(untagged, "ground_truth", prompt="a photo of a {}.", backbone=tiny, suggest_missing=False)
    changes = mifo.apply_relabel(hidden, "ground_truth", threshold=0.0, include_low_fidelity=True)
    assert changes.changed  # the apply wrote labels, through the view
    assert curators_data() == before
    stored = dict(zip(ids, coco_dataset.values(f"{path}.label", unwind=True)))
    assert stored == {i: changes.changed[i][1] if i in changes.changed else label for i, label in labels.items()}
    mifo.undo_relabel(untagged, "ground_truth")
    assert curators_data() == before
    assert dict(zip(ids, coco_dataset.values(f"{path}.label", unwind=True))) == labels
