"""One image forward pass that keeps what LeGrad needs from the explained blocks.

The model is never modified: hooks capture each explained block's input during
``encode_image`` and are removed right after; the block's attention is then recomputed
explicitly from its own sub-modules so that the attention probabilities are a tensor we own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

from .backbone import Backbone
from .precision import exact_fp32


@dataclass
class BlockState:
    """Per-image tensors of one explained block (batch dimension removed)."""

    module: ResidualAttentionBlock
    inputs: torch.Tensor  # n x width: the block's input tokens
    attn: torch.Tensor  # heads x n x n: post-softmax attention probabilities
    values: torch.Tensor  # heads x n x head_dim
    hidden: torch.Tensor  # n x width: residual stream right after the attention sub-layer
    outputs: torch.Tensor  # n x width: the block's output tokens (recomputed explicitly)
    model_outputs: torch.Tensor  # n x width: the block's output as the model itself produced it


@dataclass
class ImageState:
    """Everything the map engines need about one image."""

    image_embedding: torch.Tensor  # 1 x D, unnormalised (encode_image)
    blocks: List[BlockState]


def resolve_blocks(backbone: Backbone, blocks: Optional[Sequence[int]]) -> List[int]:
    """Explained block indices (negative counts from the end); default: the last block only."""
    count = backbone.num_blocks
    chosen = [-1] if blocks is None else list(blocks)
    if not chosen:
        raise ValueError("at least one block must be explained")
    resolved = []
    for index in chosen:
        if not -count <= index < count:
            raise ValueError(f"block {index} does not exist: the image tower has {count} blocks")
        resolved.append(index % count)
    return sorted(set(resolved))


def attention_probabilities(block: ResidualAttentionBlock, tokens: torch.Tensor) -> tuple:
    """(post-softmax attention heads x n x n, values heads x n x head_dim) of a block for n x width tokens."""
    attn = block.attn
    heads, width = attn.num_heads, tokens.shape[-1]
    head_dim = width // heads
    qkv = F.linear(block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (part.reshape(-1, heads, head_dim).transpose(0, 1) for part in qkv.split(width, dim=-1))
    scores = (q * head_dim**-0.5) @ k.transpose(-1, -2)
    return scores.softmax(dim=-1), v


def block_from_attention(
    block: ResidualAttentionBlock, tokens: torch.Tensor, attn: torch.Tensor, values: torch.Tensor
) -> tuple:
    """(hidden, output) tokens of a block given its attention probabilities (... x heads x n x n)."""
    context = (attn @ values).transpose(-3, -2)  # ... x n x heads x head_dim
    context = context.reshape(*context.shape[:-2], -1)
    hidden = tokens + block.ls_1(F.linear(context, block.attn.out_proj.weight, block.attn.out_proj.bias))
    return hidden, hidden + block.ls_2(block.mlp(block.ln_2(hidden)))


@torch.no_grad()
@exact_fp32()
def capture_image_states(backbone: Backbone, pixels: torch.Tensor, blocks: Sequence[int]) -> List[ImageState]:
    """Run encode_image once on a B x 3 x S x S batch, keeping each image's explained blocks' inputs and
    outputs (in full fp32 matrix products, whatever the caller's TF32 / bf16 settings)."""
    resblocks = backbone.visual.transformer.resblocks
    batch_first = getattr(backbone.visual.transformer, "batch_first", True)
    seen_inputs, seen_outputs = {}, {}

    def tokens_of(x: torch.Tensor) -> torch.Tensor:
        return (x if batch_first else x.transpose(0, 1)).float()  # B x n x width

    handles = []
    for index in blocks:
        handles.append(
            resblocks[index].register_forward_pre_hook(
                lambda _m, args, i=index: seen_inputs.__setitem__(i, tokens_of(args[0]))
            )
        )
        handles.append(
            resblocks[index].register_forward_hook(
                lambda _m, _args, out, i=index: seen_outputs.__setitem__(i, tokens_of(out))
            )
        )
    try:
        image_embeddings = backbone.model.encode_image(pixels).float()
    finally:
        for handle in handles:
            handle.remove()
    return [
        ImageState(image_embedding=image_embeddings[k: k + 1],
                   blocks=[_block_state(resblocks[i], seen_inputs[i][k], seen_outputs[i][k]) for i in blocks])
        for k in range(len(pixels))
    ]


def capture_image_state(backbone: Backbone, pixels: torch.Tensor, blocks: Sequence[int]) -> ImageState:
    """The :class:`ImageState` of one image from a 1 x 3 x S x S tensor (one encode_image call)."""
    return capture_image_states(backbone, pixels, blocks)[0]


def _block_state(block: ResidualAttentionBlock, tokens: torch.Tensor, model_outputs: torch.Tensor) -> BlockState:
    """A block's state from its input tokens, its attention recomputed explicitly from its own sub-modules."""
    attn, values = attention_probabilities(block, tokens)
    hidden, outputs = block_from_attention(block, tokens, attn, values)
    return BlockState(block, tokens, attn, values, hidden, outputs, model_outputs=model_outputs)


def pooled_direction(backbone: Backbone, mean_token: torch.Tensor) -> torch.Tensor:
    """LeGrad's activation direction: normalize(ln_post(mean token) @ proj), for ... x width inputs."""
    return F.normalize(backbone.visual.ln_post(mean_token) @ backbone.visual.proj, dim=-1)
