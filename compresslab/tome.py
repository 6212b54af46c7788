"""Token merging (ToMe, Bolya et al. 2023): fewer tokens in every block, without training.

Attention costs grow with the number of tokens N (the linears as N, the score matrix as N^2).
ToMe merges the r most similar pairs of tokens in every block, between attention and MLP, so
a 64-token ViT with r = 8 runs its six blocks on 64, 56, 48, 40, 32 and 24 tokens.

Bipartite soft matching, per image:
1. split the tokens alternately into A (even positions) and B (odd);
2. score every pair (a, b) by the cosine similarity of their keys (averaged over heads);
3. each a picks its most similar b; the r a's with the best matches are merged into them;
4. a merge is a size-weighted average, x_b <- (s_a x_a + s_b x_b) / (s_a + s_b), s_b <- s_a + s_b,
   so a token always equals the mean of the patches it stands for.

Proportional attention: the scores get + log(s) (``Attention``'s ``size``), so a token that
stands for s patches draws as much attention as s copies of it would; the final mean pooling
weighs tokens by size too. With r = 0 the model is exactly the ViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import checks


def bipartite_soft_matching(metric: torch.Tensor, r: int):
    """Match r tokens of set A (even positions) to their most similar token of set B (odd).

    ``metric``: (B, N, C), e.g. the keys. Returns ``merge(x) -> (B, N - r, C)``, which sums each
    merged A token into its B partner and keeps the other A tokens (unmerged A first, then B).
    """
    a, b = F.normalize(metric[:, ::2], dim=-1), F.normalize(metric[:, 1::2], dim=-1)
    similarity = a @ b.transpose(-1, -2)                      # (B, N_A, N_B) cosine similarities
    best, partner = similarity.max(dim=-1)                    # each a's best b
    order = best.argsort(dim=-1, descending=True)[..., None]  # (B, N_A, 1) best-matched first
    merged, kept = order[:, :r], order[:, r:]                 # which a's merge, which stay
    into = partner[..., None].gather(1, merged)               # the b each merged a goes into

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        n, c = x.shape[0], x.shape[-1]
        stay = src.gather(1, kept.expand(n, -1, c))
        moving = src.gather(1, merged.expand(n, -1, c))
        dst = dst.scatter_reduce(1, into.expand(n, -1, c), moving, reduce="sum")
        return torch.cat([stay, dst], dim=1)
    return merge


def merge_tokens(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int):
    """One ToMe step: (x, size) with r fewer tokens, merged by size-weighted averages.

    x: (B, N, dim); size: (B, N) patches per token; keys: (B, H, N, d_head)."""
    merge = bipartite_soft_matching(keys.mean(dim=1), r)
    total = merge(size[..., None])                            # (B, N - r, 1)
    return merge(x * size[..., None]) / total, total[..., 0]


class ToMe(nn.Module):
    """A trained ViT that merges ``r`` tokens in every block (at most half of those left).

    ``tokens`` after a forward pass: the number of tokens each block's MLP ran on."""

    def __init__(self, vit: nn.Module, r: int):
        super().__init__()
        self.vit, self.r = vit, checks.integer(r, "r (tokens merged per block)", 0, example=8)
        self.tokens: list[int] = []

    def forward(self, images):
        vit = self.vit
        x = vit.embed(images)                                         # (B, N, dim)
        size = torch.ones(x.shape[:2], device=x.device, dtype=x.dtype)  # each token = one patch
        self.tokens = []
        for block in vit.blocks:
            out, keys = block.attn(block.norm1(x), size, return_keys=True)
            x = x + out
            r = min(self.r, x.shape[1] // 2)                          # A has only N/2 tokens
            if r > 0:
                x, size = merge_tokens(x, size, keys, r)
            self.tokens.append(x.shape[1])
            x = x + block.mlp(x)
        return vit.classify(x, size)
