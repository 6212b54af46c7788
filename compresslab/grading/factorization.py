"""Checkers for notebook 08 (low-rank factorization): when a factorization pays, the rank that
keeps a given energy, the weights of a Tucker-2 chain, the truncated SVD of a linear layer
written by the student, and a per-layer rank plan for LeNet-300-100.

The truncated SVD is checked against Eckart-Young: for W = U S V^T (s_1 >= s_2 >= ...), the
two layers x -> V_r^T x, then U_r S_r (.) + b, multiply to W_r, whose error is exact,

    ||W - W_r||_F = sqrt(sum_{i > r} s_i^2),

and no rank-r product of two matrices does better.
"""
from __future__ import annotations


import torch
from torch import nn

from .. import factorization as fz
from .common import call, switched_off, expect, mapping, module, number, pretrained_val_accuracy, tensor, val_accuracy, whole

__all__ = ["factorization_pays", "energy_rank", "tucker2_weights", "svd_layer_cases", "truncated_svd",
           "RANK_PLAN_TARGET", "rank_plan_weights", "rank_plan"]


def factorization_pays(r_max, m: int = 300, n: int = 784) -> str:
    """``r_max``: the largest rank r at which the two factors of an m x n layer have fewer
    weights than the layer, r (m + n) < m n (biases aside)."""
    r = whole(r_max, "r_max")
    expect(r * (m + n) != m * n, f"At rank {r} the factors have exactly as many weights as the layer: "
                                 "fewer was asked (strictly less).")
    expect(r * (m + n) < m * n, f"At rank {r} the factors hold {r * (m + n):,} weights, more than the layer's "
                                f"{m * n:,}: solve r (m + n) < m n for the largest whole r.")
    expect((r + 1) * (m + n) >= m * n, f"Rank {r} pays, but so does rank {r + 1} "
                                       f"({(r + 1) * (m + n):,} < {m * n:,}): the largest such r was asked.")
    return f"r_max = {r}: {r * (m + n):,} weights in the factors, {m * n:,} in the layer"


def energy_rank(r, s, keep: float = 0.9) -> str:
    """``r``: the smallest rank whose sum_{i <= r} s_i^2 reaches ``keep`` of sum_i s_i^2."""
    s = tensor(s, "s").detach().double().flatten()
    x = number(r, "r90")
    expect(not 0 < x < 1, f"`r90` = {x:g} is a fraction: the rank (how many singular values are kept) was asked.")
    r = whole(x, "r90")
    expect(1 <= r <= len(s), f"`r90` = {r} is not a rank of this layer, which has {len(s)} singular values.")
    energy = s.pow(2).cumsum(0) / s.pow(2).sum()
    kept = float(energy[r - 1])
    want = int((energy < keep - 1e-12).sum()) + 1
    by_amplitude = int((s.cumsum(0) / s.sum() < keep - 1e-12).sum()) + 1
    expect(r == want or r != by_amplitude, f"Rank {r} keeps {keep:.0%} of sum s_i, not of sum s_i^2: the energy "
                                           "is the singular values squared.")
    expect(kept >= keep, f"Rank {r} keeps {kept:.1%} of the energy, less than {keep:.0%}"
                         + (" (off by one? a count is the index + 1)." if r == want - 1 else "."))
    expect(r == want, f"Rank {r} keeps {kept:.1%}, but rank {r - 1} already keeps {float(energy[r - 2]):.1%} "
                      f">= {keep:.0%}: the smallest rank was asked" + (" (off by one?)." if r == want + 1 else "."))
    return f"rank {r} keeps {kept:.1%} of the energy; rank {r - 1} would keep less than {keep:.0%}"


def tucker2_weights(count, conv, ranks) -> str:
    """``count``: the weights of the Tucker-2 chain of ``conv`` at ranks (R_out, R_in): a 1x1
    C_in -> R_in, the k x k core R_in -> R_out, a 1x1 R_out -> C_out (biases aside)."""
    conv = module(conv, "conv", nn.Conv2d)
    r_out, r_in = ranks
    c_out, c_in, kh, kw = conv.weight.shape
    x = whole(count, "tucker_weights")
    parts = {"first": c_in * r_in, "core": r_in * r_out * kh * kw, "last": r_out * c_out}
    want = sum(parts.values())
    if x == want:
        return f"{x:,} weights in the three convolutions, {conv.weight.numel():,} in the original"
    for wrong, hint in [(parts["first"] + r_in * r_out + parts["last"], "the core is a k x k convolution: R_in R_out k k weights"),
                        (c_in * r_out + r_in * r_out * kh * kw + r_in * c_out, "the ranks are swapped: the first 1x1 maps "
                                                                                "C_in -> R_in, the last R_out -> C_out"),
                        (want + c_out, "biases aside: the weights only were asked"),
                        (conv.weight.numel(), "that is the original kernel; count the three factors")]:
        expect(x != wrong, f"{x:,} weights: {hint}.")
    raise AssertionError(f"{x:,} weights is not the chain's count: add C_in R_in (first 1x1) + R_in R_out k k "
                         "(core) + R_out C_out (last 1x1).")

