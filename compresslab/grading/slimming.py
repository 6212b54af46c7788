"""Checkers for notebook 04 (norm-based pruning, network slimming).

Network slimming removes the ``round(s N)`` channels with the smallest ``|gamma|`` over all N
BatchNorm channels of the network (one global threshold), keeping at least the largest ``|gamma|``
of every layer. The design task applies a plan to a fresh pretrained copy and scores it on the
validation split, without fine-tuning.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import metrics, models, structured, zoo
from ..pruning import mask_lowest
from .common import answered, call, expect, mapping, module, number, pretrained_val_accuracy, switched_off, tensor, \
    val_accuracy, whole
from .structured import SHAPE, indices, own_code

__all__ = ["linf_scores", "spearman_rho", "slimming_threshold", "global_slimming_plan", "slimming_design"]


def linf_scores(linf, w1) -> str:
    """``linf``: the L-infinity norm (largest |w|) of every output filter of ``w1``."""
    w1 = tensor(w1, "w1").detach()
    got = tensor(linf, "linf", (w1.shape[0],), floating=True)
    if torch.allclose(got, structured.filter_norms(w1, float("inf"))):
        return f"right: one score per filter, {len(got)} of them"
    flat = w1.flatten(1)
    for wrong, hint in [(flat.max(1).values, "take absolute values first: a large negative weight counts"),
                        (flat.abs().sum(1), "that is the L1 norm (a sum); L-infinity is the maximum"),
                        (flat.abs().min(1).values, "that is the smallest |w| of each filter; take the largest")]:
        expect(not torch.allclose(got, wrong), f"Not quite: {hint}.")
    raise AssertionError("Not the L-infinity scores: |w|, one row per filter (flatten(1)), the maximum of each row.")


def ranks(s: torch.Tensor) -> torch.Tensor:
    return s.argsort().argsort().double()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman_rho(rho, a, b) -> str:
    """``rho``: Spearman's rank correlation of the score vectors ``a`` and ``b`` (no ties)."""
    x = number(rho, "rho_l1_linf")
    a, b = tensor(a, "a").detach(), tensor(b, "b").detach()
    if math.isclose(x, pearson(ranks(a), ranks(b)), abs_tol=1e-6):
        return f"right: rho = {x:.3f}"
    expect(not math.isclose(x, pearson(a, b), abs_tol=1e-6), "That is Pearson's correlation of the scores "
                                                             "themselves: correlate their ranks.")
    expect(not math.isclose(x, pearson(a.argsort().double(), b.argsort().double()), abs_tol=1e-6),
           "One argsort gives the order (which filter is 1st, 2nd, ...), not each filter's rank: argsort twice.")
    expect(-1 <= x <= 1, f"A correlation lies in [-1, 1]; got {x:g}.")
    raise AssertionError("Not Spearman's rho: rank both score vectors, centre the ranks, then their cosine.")


def slimming_threshold(threshold, below, model, plan) -> str:
    """``threshold``: the smallest |gamma| among the channels ``plan`` keeps (over all layers), which
    separates kept from removed; ``below``: how many channels of the network lie under it."""
    t = number(threshold, "threshold")
    pairs = structured.conv_batchnorm_pairs(module(model, "model"))
    kept, removed = [], []
    for name, bn in pairs.items():
        g, alive = bn.weight.detach().abs(), torch.zeros(bn.num_features, dtype=torch.bool)
        alive[plan[name]] = True
        kept.append(g[alive]), removed.append(g[~alive])
    kept, removed = torch.cat(kept), torch.cat(removed)
    lo, hi = float(removed.max()) if len(removed) else -math.inf, float(kept.min())
    signed = min(float(bn.weight.detach()[plan[n]].min()) for n, bn in pairs.items())
    expect(not (t < 0 and math.isclose(t, signed)), "That is a signed gamma: the scores are |gamma|.")
    expect(not math.isclose(t, lo, rel_tol=1e-9), "That is the largest |gamma| among the *removed* channels; "
                                                  "take the smallest among the kept ones.")
    expect(lo < t <= hi, f"Your threshold does not separate the channels: {int((kept < t).sum())} kept channels "
                         f"lie below it and {int((removed >= t).sum())} removed ones at or above it.")
    expect(math.isclose(t, hi, rel_tol=1e-9), "Your threshold separates kept from removed, but the task asks "
                                              "for the smallest |gamma| among the kept channels.")
    n = whole(below, "below")
    total = len(kept) + len(removed)
    want = int((torch.cat([kept, removed]) < t).sum())
    expect(n != want + 1, f"`below` = {n}: count the channels with |gamma| < threshold strictly, over every layer.")
    expect(n == want, f"`below` = {n} is not the number of channels (of {total}, all layers) with "
                      "|gamma| < threshold.")
    return f"right: the threshold separates the {len(kept)} kept channels from the {want} removed"


def slim(model, amount, signed=False, floor=True, per_layer=False) -> dict:
    """The reference slimming plan, and the usual mistakes (signed gamma, no floor, per-layer)."""
    scores = {n: bn.weight.detach() if signed else bn.weight.detach().abs()
              for n, bn in structured.conv_batchnorm_pairs(model).items()}
    if per_layer:
        alive = [mask_lowest(s, amount) for s in scores.values()]
    else:
        alive = mask_lowest(torch.cat(list(scores.values())), amount).split([len(s) for s in scores.values()])
    plan = {}
    for (name, s), a in zip(scores.items(), alive):
        a = a.clone()
        if floor:
            a[s.argmax()] = 1
        plan[name] = a.nonzero().squeeze(1)
    return plan


