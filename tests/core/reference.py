"""A plain, per-query autograd implementation of LeGrad and MaskInversion, written from the definition.

It shares no code with the package's engines: the explained block is re-run from its raw weights
(einsum per head), and every map is a separate second-order autograd computation.
"""

import torch
import torch.nn.functional as F


def block_input(model, pixels, index):
    """Input tokens (n x width) of vision block ``index`` during model.encode_image(pixels)."""
    seen = {}
    block = model.visual.transformer.resblocks[index]

    def keep(_module, args):
        seen["x"] = args[0][0].detach()

    handle = block.register_forward_pre_hook(keep)
    with torch.no_grad():
        model.encode_image(pixels)
    handle.remove()
    return seen["x"]


def run_block(block, x, attn=None):
    """(attention probabilities, output tokens) of a pre-norm block from its weights, optionally with given attention."""
    width = x.shape[-1]
    heads = block.attn.num_heads
    ln1 = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (ln1 @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(x.shape[0], heads, -1) for t in (q, k, v))
    if attn is None:
        attn = torch.einsum("ihd,jhd->hij", q, k).div(q.shape[-1] ** 0.5).softmax(dim=-1)
    mixed = torch.einsum("hij,jhd->ihd", attn, v).reshape(x.shape[0], width)
    attn_out = mixed @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if hasattr(block.ls_1, "gamma"):
        attn_out = attn_out * block.ls_1.gamma
    y = x + attn_out
    ln2 = F.layer_norm(y, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    mlp = block.mlp.c_proj(block.mlp[1](block.mlp.c_fc(ln2)))
    if hasattr(block.ls_2, "gamma"):
        mlp = mlp * block.ls_2.gamma
    return attn, y + mlp


def legrad_map(model, inputs, query, blocks, patch, create_graph=False):
    """S x S LeGrad map of one unit query; inputs maps block index -> its input tokens."""
    visual = model.visual
    total = 0
    for index in blocks:
        block = visual.transformer.resblocks[index]
        attn, _ = run_block(block, inputs[index])
        attn = attn.detach().requires_grad_(True)
        _, z = run_block(block, inputs[index], attn)
        pooled = F.layer_norm(z.mean(dim=0), (z.shape[-1],), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        direction = pooled @ visual.proj
        score = (query * direction / direction.norm()).sum()
        (grad,) = torch.autograd.grad(score, attn, create_graph=create_graph)
        relevance = grad.clamp(min=0).mean(dim=0).mean(dim=0)[1:]
        grid = int(relevance.numel() ** 0.5)
        total = total + relevance.reshape(1, 1, grid, grid)
    up = F.interpolate(total, scale_factor=patch, mode="bilinear")[0, 0]
    return (up - up.min()) / (up.max() - up.min())


def mask_inversion(model, pixels, grid_masks, blocks, patch, iterations, lr, alpha=0.0):
    """Embeddings of N masks by AdamW on the mean over masks of the soft Dice of each LeGrad map
    (the authors' objective), each map computed on its own."""
    inputs = {i: block_input(model, pixels, i) for i in blocks}
    with torch.no_grad():
        image_embedding = model.encode_image(pixels)[0]
    anchor = image_embedding / image_embedding.norm()
    emb = image_embedding.repeat(len(grid_masks), 1).clone().requires_grad_(True)
    opt = torch.optim.AdamW([emb], lr=lr, weight_decay=0.0)
    for _ in range(iterations):
        losses = []
        for k, mask in enumerate(grid_masks):
            t = emb[k] / emb[k].norm()
            heat = legrad_map(model, inputs, t, blocks, patch, create_graph=True)
            dice = 1 - (2 * (heat * mask).sum() + 1) / (heat.sum() + mask.sum() + 1)
            losses.append(dice + alpha * (1 - (t * anchor).sum()))
        opt.zero_grad()
        torch.stack(losses).mean().backward()
        opt.step()
    return emb.detach()