# ---------------------------------------------------------------- the student's truncated SVD


def svd_layer_cases(seed: int = 0):
    """Linear layers and ranks the student did not pick: tall, wide and square, with and
    without a bias, ranks from 1 to most of the way up."""
    g = torch.Generator().manual_seed(seed)
    for n_in, n_out, r, bias in [(30, 20, 5, True), (12, 50, 7, True), (16, 16, 1, False), (64, 40, 12, True),
                                 (9, 9, 8, False)]:
        layer = nn.Linear(n_in, n_out, bias=bias)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=g))
            if bias:
                layer.bias.copy_(torch.randn(n_out, generator=g))
        yield layer, r


def check_two_linears(got, layer: nn.Linear, r: int, i: int):
    m, n = layer.weight.shape
    expect(isinstance(got, nn.Sequential) and len(got) == 2 and all(type(x) is nn.Linear for x in got),
           f"Case {i}: return nn.Sequential(first, second) of two nn.Linear layers, got "
           f"{type(got).__name__ if not isinstance(got, nn.Sequential) else [type(x).__name__ for x in got]}.")
    first, second = got
    shape1, shape2 = tuple(first.weight.shape), tuple(second.weight.shape)
    expect(not (shape1 == (r, m) or shape2 == (n, r)) or m == n,
           f"Case {i}: the first layer has weight {shape1}, the second {shape2}: U and V are swapped. The first "
           f"reads the {n} inputs: V_r^T ({r} x {n}, the first r rows of Vh); the second writes the {m} outputs: U_r S_r.")
    expect(first.in_features == n and second.out_features == m,
           f"Case {i}: the first layer should read the layer's {n} inputs and the second write its {m} outputs; "
           f"yours are {shape1} and {shape2} (transposed?).")
    expect(first.out_features == r and second.in_features == r,
           f"Case {i}: rank {r} was asked; your layers pass {first.out_features} values between them"
           + (" (off by one? keep s_1 .. s_r: [:r])." if abs(first.out_features - r) == 1 else "."))
    expect(first.bias is None, f"Case {i}: the first layer has a bias: the bias is added once, after U_r S_r; "
                               "the first layer is V_r^T x alone (bias=False).")
    if layer.bias is None:
        expect(second.bias is None, f"Case {i}: the layer has no bias, so the second layer has none either.")
    else:
        expect(second.bias is not None, f"Case {i}: the second layer has no bias: it carries the layer's bias b.")
        expect(torch.allclose(second.bias.detach().double(), layer.bias.detach().double(), atol=1e-6),
               f"Case {i}: the second layer's bias should be the layer's own bias b, unchanged.")
    return first, second


