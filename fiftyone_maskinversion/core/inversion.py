"""MaskInversion: per-mask embeddings learned at test time so that their LeGrad map matches the mask."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import defaults
from .backbone import Backbone
from .block_state import ImageState, capture_image_state, resolve_blocks
from .inputs import ImageInput, MaskInput, load_rgb, prepare_masks
from .legrad import ENGINES, make_engine, relevance_to_maps
from .metrics import binary_iou, soft_dice_loss
from .precision import resolve_precision

# Engine work memory per chunk of masks. On the CPU one mask at a time is fastest (the n x n
# attention-gradient buffers of one ViT-B-16/448 mask already exceed the caches); on CUDA a chunk may
# take this share of the memory free when the image's masks start (GPUs want large batches).
CPU_MEMORY_BUDGET = 1 << 27
CUDA_FREE_MEMORY_SHARE = 0.5


@dataclass
class InversionResult:
    """Per-mask outputs of one image. Rows of masks that could not be used are NaN, with a reason."""

    embeddings: np.ndarray  # N x D, unnormalised, comparable to encode_image outputs
    heatmaps: np.ndarray  # N x S x S in [0,1]: the final LeGrad map of each embedding
    dice: np.ndarray  # N: soft Dice coefficient of the final map and the (resized) mask
    iou: np.ndarray  # N: IoU of map >= 0.5 and mask >= 0.5
    loss_history: np.ndarray  # iterations x N: the loss before each optimiser step
    valid: np.ndarray  # N bool
    errors: List[Optional[str]] = field(default_factory=list)  # N: why a mask has no embedding
    image_embedding: Optional[np.ndarray] = None  # D, the model's own image embedding


def check_method(iterations: int, lr: float, alpha: float) -> None:
    """Raise ValueError for settings the optimisation cannot use (checked before any work or write)."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")


class MaskInverter:
    """Learns one localized embedding per mask; the model stays frozen and is forwarded once per image."""

    def __init__(
        self,
        backbone: Backbone,
        iterations: int = defaults.ITERATIONS,
        lr: float = defaults.LR,
        alpha: float = defaults.ALPHA,
        engine: str = defaults.ENGINE,
        blocks: Optional[Sequence[int]] = defaults.BLOCKS,
        memory_budget: Optional[int] = None,
        precision: str = defaults.PRECISION,
    ):
        """``precision``: "fp32" (exact), "bf16-mixed" (bf16 operands in the per-token MLP/projection
        GEMMs, the rest fp32) or "auto" (bf16-mixed where the device multiplies bf16 natively, and with
        the fast engine only); ``self.precision`` is the resolved one."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
        check_method(iterations, lr, alpha)
        self.backbone = backbone
        self.iterations = iterations
        self.lr = lr
        self.alpha = alpha
        self.engine = engine
        self.blocks = resolve_blocks(backbone, blocks)
        self.precision = "fp32" if engine == "autograd" and precision == "auto" else resolve_precision(
            precision, backbone.device)
        if engine == "autograd" and self.precision != "fp32":
            raise ValueError("the autograd engine is the fp32 reference: use precision='fp32' or 'auto' with it")
        self.memory_budget = memory_budget

    def invert(self, image: ImageInput, masks: MaskInput, state: Optional[ImageState] = None) -> InversionResult:
        """Localized embeddings of N binary masks (N x H x W, the image's size) of one image. ``state``:
        this image's forward pass, already captured for this inverter's blocks (saves a second one)."""
        backbone = self.backbone
        rgb = load_rgb(image, min_side=backbone.patch_size)
        prepared = prepare_masks(masks, (rgb.height, rgb.width), backbone.image_size, backbone.device)
        count, dim, size = len(prepared.valid), backbone.embed_dim, backbone.image_size
        result = InversionResult(
            embeddings=np.full((count, dim), np.nan, dtype=np.float32),
            heatmaps=np.full((count, size, size), np.nan, dtype=np.float32),
            dice=np.full(count, np.nan, dtype=np.float32),
            iou=np.full(count, np.nan, dtype=np.float32),
            loss_history=np.full((self.iterations, count), np.nan, dtype=np.float32),
            valid=prepared.valid,
            errors=prepared.errors,
        )
        if not prepared.valid.any():
            return result
        if state is None:
            state = capture_image_state(backbone, backbone.pixels(rgb), self.blocks)
        elif [block.module for block in state.blocks] != [backbone.visual.transformer.resblocks[i] for i in self.blocks]:
            raise ValueError(f"the image state was captured for other blocks than this inverter's {self.blocks}")
        result.image_embedding = state.image_embedding[0].cpu().numpy()
        engine = make_engine(self.engine, backbone, state, self.precision)
        rows = np.flatnonzero(prepared.valid)
        chunk = engine.plan(len(rows), 2 * self.iterations + 1, self._work_memory())
        for start in range(0, len(rows), chunk):
            part = slice(start, start + chunk)
            targets = prepared.grid_masks[part]
            self._invert_chunk(engine, state.image_embedding, targets, rows[part], len(rows), result)
        return result

    def _work_memory(self) -> int:
        """Bytes the engine may use for one chunk of masks: the budget given, else by device."""
        if self.memory_budget:
            return self.memory_budget
        device = self.backbone.device
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0] * CUDA_FREE_MEMORY_SHARE)
        return CPU_MEMORY_BUDGET

    def _invert_chunk(self, engine, image_embedding, targets, rows, count, result) -> None:
        """Optimise the embeddings of one chunk of masks and write them into ``result`` rows.

        The objective of a call is the mean of the per-mask losses over all ``count`` masks, as in the
        authors' implementation (masks only interact through AdamW's epsilon), whatever the chunking.
        """
        grid, patch = self.backbone.grid_size, self.backbone.patch_size
        anchor = F.normalize(image_embedding, dim=-1)
        embedding = image_embedding.repeat(len(rows), 1).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([embedding], lr=self.lr, weight_decay=0.0)
        history = []  # kept on the device: copying each step's loss would wait for the device every step
        for _ in range(self.iterations):
            query = F.normalize(embedding, dim=-1)
            maps = relevance_to_maps(engine.relevance(query), grid, patch)
            loss = soft_dice_loss(maps, targets) + self.alpha * (1.0 - (query * anchor).sum(dim=-1))
            optimizer.zero_grad()
            (loss.sum() / count).backward()
            optimizer.step()
            history.append(loss.detach())
        if history:
            result.loss_history[:, rows] = _to_host(torch.stack(history))
        with torch.no_grad():
            final = relevance_to_maps(engine.relevance(F.normalize(embedding, dim=-1)), grid, patch)
            result.embeddings[rows] = _to_host(embedding)
            result.heatmaps[rows] = _to_host(final)
            result.dice[rows] = _to_host(1.0 - soft_dice_loss(final, targets))
            result.iou[rows] = _to_host(binary_iou(final, targets))


def _to_host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array; from a GPU through page-locked memory, which the copy engine
    writes directly (the 100 heatmaps of one image are 80 MB at 448 px)."""
    if tensor.device.type != "cuda":
        return tensor.cpu().numpy()
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return pinned.copy_(tensor).numpy()
