"""Side-by-side speed and agreement of our MaskInversion against the authors' package.

Both run on identical weights (one ViT-B-16 state_dict created at 448 px), the same image and the
same masks (real COCO instance masks of one image, topped up with seeded rectangles), with 10
iterations, lr 0.5, alpha 0, on the CPU with the same thread count. The authors' package
(maskinversion-torch 1.1, which needs open_clip 2.23) is installed by this script in its own
virtual environment. Each run is a fresh subprocess, so peak RSS is per run.

Usage: python benchmarks/bench_vs_peer.py [--peer-ns 1,10,30] [--ours-ns 1,10,30,100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".peer-venv"
PEER_PACKAGES = ["maskinversion-torch==1.1", "legrad-torch==1.1", "open_clip_torch==2.23.0"]
TORCH_PAIR = ["torch==2.14.1", "torchvision==0.29.1"]
DATA = HERE.parent.parent / "shared" / "data" / "coco-val2017-mini"
IMAGE_ID = 166918  # the image of the sample with the most instances
SIZE = 448


def ensure_peer_venv() -> Path:
    """The authors' package in its own venv (created on first use)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + TORCH_PAIR, check=True)
        subprocess.run(pip + TORCH_PAIR + PEER_PACKAGES, check=True)
    return python


def write_inputs(workdir: Path, count: int) -> tuple:
    """(checkpoint, image png, masks npy of `count` masks) in workdir; deterministic."""
    import open_clip
    import torch
    from PIL import Image
    from pycocotools.coco import COCO

    checkpoint = workdir / "vit-b-16-448.pt"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=SIZE)
    torch.save(model.state_dict(), checkpoint)

    coco = COCO(str(DATA / "instances.json"))
    info = coco.loadImgs(IMAGE_ID)[0]
    image = Image.open(DATA / "images" / info["file_name"]).convert("RGB").resize((SIZE, SIZE), 3)
    image_path = workdir / "image.png"
    image.save(image_path)
    masks = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=IMAGE_ID, iscrowd=False)):
        mask = Image.fromarray(coco.annToMask(ann) * 255).resize((SIZE, SIZE), Image.NEAREST)
        if np.asarray(mask).any():
            masks.append(np.asarray(mask) > 0)
    rng = np.random.default_rng(0)
    while len(masks) < count:
        top, left = rng.integers(0, SIZE - 64, 2)
        height, width = rng.integers(32, 200, 2)
        mask = np.zeros((SIZE, SIZE), bool)
        mask[top : top + height, left : left + width] = True
        masks.append(mask)
    masks_path = workdir / "masks.npy"
    np.save(masks_path, np.stack(masks[:count]))
    return checkpoint, image_path, masks_path


def run_ours(checkpoint: str, image_path: str, masks_path: str, out_path: str, threads: int, precision: str) -> dict:
    """Worker: our fast engine on the inputs; returns seconds and peak RSS of this process."""
    import torch

    from fiftyone_maskinversion import MaskInverter, load_backbone

    torch.set_num_threads(threads)
    backbone = load_backbone("ViT-B-16", pretrained=checkpoint, image_size=SIZE, device="cpu")
    masks = np.load(masks_path)
    inverter = MaskInverter(backbone, iterations=10, lr=0.5, alpha=0.0, precision=precision)
    start = time.perf_counter()
    result = inverter.invert(image_path, masks)
    seconds = time.perf_counter() - start
    np.save(out_path, result.embeddings)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "dice": float(np.nanmean(result.dice))}


def subprocess_json(cmd: list) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-ns", default="1,10,30")
    parser.add_argument("--ours-ns", default="1,10,30,100")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="ours: fp32, bf16-mixed or auto (the default)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    peer_ns = [int(n) for n in args.peer_ns.split(",") if n]
    ours_ns = sorted(set(int(n) for n in args.ours_ns.split(",") if n) | set(peer_ns))
    peer_python = ensure_peer_venv() if peer_ns else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint, image_path, all_masks = write_inputs(workdir, max(ours_ns))
        for n in ours_ns:
            masks_path = workdir / f"masks{n}.npy"
            np.save(masks_path, np.load(all_masks)[:n])
            inputs = [str(checkpoint), str(image_path), str(masks_path)]
            ours_out = workdir / f"ours{n}.npy"
            ours = subprocess_json(
                [sys.executable, __file__, "--worker", *inputs, str(ours_out), str(args.threads), args.precision]
            )
            row = {"n": n, "ours": ours}
            if n in peer_ns:
                peer_out = workdir / f"peer{n}.npy"
                worker = str(HERE / "peer_worker.py")
                row["peer"] = subprocess_json(
                    [str(peer_python), worker, *inputs, str(peer_out), str(args.threads)]
                )
                row["cosine"] = cosines(np.load(ours_out), np.load(peer_out)).tolist()
            rows.append(row)
            print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_row(row: dict) -> None:
    n, ours = row["n"], row["ours"]
    line = (
        f"N={n:4d} | ours {ours['seconds']:7.2f} s/image {ours['seconds'] / n:6.3f} s/mask"
        f" peak RSS {ours['peak_rss_mb']:6.0f} MB"
    )
    if "peer" in row:
        peer = row["peer"]["seconds"]
        cos = np.array(row["cosine"])
        line += (
            f" | peer {peer:7.2f} s/image {peer / n:6.3f} s/mask | speed-up {peer / ours['seconds']:5.2f}x"
            f" | cosine min {cos.min():.6f} mean {cos.mean():.6f}"
        )
    print(line, flush=True)
    if "cosine" in row:
        print("       per-mask cosine: " + " ".join(f"{c:.5f}" for c in row["cosine"]), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(run_ours(*sys.argv[2:6], int(sys.argv[6]), sys.argv[7])))
    else:
        main()