def truncated_svd(fn) -> str:
    """Check ``fn(layer, r) -> nn.Sequential(first, second)``: first = nn.Linear(n, r, bias=False)
    with weight V_r^T, second = nn.Linear(r, m) with weight U_r S_r and the layer's bias, on five
    random layers; the product must reach the Eckart-Young error sqrt(sum_{i > r} s_i^2)."""
    hint = "write it with torch.linalg.svd: fz.svd_linear and fz.svd_factorize are off limits here"
    worst = 0.0
    for i, (layer, r) in enumerate(svd_layer_cases(), 1):
        w = layer.weight.detach().double()
        before = [p.detach().clone() for p in layer.parameters()]
        with switched_off(fz, ["svd_linear", "svd_factorize"], hint):
            got = call(fn, "truncated_svd", layer, r)
        expect(all(torch.equal(a, b) for a, b in zip(before, layer.parameters())),
               f"Case {i}: your function changed the layer it was given: build new layers, leave the original alone.")
        first, second = check_two_linears(got, layer, r, i)
        product = second.weight.detach().double() @ first.weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        best = float(s[r:].pow(2).sum().sqrt())
        error = float((w - product).norm())
        scale = float(s.pow(2).sum().sqrt())
        if abs(error - best) > 1e-4 * scale:
            mistakes = [(u[:, :r] @ vh[:r], "the singular values are missing: fold S_r into one factor (U_r S_r)"),
                        (u[:, :r] * s[:r] ** 2 @ vh[:r], "S_r is folded into both factors: once is enough "
                                                          "(or sqrt(S_r) into each)"),
                        (u[:, -r:] * s[-r:] @ vh[-r:], "you kept the r *smallest* singular values; torch.linalg.svd "
                                                        "sorts them largest first, so keep [:r]"),
                        ((u[:, :r] * s[:r] @ vh[:r]).T if w.shape[0] == w.shape[1] else None,
                         "you built W_r transposed: first = V_r^T (rows of Vh), second = U_r S_r (columns of U)")]
            for wrong, why in mistakes:
                if wrong is not None and torch.allclose(product, wrong, atol=1e-4 * scale):
                    raise AssertionError(f"Case {i}: {why}.")
            raise AssertionError(f"Case {i}: the two layers multiply to a matrix at distance {error:.4g} from W; the "
                                 f"best rank-{r} approximation is at {best:.4g} (Eckart-Young): keep the r largest "
                                 "singular values, first = V_r^T, second = U_r S_r.")
        x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            want = x.double() @ (u[:, :r] * s[:r] @ vh[:r]).T + (0 if layer.bias is None else layer.bias.double())
            out = got(x)
        expect(torch.allclose(out.double(), want, atol=1e-4 * max(1.0, scale)),
               f"Case {i}: the weights are right but the model's output is not W_r x + b: keep it two plain layers.")
        worst = max(worst, abs(error - best) / scale)
    return f"all 5 random layers reach the Eckart-Young error sqrt(sum of the dropped s_i^2) (worst gap {worst:.1e} of ||W||)"

# ---------------------------------------------------------------- the design task: a rank plan

RANK_PLAN_TARGET = dict(reduction=4.0, max_drop=0.5)  # x fewer weights in fc1-fc3, validation points lost
LENET300 = ("fc1", "fc2", "fc3")


def rank_plan_weights(model: nn.Module, ranks: dict) -> tuple[int, int]:
    """(weights of fc1-fc3 under the plan, weights of the dense layers): r (m + n) for a
    factorized layer, m n for one left whole (rank ``None``); biases aside."""
    dense = sum(getattr(model, n).weight.numel() for n in LENET300)
    planned = sum(getattr(model, n).weight.numel() if r is None else r * sum(getattr(model, n).weight.shape)
                  for n, r in ranks.items())
    return planned, dense


def rank_plan(ranks, n_val: int | None = None) -> str:
    """``ranks``: {"fc1": r1, "fc2": r2, "fc3": r3} (``None`` leaves a layer whole). Applied with
    ``fz.svd_factorize`` to a fresh pretrained LeNet-300-100, no fine-tuning: at least
    ``RANK_PLAN_TARGET["reduction"]`` times fewer weights in the three layers, at most
    ``RANK_PLAN_TARGET["max_drop"]`` points of validation accuracy lost."""
    from ..zoo import load_pretrained
    ranks = dict(mapping(ranks, "ranks", LENET300, example='{"fc1": 64, "fc2": 16, "fc3": None}'))
    model = load_pretrained("lenet300", "cpu")
    for name, r in ranks.items():
        if r is None:
            continue
        limit = min(getattr(model, name).weight.shape)
        r = ranks[name] = whole(r, f"ranks[{name!r}]")
        expect(1 <= r <= limit, f"`ranks[{name!r}]` = {r}: a rank of {name} lies between 1 and {limit} (or None "
                                "to leave the layer whole).")
    planned, dense = rank_plan_weights(model, ranks)
    reduction = dense / planned
    target, max_drop = RANK_PLAN_TARGET["reduction"], RANK_PLAN_TARGET["max_drop"]
    expect(reduction >= target, f"Your plan keeps {planned:,} of the {dense:,} weights, {reduction:.2f}x fewer; "
                                f"at least {target:g}x was asked: lower some ranks (fc1 holds most of the weights).")
    factorized = fz.svd_factorize(model, ranks={n: r for n, r in ranks.items() if r is not None})
    drop = pretrained_val_accuracy("lenet300", n_val) - val_accuracy(factorized, "mnist", n_val)
    expect(drop <= max_drop, f"At {reduction:.2f}x fewer weights your plan loses {drop:.2f} validation points without "
                             f"fine-tuning, more than {max_drop:g}: spend the rank where the spectrum falls slowly.")
    return f"{reduction:.2f}x fewer weights in fc1-fc3, {drop:.2f} validation points lost without fine-tuning"
