"""LeGrad explainability maps for batches of query vectors, by two engines that compute the same thing.

``AutogradEngine`` is the plain definition: the gradient of the activation score with respect to
the attention probabilities, taken by autograd (and differentiated again by the inverter).
``FastEngine`` uses that the score is linear in the query t: the attention gradient is
G[h,i,j] = g_i . (W_o^h v_{h,j}) with g_i = (1/n)(I + J_mlp_i)^T c(t), c linear in t. Every piece
is then a matmul over per-image constants, so one evaluation (and its first-order backward to t)
needs no pass through the network. Since g is linear in t, an image with many masks can also get g
from its *linear map* (g of each unit vector, D x n x width), built once: see :meth:`FastEngine.plan`.

An engine may hold several images: ``relevance(queries, owners)`` then takes each query row's image
index, and every query still attends only to its own image's tokens.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale

from .. import defaults
from .backbone import Backbone
from .block_state import (
    BlockState,
    ImageState,
    block_from_attention,
    capture_image_state,
    pooled_direction,
    resolve_blocks,
)
from .inputs import ImageInput
from .precision import exact_fp32

ENGINES = ("fast", "autograd")
# Fewer masks per chunk than this leave the linear map's product bound by reading the map (D x n x
# width floats per evaluation), so the map is only built for chunks at least this large.
LINEAR_MAP_MIN_BATCH = 32


class AutogradEngine:
    """Reference engine: LeGrad by autograd on a per-query copy of the attention probabilities."""

    name = "autograd"

    def __init__(self, backbone: Backbone, states: Sequence[ImageState]):
        self.backbone = backbone
        self.states = list(states)

    def bytes_per_query(self) -> int:
        return autograd_bytes_per_query(self.states[0].blocks[0].attn.numel(), len(self.states[0].blocks))

    def plan(self, masks: int, passes: int, work_memory: int) -> int:
        """Masks per chunk within ``work_memory`` bytes (the other arguments matter to the fast engine only)."""
        return max(1, work_memory // self.bytes_per_query())

    @exact_fp32()
    def relevance(self, queries: torch.Tensor, owners: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x (n-1) patch relevance (summed over explained blocks), differentiable w.r.t. queries;
        ``owners``: each row's image index (None: the engine's one image). Loops over the images."""
        if owners is None:
            return self._relevance(self.states[0], queries)
        total = queries.new_zeros(len(queries), self.states[0].blocks[0].attn.shape[-1] - 1)
        for index, state in enumerate(self.states):
            rows = (owners == index).nonzero()[:, 0]
            if len(rows):
                total = total.index_put((rows,), self._relevance(state, queries[rows]))
        return total

    def _relevance(self, state: ImageState, queries: torch.Tensor) -> torch.Tensor:
        total = 0.0
        with torch.enable_grad():
            for block in state.blocks:
                attn = block.attn.expand(queries.shape[0], *block.attn.shape).clone().requires_grad_(True)
                _, outputs = block_from_attention(block.module, block.inputs, attn, block.values)
                score = (queries * pooled_direction(self.backbone, outputs.mean(dim=1))).sum()
                grad = torch.autograd.grad(score, attn, create_graph=queries.requires_grad)[0]
                total = total + grad.clamp(min=0).mean(dim=(1, 2))[:, 1:]
        return total