def slimming_cases():
    """(model, amount): the sparsity-trained CNN, and a small net whose middle layer would lose
    every channel to the global threshold (with negative gammas, where |gamma| is not gamma)."""
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():  # the weights do not matter, only the BN scales
        net = models.cifar_cnn(widths=(8, 6, 10)).eval()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for i, bn in enumerate(bns):
            c, sign = bn.num_features, torch.where(torch.rand(bn.num_features, generator=g) < 0.3, -1.0, 1.0)
            scale = 1e-3 if i == 2 else 1.0  # bn3: every |gamma| below every other layer's
            bn.weight.copy_(sign * scale * (0.1 + torch.rand(c, generator=g)))
    trained = zoo.load_pretrained("cifar_cnn_slim", "cpu")
    return [(trained, 0.3), (trained, 0.5), (net, 0.4), (net, 0.25)]


def global_slimming_plan(fn) -> str:
    """``fn(model, amount) -> {conv name: sorted kept indices}``: the global |gamma| threshold of network
    slimming with at least one channel per layer, on cifar_cnn_slim and on an adversarial small net."""
    answered(fn, "my_slimming_plan")
    own_code(fn, "my_slimming_plan", ("torch_pruning",))
    hint = "this is the package's answer (structured.slimming_plan): write the threshold yourself."
    for i, (model, amount) in enumerate(slimming_cases(), start=1):
        pairs = structured.conv_batchnorm_pairs(model)
        with switched_off(structured, ["slimming_plan"], hint):
            answer = call(fn, "my_slimming_plan", copy.deepcopy(model), amount)
        got = mapping(answer, "my_slimming_plan(...)", pairs, "{'conv1': kept indices, ...}")
        got = {n: indices(v, f"my_slimming_plan(...)[{n!r}]", pairs[n].num_features) for n, v in got.items()}
        want = slim(model, amount)
        if all(torch.equal(got[n].sort().values, want[n]) for n in want):
            expect(all(torch.equal(got[n], want[n]) for n in want), "The right channels; sort each layer's indices.")
            continue
        same = lambda plan: all(torch.equal(got[n].sort().values, plan[n]) for n in plan)
        empty = [n for n in got if len(got[n]) == 0]
        if empty:
            raise AssertionError(f"Case {i}: layer {empty[0]} has no channel left: keep at least its largest |gamma|.")
        for mistake, hint in [(dict(signed=True), "rank by |gamma|, not gamma: a negative scale is a strong channel"),
                              (dict(per_layer=True), f"that removes {amount:.0%} of every layer; the threshold is "
                                                     "*global*, one over all channels of the network")]:
            expect(not same(slim(model, amount, **mistake)), f"Case {i}: {hint}.")
        n_got = sum(len(v) for v in got.values())
        total = sum(bn.num_features for bn in pairs.values())
        k = sum(len(v) for v in want.values())
        expect(n_got == k, f"Case {i}: your plan keeps {n_got} of {total} channels; removing round({amount} * "
                           f"{total}) of the smallest |gamma| (then restoring each layer's largest if it lost all) "
                           f"keeps {k}.")
        raise AssertionError(f"Case {i}: the right number of channels, but not those with the largest |gamma| "
                             "over the whole network.")
    return "right: the global threshold on cifar_cnn_slim and on the small net, one channel kept where a layer lost all"


def slimming_design(plan, max_flops: float = 0.38, max_drop: float = 1.0, n: int = 2000) -> str:
    """``plan``: kept channels per conv of cifar_cnn_slim; the design target: at most ``max_flops`` of
    the unpruned FLOPs with at most ``max_drop`` points of validation accuracy lost, no fine-tuning."""
    base = zoo.load_pretrained("cifar_cnn_slim", "cpu")
    pairs = structured.conv_batchnorm_pairs(base)
    plan = mapping(plan, "design_plan", pairs, "{'conv1': kept indices, ...} (as slimming_plan returns)")
    plan = {k: indices(v, f"design_plan[{k!r}]", pairs[k].num_features) for k, v in plan.items()}
    expect(all(len(v) for v in plan.values()), "A layer with no channel left cuts the network in two.")
    model = structured.shrink(base, plan, SHAPE)
    f = metrics.flops(model, SHAPE) / metrics.flops(base, SHAPE)
    expect(f <= max_flops, f"Your network keeps {f:.1%} of the FLOPs; at most {max_flops:.0%} is asked.")
    drop = pretrained_val_accuracy("cifar_cnn_slim", n) - val_accuracy(model, "cifar10", n)
    expect(drop <= max_drop, f"{f:.1%} of the FLOPs, but {drop:.1f} points of validation accuracy lost; at most "
                             f"{max_drop:g} are allowed: you cut channels the network still uses.")
    return (f"target met: {f:.1%} of the FLOPs (at most {max_flops:.0%}), {drop:.2f} points lost on {n} "
            f"validation images (at most {max_drop:g})")
