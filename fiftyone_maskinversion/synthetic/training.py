"""Train the small CLIP ``mi-synth-vit`` on synthetic scenes of both worlds and save its compact weights.

    python -m fiftyone_maskinversion.synthetic.training [--steps 1000] [--worlds objects,context]
        [--init COMPACT_FILE] [--lr 2e-3] [--threads 2] [--out PATH]

Seeded and reproducible on the CPU (deterministic scene stream, fixed init; the command fixes the
thread count, the function leaves the process's setting alone). The shipped weights were trained in
two stages (docs/evaluation.md): 1000 steps from scratch on the objects world, then 300 steps on both
worlds starting from those weights (``--init``), which teaches the context world in minutes.
The weights are saved in the compact format of ``compact_weights`` and load as
``load_backbone("mi-synth-vit", pretrained="synthetic")``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import open_clip
import torch

from .scenes import SCENE_MAKERS, WORLDS
from .weights import COMPACT_FILE, MODEL_NAME, expand_compact, register, save_compact

TRAIN_SEED = 1234  # evaluation scenes use other seeds


def _batch(rng: np.random.Generator, size: int, tokenizer, worlds: Sequence[str]) -> tuple:
    """Normalised images and tokenised captions, the scenes' worlds taken in turn."""
    scenes = [SCENE_MAKERS[worlds[i % len(worlds)]](rng, min_objects=1) for i in range(size)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std, tokenizer([s.caption for s in scenes])


def train(steps: int = 1000, batch_size: int = 128, lr: float = 2e-3, seed: int = TRAIN_SEED, log_every: int = 50,
          worlds: Sequence[str] = ("objects",), init: Optional[Path] = None):
    """Contrastive training on scenes of ``worlds``, from scratch or from the compact weights ``init``;
    returns (model, token ids seen, including those ``init`` was trained with)."""
    unknown = set(worlds) - set(WORLDS)
    if not worlds or unknown:
        raise ValueError(f"worlds must be a non-empty subset of {WORLDS}, got {list(worlds)}")
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"no compact weights at {init}")
    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    seen = set()
    if init is not None:
        model.load_state_dict(expand_compact(Path(init), MODEL_NAME))
        seen.update(torch.load(init, map_location="cpu", weights_only=True)["compact_token_ids"].tolist())
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    rng = np.random.default_rng(seed)
    model.train()
    start = time.time()
    for step in range(steps):
        images, texts = _batch(rng, batch_size, tokenizer, worlds)
        seen.update(texts.unique().tolist())
        out = model(images, texts)
        image_features, text_features, logit_scale = out[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f} s", flush=True)
    return model.eval(), sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--worlds", default="objects", help="comma-separated scene worlds, taken in turn")
    parser.add_argument("--init", type=Path, default=None, help="start from these compact weights")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED, help="seed of the initialisation and the scene stream")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the shipped weights used 2)")
    parser.add_argument("--out", type=Path, default=COMPACT_FILE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    model, seen = train(args.steps, args.batch_size, args.lr, args.seed, worlds=args.worlds.split(","), init=args.init)
    save_compact(model, seen, args.out)
    print(f"trained in {time.time() - start:.0f} s; saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
