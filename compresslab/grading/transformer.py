"""Checkers for notebook 10 (a vision transformer): the FLOPs of attention, the student's token
merging step, and a ToMe + head-pruning plan that reaches a FLOP target on the validation split.

Attention's two matrix products per block, for N tokens, H heads of size d (a multiply-add is
2 FLOPs, torch's convention): Q K^T is (N x d) (d x N) per head, P V is (N x N) (N x d), so

    FLOPs = 2 * 2 N^2 H d.

The merging step is ToMe's bipartite soft matching (``compresslab.tome``): tokens at even
positions (A) pick their most similar token at odd positions (B) by the cosine similarity of
their keys; the r A tokens with the best matches are merged into them by size-weighted means.
The order of the tokens that come out is free (pooling and attention do not depend on it), so
the check compares them as sets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import tome, transformer
from .common import call, expect, mapping, pretrained_val_accuracy, switched_off, val_accuracy, whole

__all__ = ["attention_flops", "merge_cases", "merge_step", "TOME_PLAN_TARGET", "plan_model", "plan_flops", "tome_plan"]


def attention_flops(count, tokens: int = 64, heads: int = 6, head_dim: int = 32) -> str:
    """``count``: FLOPs of one block's Q K^T and P V at ``tokens`` tokens (2 per multiply-add)."""
    x = whole(count, "attention_flops")
    n, h, d = tokens, heads, head_dim
    want = 2 * 2 * n * n * h * d
    for wrong, hint in [(2 * n * n * h * d, "one product, or one FLOP per multiply-add: there are two products "
                                            "(Q K^T and P V), and a multiply-add counts as 2 FLOPs"),
                        (2 * 2 * n * h * d, "that grows as N: each of the N queries meets all N keys, N^2 pairs"),
                        (2 * 2 * n * n * d, "that is one head: every head does its own products"),
                        (2 * 2 * n * n * h * d * h, "H d is the width of all heads together; count H heads of d each")]:
        expect(x != wrong, f"{x:,} FLOPs: {hint}.")
    expect(x == want, f"{x:,} FLOPs is not the count of Q K^T and P V: each is an (N x d) by (d x N) or (N x N) by "
                      "(N x d) product per head, 2 FLOPs per multiply-add.")
    return f"{x:,} FLOPs in one block's attention matmuls at {n} tokens"


def merge_cases(seed: int = 0):
    """Batches the student did not pick: token counts odd and even, sizes that differ (tokens
    merged before), keys of very different lengths (a dot product is not a cosine), r from 1 to N/2."""
    g = torch.Generator().manual_seed(seed)
    for b, n, c, r in [(2, 8, 4, 2), (3, 9, 5, 4), (1, 16, 6, 1), (2, 12, 3, 6)]:
        x = torch.randn(b, n, c, generator=g)
        size = torch.randint(1, 4, (b, n), generator=g).float()
        keys = torch.randn(b, n, c, generator=g) * torch.rand(b, n, 1, generator=g).mul(5).add(0.1)
        yield x, size, keys, r


def reference_merge(x, size, keys, r, similarity="cosine", best=True, weighted=True):
    """The merge, and the usual wrong variants of it (for the hints)."""
    a, b = keys[:, ::2], keys[:, 1::2]
    if similarity == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    score, partner = (a @ b.transpose(-1, -2)).max(-1)
    order = score.argsort(-1, descending=best)
    out_x, out_s = [], []
    for i in range(x.shape[0]):
        w = size[i] if weighted else torch.ones_like(size[i])   # the weights of the mean
        xs, ws, ss = (x[i] * w[:, None]).clone(), w.clone(), size[i].clone()
        src, dst = torch.arange(0, x.shape[1], 2), torch.arange(1, x.shape[1], 2)
        for m in order[i, :r].tolist():
            j, k = dst[partner[i, m]], src[m]
            xs[j] += xs[k]
            ws[j] += ws[k]
            ss[j] += ss[k]
        keep = [int(src[m]) for m in order[i, r:].tolist()] + dst.tolist()
        out_x.append(xs[keep] / ws[keep, None])
        out_s.append(ss[keep])
    return torch.stack(out_x), torch.stack(out_s)


def as_set(x, size):
    """Tokens of one image in a canonical order: sorted by size, then by a fixed projection."""
    v = torch.linspace(1, 2, x.shape[-1], dtype=torch.float64)
    key = size.double() * 1e6 + x.double() @ v
    order = key.argsort()
    return x[order].double(), size[order].double()


def same_tokens(got, want) -> bool:
    return all(torch.allclose(*pair, atol=1e-5) for i in range(want[0].shape[0])
               for pair in zip(as_set(got[0][i], got[1][i]), as_set(want[0][i], want[1][i])))


