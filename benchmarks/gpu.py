"""The engine on a CUDA GPU: exactness against the autograd engine, time and peak memory per image for
N = 1, 10, 100 masks (ViT-B-16 at 448 px, fp32 and bf16-mixed), and a core loop over the COCO sample.

    .venv/bin/python benchmarks/gpu.py --pack .gpudata/coco.npz      # here: pack the COCO sample (images + masks)
    python3 benchmarks/gpu.py --data .gpudata/coco.npz                # on the GPU machine

The GPU machine has no FiftyOne and no pycocotools, so the sample travels packed: JPEG bytes and
packed-bit instance masks. Random weights (seeded); 10 iterations, lr 0.5, alpha 0.
"""

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fiftyone_maskinversion import MaskInverter, load_backbone  # noqa: E402

COCO_DIR = REPO.parent / "shared" / "data" / "coco-val2017-mini"
SIZE = 448


def pack(out: Path) -> None:
    """Every COCO-sample image (JPEG bytes) with its non-crowd instance masks (packed bits)."""
    from pycocotools.coco import COCO

    coco = COCO(str(COCO_DIR / "instances.json"))
    arrays = {}
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        info = coco.loadImgs(image_id)[0]
        masks = [coco.annToMask(a) > 0 for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))]
        arrays[f"jpeg{index}"] = np.frombuffer((COCO_DIR / "images" / info["file_name"]).read_bytes(), np.uint8)
        arrays[f"masks{index}"] = np.packbits(np.stack(masks) if masks else np.zeros((0, 1, 1), bool), axis=-1)
        arrays[f"shape{index}"] = np.array([len(masks), info["height"], info["width"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, count=np.array(index + 1), **arrays)
    print(f"packed {index + 1} images into {out} ({out.stat().st_size / 1e6:.1f} MB)")


def unpack(path: Path):
    """(PIL image, N x H x W bool masks) per image of a pack."""
    data = np.load(path)
    for index in range(int(data["count"])):
        count, height, width = data[f"shape{index}"]
        masks = np.unpackbits(data[f"masks{index}"], axis=-1, count=width).astype(bool) if count else None
        yield Image.open(io.BytesIO(data[f"jpeg{index}"].tobytes())).convert("RGB"), masks


def masks_for(image: Image.Image, masks: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` masks: the image's instances, topped up with seeded rectangles."""
    rng = np.random.default_rng(seed)
    found = [m for m in masks]
    height, width = image.height, image.width
    while len(found) < count:
        top, left = rng.integers(0, height - 32), rng.integers(0, width - 32)
        mask = np.zeros((height, width), bool)
        mask[top: top + rng.integers(32, height // 2), left: left + rng.integers(32, width // 2)] = True
        found.append(mask)
    return np.stack(found[:count])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def timed(inverter: MaskInverter, image, masks, repeats: int = 3) -> tuple:
    """(best seconds, peak GPU bytes, result) of invert() after a warm-up call."""
    inverter.invert(image, masks)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = inverter.invert(image, masks)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated(), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, help="write the packed COCO sample here and stop")
    parser.add_argument("--data", type=Path, default=REPO / ".gpudata" / "coco.npz")
    parser.add_argument("--images", type=int, default=None, help="images of the core loop (default: all)")
    args = parser.parse_args()
    if args.pack:
        return pack(args.pack)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    samples = list(unpack(args.data))
    image, instances = next((im, m) for im, m in samples if m is not None and len(m) >= 5)

    torch.manual_seed(0)
    backbone = load_backbone("ViT-B-16", pretrained=None, image_size=SIZE, device=device)
    masks = masks_for(image, instances, 5)
    fast = MaskInverter(backbone, precision="fp32").invert(image, masks)
    slow = MaskInverter(backbone, engine="autograd").invert(image, masks)
    print(f"fast vs autograd on CUDA (5 masks): min cosine {cosines(fast.embeddings, slow.embeddings).min():.6f}, "
          f"max heatmap difference {np.abs(fast.heatmaps - slow.heatmaps).max():.2e}")

    print("| N | precision | s / image | ms / mask | peak GPU memory | min cosine to fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in (1, 10, 100):
        masks = masks_for(image, instances, count)
        reference = None
        for precision in ("fp32", "bf16-mixed"):
            seconds, peak, result = timed(MaskInverter(backbone, precision=precision), image, masks)
            reference = result.embeddings if reference is None else reference
            cos = cosines(result.embeddings, reference).min()
            print(f"| {count} | {precision} | {seconds:.3f} | {1000 * seconds / count:.1f} | {peak / 2**30:.2f} GiB | "
                  f"{cos:.6f} |", flush=True)

    inverter = MaskInverter(backbone, precision="fp32")
    regions, start = 0, time.perf_counter()
    for image, instances in samples[: args.images]:
        if instances is not None and len(instances):
            regions += int(inverter.invert(image, instances).valid.sum())
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    print(f"core loop over {len(samples[: args.images])} COCO-sample images (decode done, fp32): {regions} regions "
          f"in {wall:.1f} s = {60 * regions / wall:.0f} regions/min")


if __name__ == "__main__":
    main()
