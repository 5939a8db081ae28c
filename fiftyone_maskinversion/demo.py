"""``maskinversion demo``: the whole workflow (embed, relabel, mislabels, search) in a FiftyOne dataset.

With pretrained CLIP weights available (ViT-B-16 / openai by default) it runs on a few images of the
COCO sample. Offline, or with ``--synthetic``, it runs on synthetic scenes with the small CLIP trained
in this repository (``mi-synth-vit`` / ``synthetic``), where a few labels are deliberately corrupted
so the mislabel finder has something to find.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from . import defaults

DEMO_DATASET = "maskinversion-demo"
COCO_ENV = "MASKINVERSION_COCO_DIR"
CORRUPTED = 4  # labels flipped in the synthetic demo
BAD_MASKS = 3  # masks moved in the synthetic demo (two onto another object, one shifted by half its width)


def find_coco_dir(coco_dir: Optional[str] = None) -> Optional[Path]:
    """The COCO-format folder: the argument, $MASKINVERSION_COCO_DIR, or the project's shared sample."""
    candidates = [coco_dir, os.environ.get(COCO_ENV)]
    candidates += [str(base / "shared" / "data" / "coco-val2017-mini")
                   for base in (Path.cwd().parent, Path(__file__).resolve().parents[2])]
    for candidate in candidates:
        if candidate and (Path(candidate) / "instances.json").is_file():
            return Path(candidate)
    return None


def run_demo(
    coco_dir: Optional[str] = None,
    max_samples: int = 6,
    model_name: str = defaults.MODEL_NAME,
    pretrained: Optional[str] = defaults.PRETRAINED,
    image_size: int = defaults.IMAGE_SIZE,
    synthetic: bool = False,
    launch_app: bool = False,
) -> None:
    import fiftyone as fo

    from . import WeightsUnavailableError, load_backbone
    from .fo import (
        compute_region_embeddings,
        find_bad_masks,
        find_mislabeled,
        prediction_of,
        score_masks,
        search_regions,
        zero_shot_relabel,
    )
    from .fo.appearance import review_color_scheme
    from .synthetic import CLASSES
    from .synthetic.weights import BLOCKS, IMAGE_SIZE, MODEL_NAME, TAG

    folder = None if synthetic else find_coco_dir(coco_dir)
    backbone = None
    if folder is not None:
        try:
            backbone = load_backbone(model_name, pretrained=pretrained, image_size=image_size)
        except WeightsUnavailableError as err:
            print(f"{err}\n-> running the demo on synthetic scenes with the model trained in this repository.\n")
    if backbone is None:
        backbone = load_backbone(MODEL_NAME, pretrained=TAG, image_size=IMAGE_SIZE)
        folder = _synthetic_folder(max(max_samples, 24))
        max_samples = max(max_samples, 24)
    dataset = _load(folder, max_samples)
    corrupted = _corrupt_labels(dataset, CLASSES) if backbone.model_name == MODEL_NAME else []
    moved = _corrupt_masks(dataset) if corrupted else []
    print(f"dataset {DEMO_DATASET!r}: {len(dataset)} images, {dataset.count('ground_truth.detections')} regions, "
          f"model {backbone.model_name} / {backbone.pretrained} at {backbone.image_size} px")

    blocks = BLOCKS if backbone.model_name == MODEL_NAME else None
    summary = compute_region_embeddings(dataset, "ground_truth", backbone=backbone, blocks=blocks)
    print(f"{summary.computed} regions embedded in {summary.seconds:.1f} s "
          f"({60 * summary.computed / max(summary.seconds, 1e-9):.0f} regions/min); "
          f"{summary.skipped_crowd} crowd regions skipped; {len(summary.failed)} failed")
    classes = list(CLASSES) if corrupted else None
    relabel = zero_shot_relabel(dataset, "ground_truth", classes=classes, backbone=backbone)
    print(f"zero-shot relabel over {len(relabel.classes)} classes: {relabel.changed}/{relabel.regions} "
          "predictions differ from the labels")
    if corrupted:
        print(f"{len(corrupted)} labels were corrupted on purpose: {', '.join(corrupted)}")
    print("most likely mislabeled regions:")
    for patch in find_mislabeled(dataset, "ground_truth").limit(6):
        pred = prediction_of(patch, relabel.pred_field)
        print(f"  mistakenness {pred.mistakenness:.3f}: labelled {pred.gt_label!r}, looks like {pred.label!r}")
    review = score_masks(dataset, "ground_truth", classes=classes, backbone=backbone)
    print(f"mask review: {review.scored} regions scored, {review.suggested} missing regions suggested "
          f"(field {review.missing_field!r})")
    if moved:
        print(f"{len(moved)} masks were moved on purpose: {'; '.join(moved)}")
    print("most likely bad masks (mask mistakenness [the largest part of it]; see the README):")
    bad_masks = find_bad_masks(dataset, "ground_truth")
    for patch in bad_masks.limit(6):
        region = patch.ground_truth
        note = f" <- {region['mask_corruption']}" if region.has_field("mask_corruption") else ""
        print(f"  {region['mi_embedding_mask_mistakenness']:.3f} [{region['mi_embedding_mask_reason']}]: "
              f"{region.label!r} ({region.id}){note}")
    if moved:
        ranks = [rank + 1 for rank, has in enumerate(bad_masks.values("ground_truth.mask_corruption")) if has]
        print(f"  the moved masks rank {ranks} of {len(bad_masks)}")
    query = "a photo of a red circle" if corrupted else "a photo of a person"
    print(f"regions most similar to {query!r}:")
    for sample in search_regions(dataset, "ground_truth", text=query, k=5, backbone=backbone):
        print(f"  {sample.ground_truth.label!r} in {Path(sample.filepath).name}")
    print(f"\nOpen it: `fiftyone app launch {DEMO_DATASET}`; per-region heatmaps are in "
          f"{summary.heatmaps_dataset!r}")
    if launch_app:
        fo.launch_app(dataset, color_scheme=review_color_scheme(dataset)).wait()


