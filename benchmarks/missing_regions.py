"""How well the suggested missing regions find objects nobody annotated, on held-out synthetic scenes.

    .venv/bin/python benchmarks/missing_regions.py [--scenes 60] [--seed 4242]

One object of every scene is left unannotated; the mask review runs on the others with the model
trained here (blocks 0-3, one template). A suggestion is a hit when it names the left-out object's
class and at least 30 % of its box lies on that object. Prints hits and false suggestions per
score threshold, without and with the confirmation by the MaskInversion embedding of the box
(defaults: score >= defaults.MIN_MISSING_SCORE, confirmation >= defaults.MISSING_CONFIRMATION).
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
    hits, false, placed = [], [], []
    for scene in scenes(args.seed, args.scenes):
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
            (hits if hit else false).append((suggestion.score, suggestion.confirmation))
    print(f"{args.scenes} scenes (seed {args.seed}), one object left out of each; {sum(placed)} of {len(placed)} suggestions lie on it")
    print("| least score | least confirmation | left-out objects found | false suggestions |")
    print("| --- | --- | --- | --- |")
    for threshold in THRESHOLDS:
        for least in CONFIRMATIONS:
            found = sum(s >= threshold and c >= least for s, c in hits)
            wrong = sum(s >= threshold and c >= least for s, c in false)
            print(f"| {threshold} | {least} | {found} | {wrong} |")


if __name__ == "__main__":
    main()
