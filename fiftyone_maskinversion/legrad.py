"""LeGrad explainability maps for batches of query vectors, by two engines that compute the same thing.

``AutogradEngine`` is the plain definition: the gradient of the activation score with respect to
the attention probabilities, taken by autograd (and differentiated again by the inverter).
``FastEngine`` uses that the score is linear in the query t: the attention gradient is
G[h,i,j] = g_i . (W_o^h v_{h,j}) with g_i = (1/n)(I + J_mlp_i)^T c(t), c linear in t. Every piece
is then a matmul over per-image constants, so one evaluation (and its first-order backward to t)
needs no pass through the network.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale

from .backbone import Backbone
from .block_state import (
    BlockState,
    ImageState,
    block_from_attention,
    capture_image_state,
    pooled_direction,
    resolve_blocks,
)
from .images import ImageInput

ENGINES = ("fast", "autograd")


class AutogradEngine:
    """Reference engine: LeGrad by autograd on a per-query copy of the attention probabilities."""

    name = "autograd"

    def __init__(self, backbone: Backbone, state: ImageState):
        self.backbone = backbone
        self.state = state

    def bytes_per_query(self) -> int:
        block = self.state.blocks[0]
        return 12 * block.attn.numel() * 4 * len(self.state.blocks)

    def relevance(self, queries: torch.Tensor) -> torch.Tensor:
        """B x (n-1) patch relevance (summed over explained blocks), differentiable w.r.t. queries."""
        total = 0.0
        with torch.enable_grad():
            for block in self.state.blocks:
                attn = block.attn.expand(queries.shape[0], *block.attn.shape).clone().requires_grad_(True)
                _, outputs = block_from_attention(block.module, block.inputs, attn, block.values)
                score = (queries * pooled_direction(self.backbone, outputs.mean(dim=1))).sum()
                grad = torch.autograd.grad(score, attn, create_graph=queries.requires_grad)[0]
                total = total + grad.clamp(min=0).mean(dim=(1, 2))[:, 1:]
        return total


class FastEngine:
    """Exact engine by gradient decomposition; first-order autograd only, on small per-image constants."""

    name = "fast"

    def __init__(self, backbone: Backbone, state: ImageState, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.blocks = [_FastBlock(backbone, block, dtype) for block in state.blocks]

    def bytes_per_query(self) -> int:
        return sum(block.bytes_per_query() for block in self.blocks)

    def relevance(self, queries: torch.Tensor) -> torch.Tensor:
        """B x (n-1) patch relevance (summed over explained blocks), differentiable w.r.t. queries."""
        total = 0.0
        for block in self.blocks:
            total = total + block.relevance(queries)
        return total


class _FastBlock:
    """Per-image constants of one explained block, and the decomposed LeGrad relevance."""

    def __init__(self, backbone: Backbone, state: BlockState, dtype: torch.dtype):
        block = state.module
        tokens, width = state.hidden.shape
        self.tokens, self.heads = tokens, block.attn.num_heads
        self.dtype = dtype
        # c(t) = Jh^T t: Jacobian of the pooled direction at the mean output token (D x width).
        mean_token = state.outputs.mean(dim=0)
        self.pool_jacobian = torch.func.jacrev(lambda m: pooled_direction(backbone, m))(mean_token)
        # Layer norm 2 at the attention output, and the MLP activation's derivative per token.
        ln2 = block.ln_2
        mu = state.hidden.mean(dim=-1, keepdim=True)
        var = state.hidden.var(dim=-1, unbiased=False, keepdim=True)
        self.inv_sigma = (var + ln2.eps).rsqrt()
        self.xhat = (state.hidden - mu) * self.inv_sigma
        self.ln2_weight = ln2.weight.detach() if ln2.weight is not None else torch.ones(width)
        pre_activation = block.mlp.c_fc(ln2(state.hidden)).detach().requires_grad_(True)
        with torch.enable_grad():
            activation = block.mlp[1](pre_activation)
            (act_grad,) = torch.autograd.grad(activation.sum(), pre_activation)
        self.act_grad = act_grad.to(dtype)  # n x hidden
        self.fc_weight = block.mlp.c_fc.weight.detach().to(dtype)  # hidden x width
        self.proj_weight = block.mlp.c_proj.weight.detach()  # width x hidden
        self.out_weight = block.attn.out_proj.weight.detach().to(dtype)  # width x width
        self.values_t = state.values.transpose(-1, -2).contiguous().to(dtype)  # heads x head_dim x n
        self.ls1 = _layer_scale(block.ls_1)
        self.ls2 = _layer_scale(block.ls_2)

    def bytes_per_query(self) -> int:
        n, hidden = self.act_grad.shape
        return 4 * (3 * self.heads * n * n + 4 * n * hidden)

    def relevance(self, queries: torch.Tensor) -> torch.Tensor:
        """B x (n-1): mean over heads and query rows of ReLU(dS/dA), CLS column dropped."""
        batch, n = queries.shape[0], self.tokens
        c = queries @ self.pool_jacobian  # B x width: d score / d mean token
        r = (c * self.ls2 if self.ls2 is not None else c) @ self.proj_weight  # B x hidden
        q = (self.act_grad.unsqueeze(0) * r.to(self.dtype).unsqueeze(1))  # B x n x hidden
        w = (q @ self.fc_weight).float()  # B x n x width: W1^T q_i per token
        g = (c.unsqueeze(1) + self._ln2_vjp(w)) / n  # B x n x width: d score / d hidden_i
        if self.ls1 is not None:
            g = g * self.ls1
        g_heads = (g.to(self.dtype) @ self.out_weight).view(batch, n, self.heads, -1).transpose(1, 2)
        attn_grad = g_heads @ self.values_t  # B x heads x n x n
        return attn_grad.clamp(min=0).float().mean(dim=(1, 2))[:, 1:]

    def _ln2_vjp(self, w: torch.Tensor) -> torch.Tensor:
        """Transpose of layer norm 2's Jacobian at each token applied to w (B x n x width)."""
        scaled = w * self.ln2_weight
        centred = scaled - scaled.mean(dim=-1, keepdim=True)
        return self.inv_sigma * (centred - self.xhat * (self.xhat * scaled).mean(dim=-1, keepdim=True))