def _synthetic_folder(count: int) -> Path:
    from .synthetic import write_coco

    # rewritten on every run (seeded, so identical unless the generator changed): a cached copy could be stale
    return write_coco(Path(tempfile.gettempdir()) / f"maskinversion-demo-scenes-{count}", seed=777, count=count)


def _load(folder: Path, max_samples: int):
    import fiftyone as fo

    from .fo import delete_orphaned_heatmaps

    if fo.dataset_exists(DEMO_DATASET):
        fo.delete_dataset(DEMO_DATASET)
        delete_orphaned_heatmaps()
    dataset = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=str(folder / "images"),
        labels_path=str(folder / "instances.json"),
        label_types=["segmentations"],
        label_field="ground_truth",
        max_samples=max_samples,
        name=DEMO_DATASET,
        progress=False,
    )
    dataset.persistent = True
    return dataset


def _corrupt_masks(dataset) -> list:
    """Move the masks of a few regions (seeded, samples other than the relabelled ones), recording
    what was done in ``mask_corruption``: the first region of two samples gets the mask of another
    object of its image; one more is shifted right by half its box's width."""
    import numpy as np

    rng = np.random.default_rng(1)
    moved = []
    candidates = [s for s in dataset.iter_samples(autosave=True) if len(s.ground_truth.detections) >= 2
                  and not any(d.has_field("true_label") for d in s.ground_truth.detections)]
    for number, index in enumerate(rng.choice(len(candidates), size=min(BAD_MASKS, len(candidates)), replace=False)):
        sample = candidates[index]
        det, other = sample.ground_truth.detections[:2]
        if number < BAD_MASKS - 1:
            det.bounding_box, det.mask = list(other.bounding_box), other.mask.copy()
            det["mask_corruption"] = f"moved onto the {other.label}"
        else:
            x, y, w, h = det.bounding_box
            det.bounding_box = [min(x + w / 2, 1 - w), y, w, h]
            det["mask_corruption"] = "shifted by half its width"
        moved.append(f"{det.label}: {det['mask_corruption']} ({det.id})")
        sample.save()
    return moved


def _corrupt_labels(dataset, classes) -> list:
    """Flip the labels of a few regions (seeded), recording the truth in ``true_label``."""
    import numpy as np

    rng = np.random.default_rng(0)
    flipped = []
    samples = list(dataset.iter_samples(autosave=True))
    for index in rng.choice(len(samples), size=min(CORRUPTED, len(samples)), replace=False):
        det = samples[index].ground_truth.detections[0]
        wrong = [c for c in classes if c != det.label][rng.integers(len(classes) - 1)]
        det["true_label"] = det.label
        flipped.append(f"{det.label} -> {wrong}")
        det.label = wrong
        samples[index].save()
    return flipped
