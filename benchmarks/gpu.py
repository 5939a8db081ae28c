"""The engine on a CUDA GPU: time and peak memory per image for N = 1, 10, 100 masks, each row's
embeddings against the autograd engine's (ViT-B-16 at 448 px: fp32 by the direct products as the
baseline, fp32 and bf16-mixed as the engine chooses, i.e. with the linear map from 32 masks on, and the
autograd engine with other chunks for its own fp32 noise), the profile of the 100-mask call, a core loop
over the COCO sample, several images per chunk (10 COCO-sample images x 9 masks: invert_many, with and
without one batched forward, against one invert call per image), and last, for information, how far
TF32 matrix products move fp32 results (with exact_fp32 pinning, they should not move them at all).

    .venv/bin/python benchmarks/gpu.py --pack .gpudata/coco.npz      # here: pack the COCO sample (images + masks)
    python3 benchmarks/gpu.py --data .gpudata/coco.npz                # on the GPU machine
    .venv/bin/python benchmarks/gpu.py --data .gpudata/coco.npz --only images-per-chunk --device cpu \
        --model ViT-B-32 --size 224                                  # that one table on any device and model

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
from fiftyone_maskinversion.core import legrad  # noqa: E402

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
    return best_of(lambda: inverter.invert(image, masks), torch.device("cuda"), repeats)


def best_of(call, device: torch.device, repeats: int = 3) -> tuple:
    """(best seconds, peak GPU bytes or 0 on a CPU, last result) of ``call()`` after a warm-up call."""
    cuda = device.type == "cuda"
    call()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() if cuda else 0, result


VARIANTS = ("fp32 direct", "fp32", "bf16-mixed", "autograd, 25 masks per chunk")


def run_variant(backbone, image, masks, variant: str) -> tuple:
    """timed() of one row's settings: "fp32 direct" never builds the linear map (the engine before it had
    one); "autograd, 25 masks per chunk" is the reference with other sums, i.e. its own fp32 noise."""
    min_batch = legrad.LINEAR_MAP_MIN_BATCH
    try:
        if variant == "fp32 direct":
            legrad.LINEAR_MAP_MIN_BATCH = 1 << 30
        if variant.startswith("autograd"):
            tokens = backbone.grid_size**2 + 1
            per_mask = 12 * 4 * backbone.visual.transformer.resblocks[-1].attn.num_heads * tokens**2
            return timed(MaskInverter(backbone, engine="autograd", memory_budget=25 * per_mask), image, masks)
        precision = "bf16-mixed" if variant == "bf16-mixed" else "fp32"
        return timed(MaskInverter(backbone, precision=precision), image, masks)
    finally:
        legrad.LINEAR_MAP_MIN_BATCH = min_batch


def tf32_cosines(backbone, image, instances) -> None:
    """Min cosine to the autograd engine of fp32 runs with TF32 switched on by the caller: the inverter pins
    full fp32 products (exact_fp32), so these should equal the fp32 rows; run last, since switching TF32
    on and off was seen to leave later fp32 results changed."""
    for count in (1, 10, 100):
        masks = masks_for(image, instances, count)
        torch.backends.cuda.matmul.allow_tf32 = False
        reference = MaskInverter(backbone, engine="autograd").invert(image, masks).embeddings
        torch.backends.cuda.matmul.allow_tf32 = True
        result = MaskInverter(backbone, precision="fp32").invert(image, masks).embeddings
        print(f"fp32 with the caller's TF32 switched on, N = {count}: min cosine to the autograd engine "
              f"{cosines(result, reference).min():.6f}")


def images_per_chunk(backbone, samples, images: int = 10, masks_per_image: int = 9, repeats: int = 3) -> None:
    """COCO-like load (``images`` images x ``masks_per_image`` masks, instances topped up with rectangles):
    one invert call per image against invert_many (masks of several images per chunk), with per-image
    forwards and with one batched forward; min cosine of each row's embeddings to the per-image ones."""
    batch = [(image, masks_for(image, instances if instances is not None else np.zeros((0, 1, 1), bool),
                               masks_per_image, seed=k)) for k, (image, instances) in enumerate(samples[:images])]
    inverter = MaskInverter(backbone, precision="fp32")
    device = backbone.device
    rows = {
        "one image at a time": lambda: [inverter.invert(image, masks) for image, masks in batch],
        "invert_many": lambda: inverter.invert_many(batch),
        "invert_many, batched forward": lambda: inverter.invert_many(batch, batch_forward=True),
    }
    print(f"{len(batch)} images x {masks_per_image} masks, {backbone.model_name} at {backbone.image_size} px, "
          f"{device}, fp32:")
    print("| variant | s for all images | ms / mask | peak GPU memory | min cosine to one image at a time |")
    print("| --- | --- | --- | --- | --- |")
    reference = None
    for name, call in rows.items():
        seconds, peak, results = best_of(call, device, repeats)
        embeddings = np.concatenate([result.embeddings for result in results])
        reference = embeddings if reference is None else reference
        print(f"| {name} | {seconds:.3f} | {1000 * seconds / len(embeddings):.1f} | {peak / 2**30:.2f} GiB | "
              f"{cosines(embeddings, reference).min():.6f} |", flush=True)