def merge_step(fn) -> str:
    """Check ``fn(x, size, keys, r) -> (x, size)`` (x: (B, N, C), size: (B, N), keys: (B, N, C))
    against ToMe's bipartite soft matching on four random batches."""
    hint = "write the matching yourself: tome.bipartite_soft_matching and tome.merge_tokens are off limits here"
    for i, (x, size, keys, r) in enumerate(merge_cases(), 1):
        args = [t.clone() for t in (x, size, keys)]
        with switched_off(tome, ["bipartite_soft_matching", "merge_tokens"], hint):
            got = call(fn, "merge_step", *args, r)
        expect(all(torch.equal(a, b) for a, b in zip(args, (x, size, keys))),
               f"Case {i}: your function changed its inputs in place: work on new tensors.")
        expect(isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got),
               f"Case {i}: return a pair (x, size) of tensors, got {type(got).__name__}.")
        gx, gs = got
        n = x.shape[1]
        expect(tuple(gx.shape) == (x.shape[0], n - r, x.shape[2]) and tuple(gs.shape) == (x.shape[0], n - r),
               f"Case {i}: {n} tokens and r = {r} should leave {n - r}; your x has shape {tuple(gx.shape)} "
               f"and size {tuple(gs.shape)}.")
        want = reference_merge(x, size, keys, r)
        if same_tokens(got, want):
            continue
        expect(torch.allclose(gs.sum(1), size.sum(1)),
               f"Case {i}: the sizes add up to {gs.sum(1).tolist()} instead of {size.sum(1).tolist()}: a merged "
               "token stands for s_a + s_b patches.")
        for variant, why in [(dict(weighted=False), "a merge is the size-weighted mean (s_a x_a + s_b x_b) / (s_a + s_b), "
                                                    "not the plain mean, and the sizes add up"),
                             (dict(similarity="dot"), "normalize the keys first: the match is by cosine similarity, "
                                                      "and a dot product favours long keys"),
                             (dict(best=False), "merge the r A tokens with the *highest* similarity to their partner")]:
            wx, ws = reference_merge(x, size, keys, r, **variant)
            expect(not same_tokens((gx, gs), (wx, ws)), f"Case {i}: {why}.")
        expect(not torch.allclose(gx.sum(1), (x * size[..., None]).sum(1), atol=1e-4),
               f"Case {i}: your tokens are sums; divide each by its new size to get a mean.")
        raise AssertionError(f"Case {i}: the tokens that come out are not those of bipartite soft matching: split A = "
                             "even positions, B = odd; each a takes its most similar b (cosine of the keys); the r "
                             "best-matched a's are merged into their b by size-weighted means; the rest stay.")
    return "all 4 random batches merge as ToMe's bipartite soft matching does (compared as sets of tokens)"

# ---------------------------------------------------------------- the design task

TOME_PLAN_TARGET = dict(flop_reduction=1.3, max_drop=1.0)  # x fewer FLOPs at batch 1; validation points


def plan_model(plan: dict):
    """The pretrained ViT with the plan's heads kept (``None``: all) and ToMe's ``r``."""
    from ..zoo import load_pretrained
    model = load_pretrained("vit", "cpu")
    if plan["keep_heads"] is not None:
        model = transformer.remove_heads(model, plan["keep_heads"])
    return tome.ToMe(model, plan["r"]).eval()


def plan_flops(plan: dict) -> tuple[int, int]:
    """(FLOPs of the planned model, FLOPs of the ViT), one image."""
    from ..metrics import flops
    from ..zoo import load_pretrained
    return flops(plan_model(plan), (3, 32, 32)), flops(load_pretrained("vit", "cpu"), (3, 32, 32))


def tome_plan(plan, n_val: int = 2000) -> str:
    """``plan``: {"r": tokens merged per block, "keep_heads": None or one list of head indices per
    block}. At least ``TOME_PLAN_TARGET["flop_reduction"]`` times fewer FLOPs than the ViT, at most
    ``TOME_PLAN_TARGET["max_drop"]`` points lost on ``n_val`` validation images; no fine-tuning."""
    plan = dict(mapping(plan, "plan", ["r", "keep_heads"], example='{"r": 4, "keep_heads": None}'))
    plan["r"] = whole(plan["r"], 'plan["r"]')
    expect(0 <= plan["r"] <= 32, f'plan["r"] = {plan["r"]}: a block can merge between 0 and 32 of its 64 tokens.')
    if plan["keep_heads"] is not None:
        try:
            transformer.check_keep(plan["keep_heads"], [6] * 6, "heads")
        except (ValueError, TypeError) as e:
            raise AssertionError(f'plan["keep_heads"]: {e}') from None
    got, full = plan_flops(plan)
    target, max_drop = TOME_PLAN_TARGET["flop_reduction"], TOME_PLAN_TARGET["max_drop"]
    expect(full / got >= target, f"Your plan does {got / 1e6:.1f} MFLOPs per image, {full / got:.2f}x fewer than the "
                                 f"ViT's {full / 1e6:.1f}; at least {target:g}x was asked: merge more tokens or keep fewer heads.")
    drop = pretrained_val_accuracy("vit", n_val) - val_accuracy(plan_model(plan), "cifar10", n_val)
    expect(drop <= max_drop, f"Your plan is {full / got:.2f}x lighter but loses {drop:.2f} validation points, more than "
                             f"{max_drop:g}: merging late costs less than removing heads (look at section 5's curve).")
    return f"{full / got:.2f}x fewer FLOPs, {drop:+.2f} validation points lost (at most {max_drop:g} allowed)"
