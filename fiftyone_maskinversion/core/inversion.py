"""MaskInversion: per-mask embeddings learned at test time so that their LeGrad map matches the mask."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import defaults
from .backbone import Backbone
from .block_state import ImageState, capture_image_states, resolve_blocks
from .inputs import ImageInput, MaskInput, PreparedMasks, load_rgb, prepare_masks
from .legrad import ENGINES, LINEAR_MAP_MIN_BATCH, chunk_memory, make_engine, relevance_to_maps
from .metrics import binary_iou, soft_dice_loss
from .precision import exact_fp32, resolve_precision
from .transfer import to_host

# Engine work memory per chunk of masks. On the CPU one mask at a time is fastest (the n x n
# attention-gradient buffers of one ViT-B-16/448 mask already exceed the caches); on CUDA a chunk may
# take this share of the memory PyTorch can use when the chunk is planned (GPUs want large batches).
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


@dataclass
class _ChunkOutput:
    """Host copies of one chunk's results, one row (column for the history) per mask of the chunk."""

    embeddings: np.ndarray
    heatmaps: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    history: np.ndarray


def check_method(iterations: int, lr: float, alpha: float) -> None:
    """Raise ValueError for settings the optimisation cannot use (checked before any work or write)."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")


def usable_device_memory(device: torch.device) -> int:
    """Bytes PyTorch can still allocate on a CUDA device: the free device memory plus what its caching
    allocator has reserved but not handed out (mem_get_info alone shrinks as that cache grows, which
    would shrink the chunks from image to image and flip the linear-map decision)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


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
        the fast engine only); ``self.precision`` is the resolved one. Either way the fp32 matrix products
        are computed in full fp32 whatever the caller's TF32 / bf16 settings (see ``exact_fp32``)."""
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

    @exact_fp32()
    def invert(self, image: ImageInput, masks: MaskInput, state: Optional[ImageState] = None) -> InversionResult:
        """Localized embeddings of N binary masks (N x H x W, the image's size) of one image. ``state``:
        this image's forward pass, already captured for this inverter's blocks (saves a second one)."""
        if state is not None and [block.module for block in state.blocks] != [
                self.backbone.visual.transformer.resblocks[i] for i in self.blocks]:
            raise ValueError(f"the image state was captured for other blocks than this inverter's {self.blocks}")
        return self._invert_images([self._prepare(image, masks)], None if state is None else [state])[0]

    @exact_fp32()
    def invert_many(self, items: Sequence[Tuple[ImageInput, MaskInput]],
                    batch_forward: bool = False) -> List[InversionResult]:
        """:meth:`invert` of each (image, masks) pair, in order, with the masks of several images sharing
        one chunk as far as the device's memory allows: on a GPU, images with a few masks each no longer
        leave it idle. Each mask attends only to its own image, with its own image's objective, so the
        results equal per-image :meth:`invert` up to fp32 rounding. ``batch_forward``: one forward pass
        for the images of a chunk instead of one per image; its rounding differs from the single-image
        forward's (up to 4.8e-7 in the block outputs of the test models), which the optimisation can
        amplify (cosine 0.99983 to per-image results measured on one of them; 0.999999 for a random
        ViT-B-32/224 on COCO masks), so it is off unless asked for.
        Every image and mask is checked before any work; all images' resized masks and results are held
        until the call returns, so pass a batch of images (e.g. one database batch), not a whole dataset."""
        prepared = [self._prepare(image, masks) for image, masks in items]
        results = []
        for group in self._image_groups([int(masks.valid.sum()) for _, masks in prepared]):
            results += self._invert_images([prepared[k] for k in group], batch_forward=batch_forward)
        return results

    def _prepare(self, image: ImageInput, masks: MaskInput) -> Tuple[Image.Image, PreparedMasks]:
        """The image as RGB and its masks checked and resized to the model's grid (InputError if unusable)."""
        rgb = load_rgb(image, min_side=self.backbone.patch_size)
        size = self.backbone.image_size
        return rgb, prepare_masks(masks, (rgb.height, rgb.width), size, self.backbone.device)

    def _image_groups(self, counts: Sequence[int]) -> List[List[int]]:
        """Consecutive images whose masks are inverted in one chunk: as many as the work memory holds
        (their constants and their masks' work); an image with enough masks for the fast engine's
        linear map to pay off is inverted alone, where it can have one."""
        work = self._work_memory()

        def fits(images: int, masks: int) -> bool:
            per_mask, per_image = chunk_memory(self.engine, self.backbone, self.blocks, images)
            return masks * per_mask + images * per_image <= work

        groups: List[List[int]] = []
        masks, closed = 0, True
        for index, count in enumerate(counts):
            alone = count >= LINEAR_MAP_MIN_BATCH
            if not closed and not alone and fits(len(groups[-1]) + 1, masks + count):
                groups[-1].append(index)
                masks += count
            else:
                groups.append([index])
                masks = count
            closed = alone
        return groups

    def _invert_images(self, inputs: Sequence[Tuple[Image.Image, PreparedMasks]],
                       states: Optional[Sequence[ImageState]] = None,
                       batch_forward: bool = False) -> List[InversionResult]:
        """Results of the masks of one or more images, inverted together (``states``: their forward passes,
        one per image with a valid mask; else captured here, in one batched forward if ``batch_forward``)."""
        backbone = self.backbone
        results = [self._empty_result(masks) for _, masks in inputs]
        active = [k for k, (_, masks) in enumerate(inputs) if masks.valid.any()]
        if not active:
            return results
        if states is None:
            pixels = [backbone.pixels(inputs[k][0]) for k in active]
            batches = [torch.cat(pixels)] if batch_forward else pixels
            states = [state for batch in batches for state in capture_image_states(backbone, batch, self.blocks)]
        for k, state in zip(active, states):
            results[k].image_embedding = state.image_embedding[0].cpu().numpy()
        engine = make_engine(self.engine, backbone, states, self.precision)
        counts = [int(inputs[k][1].valid.sum()) for k in active]
        targets = torch.cat([inputs[k][1].grid_masks for k in active])
        image_embeddings = torch.cat([state.image_embedding for state in states])  # images x D
        device = image_embeddings.device
        owners = None if len(active) == 1 else torch.repeat_interleave(
            torch.arange(len(active), device=device), torch.tensor(counts, device=device))
        # each mask's share of its own image's objective (the mean over that image's masks)
        scale = torch.cat([torch.ones(count, device=device).div_(count) for count in counts])
        row_image = np.repeat(active, counts)
        row_index = np.concatenate([np.flatnonzero(inputs[k][1].valid) for k in active])
        chunk = engine.plan(len(targets), 2 * self.iterations + 1, self._work_memory())
        for start in range(0, len(targets), chunk):
            part = slice(start, start + chunk)
            output = self._invert_chunk(engine, image_embeddings, None if owners is None else owners[part],
                                        targets[part], scale[part])
            for k in np.unique(row_image[part]):
                here = row_image[part] == k
                _write_rows(results[k], row_index[part][here], output, here)
        return results

    def _empty_result(self, masks: PreparedMasks) -> InversionResult:
        """An image's result with every row NaN, before any mask is inverted."""
        count, dim, size = len(masks.valid), self.backbone.embed_dim, self.backbone.image_size
        return InversionResult(
            embeddings=np.full((count, dim), np.nan, dtype=np.float32),
            heatmaps=np.full((count, size, size), np.nan, dtype=np.float32),
            dice=np.full(count, np.nan, dtype=np.float32),
            iou=np.full(count, np.nan, dtype=np.float32),
            loss_history=np.full((self.iterations, count), np.nan, dtype=np.float32),
            valid=masks.valid,
            errors=masks.errors,
        )

    def _work_memory(self) -> int:
        """Bytes the engine may use for one chunk of masks: the budget given, else by device."""
        if self.memory_budget:
            return self.memory_budget
        device = self.backbone.device
        if device.type == "cuda":
            return int(usable_device_memory(device) * CUDA_FREE_MEMORY_SHARE)
        return CPU_MEMORY_BUDGET

    def _invert_chunk(self, engine, image_embeddings: torch.Tensor, owners: Optional[torch.Tensor],
                      targets: torch.Tensor, scale: torch.Tensor) -> _ChunkOutput:
        """Optimise the embeddings of one chunk of masks (``owners``: each one's image, None for one image).

        The objective of an image is the mean of its masks' losses, as in the authors' implementation
        (masks only interact through AdamW's epsilon), whatever the chunking: ``scale`` holds each
        mask's 1 / (its image's mask count).
        """
        grid, patch = self.backbone.grid_size, self.backbone.patch_size
        start = image_embeddings if owners is None else image_embeddings[owners]  # 1 x D or B x D
        anchor = F.normalize(start, dim=-1)
        embedding = start.expand(len(targets), -1).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([embedding], lr=self.lr, weight_decay=0.0)
        history = []  # kept on the device: copying each step's loss would wait for the device every step
        for _ in range(self.iterations):
            query = F.normalize(embedding, dim=-1)
            maps = relevance_to_maps(engine.relevance(query, owners), grid, patch)
            loss = soft_dice_loss(maps, targets) + self.alpha * (1.0 - (query * anchor).sum(dim=-1))
            optimizer.zero_grad()
            (loss * scale).sum().backward()
            optimizer.step()
            history.append(loss.detach())
        with torch.no_grad():
            final = relevance_to_maps(engine.relevance(F.normalize(embedding, dim=-1), owners), grid, patch)
            return _ChunkOutput(
                embeddings=to_host(embedding),
                heatmaps=to_host(final),
                dice=to_host(1.0 - soft_dice_loss(final, targets)),
                iou=to_host(binary_iou(final, targets)),
                history=to_host(torch.stack(history)) if history else np.zeros((0, len(targets)), np.float32),
            )


def _write_rows(result: InversionResult, rows: np.ndarray, output: _ChunkOutput, here: np.ndarray) -> None:
    """Copy the chunk rows selected by ``here`` into the image result's ``rows``."""
    result.embeddings[rows] = output.embeddings[here]
    result.heatmaps[rows] = output.heatmaps[here]
    result.dice[rows] = output.dice[here]
    result.iou[rows] = output.iou[here]
    result.loss_history[:, rows] = output.history[:, here]