def _layer_scale(module: torch.nn.Module) -> Optional[torch.Tensor]:
    if isinstance(module, LayerScale):
        return module.gamma.detach()
    if isinstance(module, torch.nn.Identity):
        return None
    raise ValueError(f"unsupported layer-scale module {type(module).__name__}")


def make_engine(name: str, backbone: Backbone, state: ImageState, dtype: torch.dtype = torch.float32):
    """The map engine called ``name`` ("fast" or "autograd") for one image."""
    if name == "fast":
        return FastEngine(backbone, state, dtype)
    if name == "autograd":
        if dtype != torch.float32:
            raise ValueError("the autograd engine runs in float32 only")
        return AutogradEngine(backbone, state)
    raise ValueError(f"unknown engine {name!r}; choose one of {ENGINES}")


def relevance_to_maps(relevance: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """B x (n-1) relevance -> B x S x S maps: bilinear upsampling by the patch size, min-max to [0,1]."""
    maps = relevance.reshape(-1, 1, grid, grid)
    maps = F.interpolate(maps, scale_factor=patch, mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)


def legrad_maps(
    backbone: Backbone,
    image: ImageInput,
    queries: torch.Tensor,
    blocks: Optional[Sequence[int]] = None,
    engine: str = "fast",
) -> np.ndarray:
    """LeGrad maps (Q x S x S in [0,1]) of one image for Q unit query vectors, from one forward pass.

    ``queries`` are vectors of the joint space (e.g. ``backbone.encode_text([...])``); they are
    normalised here. ``blocks`` selects the explained blocks (default: the last one).
    """
    queries = torch.as_tensor(queries, dtype=torch.float32, device=backbone.device)
    if queries.ndim == 1:
        queries = queries.unsqueeze(0)
    if queries.ndim != 2 or queries.shape[1] != backbone.embed_dim:
        raise ValueError(f"queries must be Q x {backbone.embed_dim}, got shape {tuple(queries.shape)}")
    state = capture_image_state(backbone, backbone.pixels(image), resolve_blocks(backbone, blocks))
    maps_engine = make_engine(engine, backbone, state)
    with torch.no_grad():
        relevance = maps_engine.relevance(F.normalize(queries, dim=-1))
    return relevance_to_maps(relevance, backbone.grid_size, backbone.patch_size).cpu().numpy()
