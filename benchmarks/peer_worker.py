"""Runs the authors' package (maskinversion-torch 1.1, open_clip 2.23) on the benchmark inputs.

Executed by bench_vs_peer.py inside its own virtual environment; it must not import our package.
Usage: peer_worker.py CHECKPOINT IMAGE_PNG MASKS_NPY OUT_NPY THREADS
Prints one JSON line: {"seconds": ...}.
"""

import json
import sys
import time

import numpy as np
import open_clip
import torch
from maskinversion import MaskInversion, MaskInversionImagePreprocess
from PIL import Image


def main() -> None:
    checkpoint, image_path, masks_path, out_path, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    masks = torch.from_numpy(np.load(masks_path).astype(np.float32))
    size = masks.shape[-1]
    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-16", pretrained=checkpoint, force_image_size=size
    )
    model.eval()
    inverter = MaskInversion(model, layer_index=-1, lr=0.5, alpha=0.0, iterations=10)
    image = MaskInversionImagePreprocess(preprocess, image_size=size)(Image.open(image_path).convert("RGB"))
    start = time.perf_counter()
    embeddings = inverter.compute_maskinversion(image=image.unsqueeze(0), masks_target=masks)
    seconds = time.perf_counter() - start
    np.save(out_path, embeddings.detach().numpy())
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
