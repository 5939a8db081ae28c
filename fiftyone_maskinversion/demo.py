"""``maskinversion demo``: the whole workflow (embed, relabel, mislabels, search) on a few COCO images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DEMO_DATASET = "maskinversion-demo"
COCO_ENV = "MASKINVERSION_COCO_DIR"


def find_coco_dir(coco_dir: Optional[str] = None) -> Path:
    """The COCO-format folder to use: the argument, $MASKINVERSION_COCO_DIR, or the project's shared sample."""
    candidates = [coco_dir, os.environ.get(COCO_ENV)]
    candidates += [str(base / "shared" / "data" / "coco-val2017-mini") for base in (Path.cwd().parent, Path(__file__).resolve().parents[2])]
    for candidate in candidates:
        if candidate and (Path(candidate) / "instances.json").is_file():
            return Path(candidate)
    raise SystemExit(
        "maskinversion demo: no COCO folder found; pass --coco-dir DIR (with images/ and instances.json) "
        f"or set ${COCO_ENV}"
    )


def run_demo(
    coco_dir: Optional[str] = None,
    max_samples: int = 4,
    model_name: str = "ViT-B-16",
    pretrained: Optional[str] = "openai",
    image_size: int = 448,
    launch_app: bool = False,
) -> None:
    import fiftyone as fo

    from . import WeightsUnavailableError, load_backbone
    from .dataset import compute_region_embeddings, find_mislabeled, search_regions, zero_shot_relabel

    folder = find_coco_dir(coco_dir)
    try:
        backbone = load_backbone(model_name, pretrained=pretrained, image_size=image_size)
        random_weights = False
    except WeightsUnavailableError as err:
        print(f"{err}\n\n*** Using RANDOM {model_name} weights: this checks the pipeline; the labels, scores and "
              "search results below carry no meaning. ***\n")
        backbone = load_backbone(model_name, pretrained=None, image_size=image_size)
        random_weights = True
    if fo.dataset_exists(DEMO_DATASET):
        fo.delete_dataset(DEMO_DATASET)
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
    print(f"dataset {DEMO_DATASET!r}: {len(dataset)} images, {dataset.count('ground_truth.detections')} regions")

    summary = compute_region_embeddings(dataset, "ground_truth", backbone=backbone,
                                        progress=lambda d, t: print(f"\r  embedded {d}/{t} images", end="", flush=True))
    print(f"\n{summary.computed} regions embedded in {summary.seconds:.1f} s "
          f"({60 * summary.computed / max(summary.seconds, 1e-9):.1f} regions/min); "
          f"{summary.skipped_crowd} crowd regions skipped; {len(summary.failed)} failed")

    relabel = zero_shot_relabel(dataset, "ground_truth", backbone=backbone, overwrite=True)
    print(f"zero-shot relabel over {len(relabel.classes)} classes: {relabel.changed}/{relabel.regions} disagree")
    print("most likely mislabeled regions:")
    for sample in find_mislabeled(dataset, "ground_truth").limit(5):
        pred = sample["ground_truth_mi_relabel"]
        print(f"  {pred.mistakenness:.3f}  labelled {pred.gt_label!r}, looks like {pred.label!r}")
    query = "a photo of a person"
    print(f"regions most similar to {query!r}:")
    for sample in search_regions(dataset, "ground_truth", text=query, k=5, backbone=backbone):
        print(f"  {sample.ground_truth.label!r} in {Path(sample.filepath).name}")
    if random_weights:
        print("\n(random weights: see above)")
    print(f"\nOpen it: `fiftyone app launch {DEMO_DATASET}` (heatmaps: dataset '{DEMO_DATASET}-maskinversion-heatmaps')")
    if launch_app:
        fo.launch_app(dataset).wait()
