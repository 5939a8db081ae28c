"""Throughput of compute_region_embeddings on the whole COCO sample (188 images, 1692 instances).

    .venv/bin/python benchmarks/coco_throughput.py [--model ViT-B-16] [--pretrained ''] [--image-size 448]

Imports ../shared/data/coco-val2017-mini into a temporary FiftyOne dataset and embeds every
non-crowd instance (random weights unless --pretrained names real ones), printing regions/minute.
"""

import argparse
import time
import uuid
from pathlib import Path

import fiftyone as fo
import torch

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import load_backbone

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-val2017-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--pretrained", default="")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset, data_path=str(DATA / "images"),
        labels_path=str(DATA / "instances.json"), label_types=["segmentations"], label_field="ground_truth",
        max_samples=args.max_samples, name=f"mi-throughput-{uuid.uuid4().hex[:6]}", progress=False,
    )
    try:
        start = time.perf_counter()
        # random weights go in as a backbone object (a dataset run refuses to draw them itself)
        backbone = load_backbone(args.model, pretrained=args.pretrained or None, image_size=args.image_size)
        summary = mifo.compute_region_embeddings(
            dataset, "ground_truth", backbone=backbone,
            progress=lambda d, t: print(f"\r{d}/{t} images, {time.perf_counter() - start:7.0f} s", end="", flush=True),
        )
        wall = time.perf_counter() - start
        print(f"\n{len(dataset)} images, {dataset.count('ground_truth.detections')} instances: "
              f"{summary.computed} embedded, {summary.skipped_crowd} crowd skipped, {len(summary.failed)} failed")
        print(f"{wall:.0f} s wall (model load included) -> {60 * summary.computed / wall:.1f} regions/min, "
              f"{wall / len(dataset):.2f} s/image")
    finally:
        companion = mifo.heatmaps_dataset(dataset)
        if companion is not None:
            companion.delete()
        dataset.delete()


if __name__ == "__main__":
    main()