def profile(backbone, image, masks) -> None:
    """The CUDA kernels that take the time of one fp32 call (as the engine chooses), top 12."""
    inverter = MaskInverter(backbone, precision="fp32")
    inverter.invert(image, masks)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        inverter.invert(image, masks)
        torch.cuda.synchronize()
    print(f"profile of one fp32 call with {len(masks)} masks:")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, help="write the packed COCO sample here and stop")
    parser.add_argument("--data", type=Path, default=REPO / ".gpudata" / "coco.npz")
    parser.add_argument("--images", type=int, default=None, help="images of the core loop (default: all)")
    parser.add_argument("--only", choices=["images-per-chunk"], help="run this table only")
    parser.add_argument("--device", default="cuda", help="with --only: the device (default cuda)")
    parser.add_argument("--model", default="ViT-B-16", help="with --only: the open_clip model (random weights)")
    parser.add_argument("--size", type=int, default=SIZE, help="with --only: the image size")
    parser.add_argument("--repeats", type=int, default=3, help="with --only: timed calls per row (best kept)")
    args = parser.parse_args()
    if args.pack:
        return pack(args.pack)
    samples = list(unpack(args.data))
    if args.only:
        torch.manual_seed(0)
        backbone = load_backbone(args.model, pretrained=None, image_size=args.size, device=args.device)
        return images_per_chunk(backbone, samples, repeats=args.repeats)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    image, instances = next((im, m) for im, m in samples if m is not None and len(m) >= 5)

    torch.manual_seed(0)
    backbone = load_backbone("ViT-B-16", pretrained=None, image_size=SIZE, device=device)
    masks = masks_for(image, instances, 5)
    fast = MaskInverter(backbone, precision="fp32").invert(image, masks)
    slow = MaskInverter(backbone, engine="autograd").invert(image, masks)
    print(f"fast vs autograd on CUDA (5 masks): min cosine {cosines(fast.embeddings, slow.embeddings).min():.6f}, "
          f"max heatmap difference {np.abs(fast.heatmaps - slow.heatmaps).max():.2e}")

    print("| N | variant | s / image | ms / mask | peak GPU memory | min cosine to the autograd engine |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in (1, 10, 100):
        masks = masks_for(image, instances, count)
        reference = MaskInverter(backbone, engine="autograd").invert(image, masks).embeddings
        for variant in VARIANTS:
            if count < legrad.LINEAR_MAP_MIN_BATCH and variant == "fp32":
                continue  # the same code as "fp32 direct" below the map's batch
            seconds, peak, result = run_variant(backbone, image, masks, variant)
            cos = cosines(result.embeddings, reference).min()
            print(f"| {count} | {variant} | {seconds:.3f} | {1000 * seconds / count:.1f} | {peak / 2**30:.2f} GiB | "
                  f"{cos:.6f} |", flush=True)
    profile(backbone, image, masks_for(image, instances, 100))

    inverter = MaskInverter(backbone, precision="fp32")
    regions, start = 0, time.perf_counter()
    for sample_image, sample_instances in samples[: args.images]:
        if sample_instances is not None and len(sample_instances):
            regions += int(inverter.invert(sample_image, sample_instances).valid.sum())
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    print(f"core loop over {len(samples[: args.images])} COCO-sample images (decode done, fp32): {regions} regions "
          f"in {wall:.1f} s = {60 * regions / wall:.0f} regions/min")
    images_per_chunk(backbone, samples)
    tf32_cosines(backbone, image, instances)


if __name__ == "__main__":
    main()
