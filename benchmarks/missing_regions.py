"""How well the suggested missing regions find objects nobody annotated, on held-out synthetic scenes.

    .venv/bin/python benchmarks/missing_regions.py [--scenes 60] [--seed 4242]

One object of every scene is left unannotated; the mask review runs on the others with the model
trained here (blocks 0-3, one template). A suggestion is a hit when it names the left-out object's
class and at least 30 % of its box lies on that object. Prints, per score threshold, without and
with the confirmation by the MaskInversion embedding of the box (defaults: score >=
defaults.MIN_MISSING_SCORE, confirmation >= defaults.MISSING_CONFIRMATION): precision (the share of
suggestions that are hits) and recall (the share of left-out objects found by at least one).
"""

import argparse

import numpy as np

from fiftyone_maskinversion import MaskInverter, defaults, load_backbone
from fiftyone_maskinversion.core.badmask import review_masks
from fiftyone_maskinversion.core.zeroshot import class_embeddings
from fiftyone_maskinversion.synthetic import CLASSES, scenes
from fiftyone_maskinversion.synthetic.weights import BLOCKS, IMAGE_SIZE, MODEL_NAME, TAG

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
CONFIRMATIONS = (0.0, 0.5, defaults.MISSING_CONFIRMATION, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    backbone = load_backbone(MODEL_NAME, pretrained=TAG, image_size=IMAGE_SIZE, device="cpu")
    text = class_embeddings(backbone, list(CLASSES), [defaults.SINGLE_PROMPT])
    rng = np.random.default_rng(0)
    inverter = MaskInverter(backbone, blocks=BLOCKS)
    suggestions, placed = [], []  # (scene number, score, confirmation, hit)
    for number, scene in enumerate(scenes(args.seed, args.scenes)):
        left_out = int(rng.integers(len(scene.names)))
        kept = [i for i in range(len(scene.names)) if i != left_out]
        review = review_masks(backbone, scene.image, scene.masks[kept], [CLASSES.index(scene.names[i]) for i in kept],
                              text, np.ones(len(kept)), blocks=BLOCKS, min_missing_score=0.0, inverter=inverter,
                              confirmation=0.0)
        size = scene.image.shape[0]
        target = scene.masks[left_out]
        for suggestion in review.missing:
            x, y, w, h = (round(v * size) for v in suggestion.box)
            on_object = target[y:y + h, x:x + w].mean() if w and h else 0.0
            hit = CLASSES[suggestion.class_index] == scene.names[left_out] and on_object >= 0.3
            placed.append(on_object >= 0.3)
            suggestions.append((number, suggestion.score, suggestion.confirmation, hit))
    print(f"{args.scenes} scenes (seed {args.seed}), one object left out of each; {sum(placed)} of {len(placed)} suggestions lie on it")
    print("| least score | least confirmation | suggestions | hits | false | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for threshold in THRESHOLDS:
        for least in CONFIRMATIONS:
            kept = [(n, hit) for n, s, c, hit in suggestions if s >= threshold and c >= least]
            hits = sum(hit for _, hit in kept)
            found = len({n for n, hit in kept if hit})
            precision = f"{hits / len(kept):.2f}" if kept else "-"
            print(f"| {threshold} | {least} | {len(kept)} | {hits} | {len(kept) - hits} | {precision} | "
                  f"{found / args.scenes:.2f} ({found}/{args.scenes}) |")


if __name__ == "__main__":
    main()
