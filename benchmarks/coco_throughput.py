"""Regions per minute of the whole dataset path on the COCO sample, against the engine's core loop.

    .venv/bin/python benchmarks/coco_throughput.py                              # ViT-B-16 at 448, every image
    .venv/bin/python benchmarks/coco_throughput.py --model ViT-B-32 --image-size 224 --max-samples 8
    python benchmarks/coco_throughput.py --device cuda                           # on a GPU machine with FiftyOne

Imports ../shared/data/coco-val2017-mini (188 images, 1692 non-crowd instances) into a temporary
FiftyOne dataset (FiftyOne starts its own MongoDB) and, with one model loaded once (random weights
unless --pretrained names real ones; 10 iterations, exact fp32), times in one run:

* ``core loop``: ``MaskInverter.invert_many`` over the same images and masks, one database batch of
  images per call, nothing read from or written to the database (decoding and rasterising included);
* ``compute_region_embeddings`` with ``heatmaps="database"``, ``"files"`` and ``"none"``, each a new run
  on the same dataset (the previous run deleted first), ``--profile`` printing where each one's time goes.

One image is inverted first, untimed (a warm-up). Each row prints regions/min and seconds per image;
ratios are only meaningful within one run on an otherwise idle machine. The core loop rasterises the
masks in the calling thread; the dataset path does it in its read-ahead thread.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import uuid
from pathlib import Path

import fiftyone as fo
import fiftyone.core.odm as foo
import numpy as np
import torch

import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import MaskInverter, defaults, load_backbone
from fiftyone_maskinversion.fo.regions import is_crowd, region_mask, regions_of

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-val2017-mini"
MODES = ("core", "database", "files", "none")


def core_loop(dataset, inverter: MaskInverter, batch_size: int) -> int:
    """Invert every non-crowd instance mask of the dataset as the dataset path does (one database
    batch of images per ``invert_many`` call), with no database writes; returns the regions inverted."""
    items, count = [], 0
    for sample in dataset.iter_samples(progress=False):
        regions = [r for r in regions_of(sample["ground_truth"]) if not is_crowd(r)]
        if regions:
            width, height = sample.metadata.width, sample.metadata.height
            items.append((sample.filepath, np.stack([region_mask(r, width, height) for r in regions])))
        if len(items) == batch_size:
            count += sum(len(m) for _, m in items)
            inverter.invert_many(items)
            items = []
    if items:
        count += sum(len(m) for _, m in items)
        inverter.invert_many(items)
    return count


def dataset_path(dataset, backbone, heatmaps: str, folder: str, batch_size: int) -> int:
    """One ``compute_region_embeddings`` run with the given heatmap storage; returns the regions embedded.
    The run is deleted afterwards so that the next mode starts from the same dataset."""
    summary = mifo.compute_region_embeddings(
        dataset, "ground_truth", backbone=backbone, heatmaps=heatmaps, batch_size=batch_size, precision="fp32",
        heatmaps_dir=folder if heatmaps == "files" else None, embeddings_field=f"bench_{heatmaps}",
    )
    if summary.failed:
        print(f"  {len(summary.failed)} regions failed, first: {summary.failed[0]}")
    print(f"  heatmaps={heatmaps}: {storage_per_region(dataset, heatmaps, folder)}")
    mifo.delete_region_results(dataset, "ground_truth", embeddings_field=f"bench_{heatmaps}")
    return summary.computed


def storage_per_region(dataset, heatmaps: str, folder: str) -> str:
    """What one region's heatmap costs where the run keeps it: the companion's mean document size, or
    the mean PNG file size."""
    companion = mifo.heatmaps_dataset(dataset)
    if heatmaps == "none" or companion is None:
        return "no heatmaps stored"
    stats = foo.get_db_conn().command("collstats", companion._sample_collection_name)
    text = f"{stats['count']} companion documents of {stats['avgObjSize'] / 1024:.1f} KiB on average"
    if heatmaps == "files":
        sizes = [f.stat().st_size for f in Path(folder).rglob("*.png")]
        text += f", {len(sizes)} PNG files of {np.mean(sizes) / 1024:.1f} KiB on average"
    return text


def timed(label: str, work, images: int, profile: bool) -> None:
    """Run ``work()`` (which returns the regions it processed) and print its throughput."""
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    regions = work()
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - start
    print(f"{label:<26} {regions:6d} regions {wall:8.1f} s  {60 * regions / wall:9.1f} regions/min  "
          f"{wall / images:6.2f} s/image", flush=True)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"fiftyone_maskinversion|fiftyone/core", 18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=defaults.MODEL_NAME)
    parser.add_argument("--pretrained", default="")
    parser.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="images per database batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--profile", action="store_true", help="print where each mode's time goes")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}; got {args.modes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # random weights go in as a backbone object (a dataset run refuses to draw them itself)
    backbone = load_backbone(args.model, pretrained=args.pretrained or None, image_size=args.image_size,
                             device=args.device)
    dataset = fo.Dataset.from_dir(
        dataset_type=fo.types.COCODetectionDataset, data_path=str(DATA / "images"),
        labels_path=str(DATA / "instances.json"), label_types=["segmentations"], label_field="ground_truth",
        max_samples=args.max_samples, name=f"mi-throughput-{uuid.uuid4().hex[:6]}", progress=False,
    )
    dataset.compute_metadata(progress=False)
    images = len(dataset)
    print(f"{args.model} at {args.image_size} px on {args.device} ({torch.get_num_threads()} threads), "
          f"{images} images, {dataset.count('ground_truth.detections')} instances, "
          f"{defaults.ITERATIONS} iterations, fp32, {args.batch_size} images per batch")
    inverter = MaskInverter(backbone, iterations=defaults.ITERATIONS, lr=defaults.LR, alpha=defaults.ALPHA,
                            precision="fp32", blocks=defaults.BLOCKS)
    core_loop(dataset.limit(1), inverter, 1)  # warm-up (kernels, caches, the model's folded matrices): not timed
    try:
        with tempfile.TemporaryDirectory() as folder:
            for mode in modes:
                if mode == "core":
                    work = lambda: core_loop(dataset, inverter, args.batch_size)  # noqa: E731
                    timed("core loop", work, images, args.profile)
                else:
                    work = lambda m=mode: dataset_path(dataset, backbone, m, folder, args.batch_size)  # noqa: E731
                    timed(f"dataset, heatmaps={mode}", work, images, args.profile)
    finally:
        companion = mifo.heatmaps_dataset(dataset)
        if companion is not None:
            companion.delete()
        dataset.delete()


if __name__ == "__main__":
    main()
