"""How long each step of the curation workflow takes on the COCO sample (random weights: timing only).

    .venv/bin/python benchmarks/coco_steps.py [--model ViT-B-32] [--image-size 224] [--max-samples 20]

Imports the first images of ../shared/data/coco-val2017-mini into a temporary FiftyOne dataset, then
times compute, relabel, the mask review, the mislabeled and bad-mask views, search, the index and the
layout, each called as a user would, printing seconds per step; and, inside the mask review, the time
of its localisation parts (core.badmask.localisation: the shifted / too small / too large search
and the boundary ring profile) per region, and of the ring profile alone (core.badmask.edge_profile, which
boundary and overshoot share).
"""

import argparse
import time
import uuid
from pathlib import Path

import fiftyone as fo
import torch

import fiftyone_maskinversion.core.badmask as review
import fiftyone_maskinversion.fo as mifo
from fiftyone_maskinversion import load_backbone

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-val2017-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(DATA / "images"),
                                  labels_path=str(DATA / "instances.json"), label_types=["segmentations"],
                                  label_field="ground_truth", max_samples=args.max_samples,
                                  name=f"mi-steps-{uuid.uuid4().hex[:8]}", progress=False)
    torch.manual_seed(0)
    backbone = load_backbone(args.model, pretrained=None, image_size=args.image_size)
    steps = [
        ("compute_region_embeddings", lambda: mifo.compute_region_embeddings(dataset, "ground_truth", backbone=backbone)),
        ("zero_shot_relabel (ensemble)", lambda: mifo.zero_shot_relabel(dataset, "ground_truth", backbone=backbone)),
        ("find_mislabeled", lambda: len(mifo.find_mislabeled(dataset, "ground_truth"))),
        ("score_masks (+ missing regions)", lambda: mifo.score_masks(dataset, "ground_truth", backbone=backbone)),
        ("find_bad_masks", lambda: len(mifo.find_bad_masks(dataset, "ground_truth"))),
        ("search_regions (text)", lambda: len(mifo.search_regions(dataset, "ground_truth", text="a dog",
                                                                   backbone=backbone))),
        ("build_region_index", lambda: mifo.build_region_index(dataset, "ground_truth")),
        ("visualize_regions (pca)", lambda: mifo.visualize_regions(dataset, "ground_truth", method="pca")),
    ]
    search = {"seconds": 0.0, "regions": 0, "boundary": 0.0}
    localisation, edge_profile = review.localisation, review.edge_profile

    def timed_localisation(maps, masks, *rest):
        start = time.perf_counter()
        found = localisation(maps, masks, *rest)
        search["seconds"] += time.perf_counter() - start
        search["regions"] += len(masks)
        return found

    def timed_edge_profile(*args):
        start = time.perf_counter()
        found = edge_profile(*args)
        search["boundary"] += time.perf_counter() - start
        return found

    review.localisation, review.edge_profile = timed_localisation, timed_edge_profile  # looked up at call time
    regions = dataset.count("ground_truth.detections")
    print(f"{len(dataset)} images, {regions} regions, random {args.model} at {args.image_size} px, "
          f"{args.threads} threads")
    print("| step | seconds |")
    print("| --- | --- |")
    try:
        for name, step in steps:
            start = time.perf_counter()
            step()
            print(f"| {name} | {time.perf_counter() - start:.1f} |", flush=True)
        per_region = 1000 * search["seconds"] / max(search["regions"], 1)
        print(f"\nmask review's localisation search: {search['seconds']:.2f} s for {search['regions']} regions "
              f"({per_region:.1f} ms per region)")
        print(f"of which the ring profile (boundary, overshoot): {search['boundary']:.2f} s "
              f"({1000 * search['boundary'] / max(search['regions'], 1):.1f} ms per region)")
    finally:
        review.localisation, review.edge_profile = localisation, edge_profile
        mifo.delete_region_results(dataset, "ground_truth")
        dataset.delete()


if __name__ == "__main__":
    main()
