"""How well an explainability map matches a mask: the soft Dice loss MaskInversion minimises, and IoU."""

from __future__ import annotations

import torch

DICE_SMOOTH = 1.0


def soft_dice_loss(maps: torch.Tensor, masks: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Per-map soft Dice loss 1 - (2 sum(E m) + s) / (sum(E) + sum(m) + s) for B x H x W inputs."""
    maps, masks = maps.flatten(1), masks.flatten(1)
    overlap = (maps * masks).sum(dim=1)
    return 1.0 - (2.0 * overlap + smooth) / (maps.sum(dim=1) + masks.sum(dim=1) + smooth)


def binary_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-map IoU of (map >= threshold) with (mask >= threshold); 0 where both are empty."""
    pred, target = maps.flatten(1) >= threshold, masks.flatten(1) >= threshold
    union = (pred | target).sum(dim=1)
    inter = (pred & target).sum(dim=1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union, dtype=torch.float32))