class FastEngine:
    """Exact engine by gradient decomposition; first-order autograd only, on small per-image constants."""

    name = "fast"

    def __init__(self, backbone: Backbone, states: Sequence[ImageState], precision: str = "fp32"):
        if precision not in ("fp32", "bf16-mixed"):
            raise ValueError(f"the fast engine runs in 'fp32' or 'bf16-mixed', not {precision!r}")
        self.blocks = [
            _FastBlock(backbone, [state.blocks[b] for state in states], precision)
            for b in range(len(states[0].blocks))
        ]

    def bytes_per_query(self) -> int:
        return sum(block.bytes_per_query() for block in self.blocks)

    def plan(self, masks: int, passes: int, work_memory: int) -> int:
        """Masks per chunk for ``masks`` masks whose relevance is computed ``passes`` times each (forward
        and backward passes counted), within ``work_memory`` bytes. Builds a block's linear map where
        that needs fewer multiply-adds than the direct q @ K product, the chunks are large enough for
        the map's product to be compute-bound, and the map takes at most half the memory (one image only:
        a map serves the queries of its own image)."""
        chunk, reserved = max(1, work_memory // self.bytes_per_query()), 0
        for block in self.blocks:
            if (block.images == 1 and min(chunk, masks) >= LINEAR_MAP_MIN_BATCH
                    and block.linear_map_pays_off(masks * passes)
                    and reserved + block.linear_map_bytes() <= work_memory // 2):
                block.build_linear_map(rows=min(chunk, block.dim))
                reserved += block.linear_map_bytes()
        return max(1, (work_memory - reserved) // self.bytes_per_query())

    @exact_fp32()
    def relevance(self, queries: torch.Tensor, owners: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x (n-1) patch relevance (summed over explained blocks), differentiable w.r.t. queries;
        ``owners``: each row's image index (None: the engine's one image)."""
        total = 0.0
        for block in self.blocks:
            total = total + block.relevance(queries, owners)
        return total


class _FastBlock:
    """Per-image constants of one explained block (for one or several images), and the decomposed LeGrad
    relevance.

    With w_i = W1^T (act'(a_i) * r) and layer norm 2's transposed Jacobian J_i^T, the head-wise
    attention-gradient vector is g_i @ Wo = (1/n)(c @ Wo + inv_sigma_i (q_i @ K - a1_i o1 - a2_i XO_i)),
    where q_i = act'(a_i) * r, K = W1 diag(gamma) Wo is folded once per model, and the per-token
    scalars a1, a2 are matrix-vector products of r with per-image matrices (no pass over masks x
    tokens x hidden). With bf16-mixed precision the q @ K GEMM
    (the largest term) and its backward take bf16 operands; everything else stays fp32.

    Per-image constants are stacked over the images (leading dimension, or side by side in the columns of
    the matrices a query multiplies: each query then takes its own image's columns, which costs a few
    small products per extra image and no per-query copy of those matrices).

    The whole vector is linear in the query t, so once :meth:`build_linear_map` has stored it for the
    D unit vectors, g(t) = t @ map costs n x D x width multiply-adds per query instead of n x hidden x
    width (hidden = 4 width for ViT-B, D = 512), the same numbers up to rounding (with ``bf16`` the map
    is built by the bf16 q @ K product; its own product with t is fp32).
    """

    def __init__(self, backbone: Backbone, states: Sequence[BlockState], precision: str = "fp32"):
        block = states[0].module
        tokens, width = states[0].hidden.shape
        self.tokens, self.heads, self.images = tokens, block.attn.num_heads, len(states)
        ln2 = block.ln_2
        gamma = ln2.weight.detach() if ln2.weight is not None else states[0].hidden.new_ones(width)
        fc = block.mlp.c_fc.weight.detach()  # W1: hidden x width
        self.proj_weight = block.mlp.c_proj.weight.detach()  # W2: width x hidden
        ls1, self.ls2 = _layer_scale(block.ls_1), _layer_scale(block.ls_2)
        out = block.attn.out_proj.weight.detach()  # Wo: width x width
        out = out * ls1.unsqueeze(1) if ls1 is not None else out
        self.out_weight = out / tokens  # c @ Wo / n
        self.folded = _folded_weight(backbone, block, fc, gamma, out, precision)  # K
        self.ones_out = out.sum(dim=0)  # o1: width
        per_image = [_image_constants(backbone, state, fc, gamma, out) for state in states]
        stacked = {key: [constants[key] for constants in per_image] for key in per_image[0]}
        # c(t) = t @ Jh: the score's gradient w.r.t. the mean output token (Jh is D x width).
        self.pool_jacobian = torch.cat(stacked["pool_jacobian"], dim=1)  # D x (images * width)
        self.a1_weight = torch.cat(stacked["a1_weight"], dim=1)  # a1 = r @ this: hidden x (images * n)
        self.a2_weight = torch.cat(stacked["a2_weight"], dim=1)  # a2 = r @ this: hidden x (images * n)
        self.inv_sigma = torch.stack(stacked["inv_sigma"])  # images x n x 1, includes 1/n
        self.act_grad = torch.stack(stacked["act_grad"])  # images x n x hidden
        self.xhat_out = torch.stack(stacked["xhat_out"])  # XO: images x n x width
        self.values = torch.stack([state.values for state in states])  # images x heads x n x head_dim
        self.dim = self.pool_jacobian.shape[0]
        self.width = width
        self.linear_map: Optional[torch.Tensor] = None  # D x (n * width) once built (one image only)

    def bytes_per_query(self) -> int:
        hidden = self.act_grad.shape[-1]
        return fast_bytes_per_query(self.heads, self.tokens, self.width, hidden, self.images, self.linear_map is not None)

    def linear_map_pays_off(self, passes: int) -> bool:
        """Whether building the map (D x hidden multiply-adds per token and width column) and then D per
        query pass costs less than hidden per query pass, over ``passes`` query passes in all."""
        hidden = self.act_grad.shape[-1]
        return self.dim * hidden + passes * self.dim < passes * hidden

    def linear_map_bytes(self) -> int:
        return 4 * self.dim * self.tokens * self.width

    def build_linear_map(self, rows: int) -> None:
        """Store g of every unit vector of the joint space, ``rows`` unit vectors at a time."""
        unit = torch.eye(self.dim, device=self.act_grad.device)
        linear_map = unit.new_empty(self.dim, self.tokens * self.width)
        with torch.no_grad():
            for start in range(0, self.dim, rows):
                part = unit[start: start + rows]
                linear_map[start: start + len(part)] = self._gradient_out(part, None).reshape(len(part), -1)
        self.linear_map = linear_map

    def relevance(self, queries: torch.Tensor, owners: Optional[torch.Tensor]) -> torch.Tensor:
        """B x (n-1): mean over heads and query rows of ReLU(dS/dA), CLS column dropped."""
        if self.linear_map is not None:
            g_out = queries @ self.linear_map
        else:
            g_out = self._gradient_out(queries, owners)
        g_heads = g_out.view(queries.shape[0], self.tokens, self.heads, -1).transpose(1, 2)
        return _PositiveMean.apply(g_heads, _rows(self.values, owners))[:, 1:]

    def _gradient_out(self, queries: torch.Tensor, owners: Optional[torch.Tensor]) -> torch.Tensor:
        """B x n x width: the attention-gradient vectors g_i @ Wo of each query, by the direct products."""
        c = _own_columns(queries @ self.pool_jacobian, owners, self.images)  # B x width
        r = (c * self.ls2 if self.ls2 is not None else c) @ self.proj_weight  # B x hidden
        q = _rows(self.act_grad, owners) * r.unsqueeze(1)  # B x n x hidden
        qk = _ProductWith.apply(q, self.folded)  # B x n x width, fp32
        a1 = _own_columns(r @ self.a1_weight, owners, self.images).unsqueeze(-1)  # B x n x 1
        a2 = _own_columns(r @ self.a2_weight, owners, self.images).unsqueeze(-1)  # B x n x 1
        corrections = qk - a1 * self.ones_out - a2 * _rows(self.xhat_out, owners)
        return (c @ self.out_weight).unsqueeze(1) + _rows(self.inv_sigma, owners) * corrections


def _image_constants(backbone: Backbone, state: BlockState, fc: torch.Tensor, gamma: torch.Tensor,
                     out: torch.Tensor) -> dict:
    """The constants of one image's explained block that the decomposed relevance multiplies (see _FastBlock)."""
    block = state.module
    tokens, width = state.hidden.shape
    mean_token = state.outputs.mean(dim=0)
    # Layer norm 2 at the attention sub-layer's output, and the MLP activation's derivative.
    mu = state.hidden.mean(dim=-1, keepdim=True)
    var = state.hidden.var(dim=-1, unbiased=False, keepdim=True)
    xhat = (state.hidden - mu) * (var + block.ln_2.eps).rsqrt()
    pre_activation = block.mlp.c_fc(block.ln_2(state.hidden)).detach().requires_grad_(True)
    with torch.enable_grad():
        (act_grad,) = torch.autograd.grad(block.mlp[1](pre_activation).sum(), pre_activation)
    gamma_fc = (fc @ gamma) / width  # u1: hidden
    xhat_fc = ((xhat * gamma) @ fc.T) / width  # P: n x hidden
    return {
        "pool_jacobian": torch.func.jacrev(lambda m: pooled_direction(backbone, m))(mean_token),
        "inv_sigma": (var + block.ln_2.eps).rsqrt() / tokens,
        "act_grad": act_grad,
        "a1_weight": (act_grad * gamma_fc).T.contiguous(),
        "a2_weight": (act_grad * xhat_fc).T.contiguous(),
        "xhat_out": xhat @ out,
    }


def _rows(stacked: torch.Tensor, owners: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-image constants (images x ...) for each query row: broadcast for one image, else gathered."""
    return stacked if owners is None else stacked[owners]


def _own_columns(products: torch.Tensor, owners: Optional[torch.Tensor], images: int) -> torch.Tensor:
    """B x k of B x (images * k) products with side-by-side per-image matrices: each row's own image's."""
    if owners is None:
        return products
    rows = torch.arange(len(products), device=products.device)
    return products.view(len(products), images, -1)[rows, owners]


def fast_bytes_per_query(heads: int, tokens: int, width: int, hidden: int, images: int, mapped: bool) -> int:
    """Work memory of one query in the fast engine, per explained block: the n x n attention-gradient
    buffers, the per-token vectors (hidden wide, or width wide through a linear map) and, for a chunk of
    several images, each query's copies of its image's per-token constants and its products with every
    image's side-by-side matrices."""
    per_token = 3 * width if mapped else 3 * hidden
    gathered = 0 if images == 1 else tokens * (hidden + 2 * width) + images * (width + 2 * tokens)
    return 4 * (2 * heads * tokens * tokens + tokens * per_token + gathered)


def autograd_bytes_per_query(attention_size: int, blocks: int) -> int:
    """Work memory of one query in the autograd engine: a dozen copies of each block's attention tensor."""
    return 12 * attention_size * 4 * blocks


def chunk_memory(engine: str, backbone: Backbone, blocks: Sequence[int], images: int) -> Tuple[int, int]:
    """(work bytes per mask, bytes per image) of ``engine`` for a chunk of masks of ``images`` images,
    from the model's sizes alone (to plan which images share a chunk before their forward pass). Per
    image: its state (attention, values, four token tensors) and the fast engine's per-token constants
    of each explained block, plus the transient attention scores of its share of the batched forward."""
    tokens, dim = backbone.grid_size**2 + 1, backbone.embed_dim
    per_query, per_image = 0, 0
    for index in blocks:
        block = backbone.visual.transformer.resblocks[index]
        heads, width, hidden = block.attn.num_heads, block.attn.embed_dim, block.mlp.c_fc.out_features
        if engine == "fast":
            per_query += fast_bytes_per_query(heads, tokens, width, hidden, images, mapped=False)
        else:
            per_query += autograd_bytes_per_query(heads * tokens * tokens, blocks=1)
        per_image += 4 * (heads * tokens * tokens + 3 * tokens * hidden + 6 * tokens * width + dim * width)
    block = backbone.visual.transformer.resblocks[-1]
    per_image += 4 * (2 * block.attn.num_heads * tokens * tokens + tokens * block.mlp.c_fc.out_features)
    return per_query, per_image


class _ProductWith(torch.autograd.Function):
    """x @ K for an fp32 x and a constant K, in K's dtype: with a bf16 K the operands are rounded to bf16
    and, on CUDA, the product is accumulated and returned in fp32 (``out_dtype``); the CPU has no such
    kernel in PyTorch, so there the bf16 product is rounded before it is widened. The backward is the
    same product with K^T, so the gradient reaching x (and r) is fp32 either way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _mixed_mm(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return _mixed_mm(grad, weight.T), None


def _mixed_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 (... x k) @ (k x m) in weight's dtype, returned as fp32."""
    if weight.dtype == x.dtype:
        return x @ weight
    flat = x.reshape(-1, x.shape[-1]).to(weight.dtype)
    if flat.is_cuda:
        product = torch.mm(flat, weight, out_dtype=torch.float32)
    else:
        product = (flat @ weight).float()
    return product.reshape(*x.shape[:-1], weight.shape[-1])


def _folded_weight(backbone: Backbone, block, fc: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor,
                   precision: str) -> torch.Tensor:
    """K = W1 diag(gamma) Wo of a block: it depends on the weights alone, so it is folded once per model
    (1.8 GFLOP for ViT-B), always in full fp32 then rounded to the precision's dtype, and kept in the
    backbone's cache by block, device, dtype and precision, unless the block's weights change in place."""
    dtype = torch.bfloat16 if precision == "bf16-mixed" else fc.dtype
    key = ("folded K", block, fc.device, dtype, precision)
    versions = tuple(p._version for p in block.parameters())
    cached = backbone.cache.get(key)
    if cached is None or cached[0] != versions:
        with exact_fp32():
            cached = backbone.cache[key] = (versions, ((fc * gamma) @ out).to(dtype))
    return cached[1]


class _PositiveMean(torch.autograd.Function):
    """Mean over heads and rows of ReLU(g_heads @ values^T): the LeGrad relevance of each key token.

    The backward reuses the forward's n x n buffer in place: dL/dg = (G > 0) @ (dL/dout_j * v_j).
    """

    @staticmethod
    def forward(ctx, g_heads: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values``: 1 x heads x n x head_dim (one image) or B x heads x n x head_dim (each row's image)."""
        attn_grad = torch.matmul(g_heads, values.transpose(-1, -2)).clamp_(min=0)  # B x heads x n x n
        count = attn_grad.shape[1] * attn_grad.shape[2]
        ctx.save_for_backward(attn_grad, values)
        return attn_grad.sum(dim=(1, 2)) / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        attn_grad, values = ctx.saved_tensors
        count = attn_grad.shape[1] * attn_grad.shape[2]
        scaled_values = values * (grad_out / count)[:, None, :, None]  # B x heads x n x hd
        return torch.matmul(attn_grad.sign_(), scaled_values), None


def _layer_scale(module: torch.nn.Module) -> Optional[torch.Tensor]:
    if isinstance(module, LayerScale):
        return module.gamma.detach()
    if isinstance(module, torch.nn.Identity):
        return None
    raise ValueError(f"unsupported layer-scale module {type(module).__name__}")


@exact_fp32()
def make_engine(name: str, backbone: Backbone, states: Union[ImageState, Sequence[ImageState]],
                precision: str = "fp32"):
    """The map engine called ``name`` ("fast" or "autograd") for one image's state or several images'
    states (then ``relevance`` takes each query's image index); ``precision`` is resolved ("fp32" or
    "bf16-mixed", the latter for the fast engine only)."""
    states = [states] if isinstance(states, ImageState) else list(states)
    if name == "fast":
        return FastEngine(backbone, states, precision)
    if name == "autograd":
        if precision != "fp32":
            raise ValueError("the autograd engine is the fp32 reference: use precision='fp32' with it")
        return AutogradEngine(backbone, states)
    raise ValueError(f"unknown engine {name!r}; choose one of {ENGINES}")


@functools.lru_cache(maxsize=8)
def _upsampling_matrix(grid: int, patch: int, device: torch.device) -> torch.Tensor:
    """S x grid: 1-D linear upsampling by ``patch`` (half-pixel centres, edges clamped) as a matrix;
    bilinear upsampling of a map R is U @ R @ U^T, the same numbers as F.interpolate in two small GEMMs."""
    impulses = torch.eye(grid, device=device).unsqueeze(0)  # 1 x grid x grid: one impulse per row
    return F.interpolate(impulses, scale_factor=patch, mode="linear", align_corners=False)[0].T.contiguous()


def relevance_to_maps(relevance: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """B x (n-1) relevance -> B x S x S maps: bilinear upsampling by the patch size, min-max to [0,1]."""
    upsample = _upsampling_matrix(grid, patch, relevance.device)
    maps = upsample @ relevance.reshape(-1, grid, grid) @ upsample.T
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)


@exact_fp32()
def legrad_maps(
    backbone: Backbone,
    image: ImageInput,
    queries: torch.Tensor,
    blocks: Optional[Sequence[int]] = defaults.BLOCKS,
    engine: str = defaults.ENGINE,
) -> np.ndarray:
    """LeGrad maps (Q x S x S in [0,1]) of one image for Q unit query vectors, from one forward pass.

    ``queries`` are vectors of the joint space (e.g. ``backbone.encode_text([...])``); they are
    normalised here. ``blocks`` selects the explained blocks (default: the last one). Matrix products
    run in full fp32 whatever the caller's TF32 / bf16 settings (see :class:`~.precision.exact_fp32`).
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
