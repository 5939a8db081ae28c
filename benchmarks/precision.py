"""How far bf16-mixed embeddings are from fp32 ones: min / mean cosine per model, one table.

    .venv/bin/python benchmarks/precision.py [--masks 50] [--device cpu]
    python3 benchmarks/precision.py --device cuda --pack .gpudata/coco.npz   # on the GPU machine (see gpu.py)

Models: random ViT-B-16 at 448 px and ViT-B-32 at 224 px (seeded) on COCO-sample instance masks
(at least --masks per model, whole images), the synthetic model trained here on held-out scenes (all
four blocks and the last one), and the tiny test models on random scenes. Same inverter settings as
the defaults (10 iterations, lr 0.5); only the precision differs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fiftyone_maskinversion import MaskInverter, load_backbone  # noqa: E402
from gpu import cosines, unpack  # noqa: E402  (the GPU benchmark's pack reader)
from fiftyone_maskinversion.synthetic import scenes  # noqa: E402
from fiftyone_maskinversion.synthetic.weights import BLOCKS, register  # noqa: E402
from tests.helpers import TINY_CONFIGS, make_backbone, register_tiny_configs  # noqa: E402

COCO_DIR = REPO.parent / "shared" / "data" / "coco-val2017-mini"


def compare(backbone, items, blocks=None) -> tuple:
    """(cosines of every mask, fp32 seconds, bf16-mixed seconds) over (image, masks) items."""
    found, seconds = [], {"fp32": 0.0, "bf16-mixed": 0.0}
    for image, masks in items:
        out = {}
        for precision in seconds:
            start = time.perf_counter()
            out[precision] = MaskInverter(backbone, blocks=blocks, precision=precision).invert(image, masks)
            seconds[precision] += time.perf_counter() - start
        keep = out["fp32"].valid
        found.append(cosines(out["fp32"].embeddings[keep], out["bf16-mixed"].embeddings[keep]))
    return np.concatenate(found), seconds["fp32"], seconds["bf16-mixed"]


def packed_items(pack: Path, min_masks: int):
    """The first images of a gpu.py pack with at least ``min_masks`` instance masks in all."""
    items, count = [], 0
    for image, masks in unpack(pack):
        if masks is not None and len(masks):
            items.append((image, masks))
            count += len(masks)
            if count >= min_masks:
                return items


def coco_items(min_masks: int):
    from pycocotools.coco import COCO

    coco = COCO(str(COCO_DIR / "instances.json"))
    items, count = [], 0
    for image_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        if not anns:
            continue
        path = COCO_DIR / "images" / coco.loadImgs(image_id)[0]["file_name"]
        items.append((str(path), np.stack([coco.annToMask(a) > 0 for a in anns])))
        count += len(anns)
        if count >= min_masks:
            return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pack", type=Path, help="read the COCO sample from a gpu.py pack (no pycocotools needed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_tiny_configs()
    register()  # the shipped synthetic weights, also where the package is not installed
    coco = packed_items(args.pack, args.masks) if args.pack else coco_items(args.masks)
    rows = []
    for name, size in (("ViT-B-16", 448), ("ViT-B-32", 224)):
        torch.manual_seed(0)
        backbone = load_backbone(name, pretrained=None, image_size=size, device=args.device)
        rows.append((f"random {name}/{size}, COCO sample", *compare(backbone, coco)))
    synth = load_backbone("mi-synth-vit", "synthetic", image_size=64, device=args.device)
    held_out = [(s.image, s.masks) for s in scenes(4242, 30)]
    rows.append(("mi-synth-vit, 30 held-out scenes, blocks 0-3", *compare(synth, held_out, BLOCKS)))
    rows.append(("mi-synth-vit, 30 held-out scenes, last block", *compare(synth, held_out)))
    rng = np.random.default_rng(0)
    for name, cfg in TINY_CONFIGS.items():
        size = cfg["vision_cfg"]["image_size"]
        backbone = make_backbone(name)
        backbone.model.to(args.device)
        backbone.device = torch.device(args.device)
        items = []
        for _ in range(10):
            masks = np.zeros((4, size, size), dtype=bool)
            for k in range(4):
                top, left = rng.integers(0, size // 2, 2)
                masks[k, top:top + size // 3, left:left + size // 3] = True
            items.append((rng.integers(0, 256, (size, size, 3), dtype=np.uint8), masks))
        rows.append((f"{name} (tests), 10 random scenes", *compare(backbone, items)))

    print(f"device {args.device}, {torch.get_num_threads()} threads")
    print("| model | masks | min cosine | mean cosine | fp32 s | bf16-mixed s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, found, fp32, bf16 in rows:
        print(f"| {label} | {len(found)} | {found.min():.6f} | {found.mean():.6f} | {fp32:.1f} | {bf16:.1f} | "
              f"{fp32 / bf16:.2f}x |")
    print(f"overall min cosine: {min(r[1].min() for r in rows):.6f}")


if __name__ == "__main__":
    main()
