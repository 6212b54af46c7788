"""Checks for notebook 05 (iterative pruning, the lottery ticket): compare the student's answer
with a reference computed here, and say *what* is wrong without printing the answer.

* AGP (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3.
* Pruning a share p of the *remaining* weights per round leaves (1 - p)^r after r rounds.
* One lottery-ticket round (Frankle & Carbin 2019): in each layer, remove the fraction
  ``rate[layer]`` of the surviving weights with the smallest trained magnitude, then reset the
  survivors to their initial values theta_0 (the pruned ones to 0).
"""
from __future__ import annotations

import math

import torch

from .common import call, switched_off, dataset, expect, mapping, module, number, pretrained_val_accuracy, tensor, \
    val_accuracy, whole

__all__ = ["agp_by_hand", "rounds_to_keep", "lottery_limits", "lottery_round_cases", "reference_lottery_round",
           "prune_and_rewind", "ft_subset", "sparse_lenet"]


def agp_by_hand(s, t=350, s_i=0.0, s_f=0.8, t0=100, n=10, dt=50) -> str:
    """Check ``s`` = the AGP sparsity at step t (05, exercise 1)."""
    s = number(s, "s_350")
    expect(not 1 < s <= 100, f"s_350 = {s:g} looks like a percentage: give the sparsity as a fraction.")
    p = min(max((t - t0) / (n * dt), 0.0), 1.0)
    right = s_f + (s_i - s_f) * (1 - p) ** 3
    if math.isclose(s, right, abs_tol=1e-9):
        return f"sparsity {s:.4f} at step {t}: {(1 - p) ** 3:.3f} of the gap from s_i to s_f is still left"
    for wrong, hint in [(s_f + (s_i - s_f) * (1 - p), "the schedule is cubic: raise (1 - (t - t0)/(n Δt)) to the power 3"),
                        (s_f * p ** 3, "cube (1 - progress), not the progress itself"),
                        ((s_i - s_f) * (1 - p) ** 3, "start from s_f: s_t = s_f + (s_i - s_f)(...)^3"),
                        (s_f + (s_i - s_f) * (1 - t / (n * dt)) ** 3, "measure the progress from t0: (t - t0) / (n Δt)"),
                        (s_f - (s_i - s_f) * (1 - p) ** 3, "(s_i - s_f) is negative here: add it, do not subtract")]:
        expect(not math.isclose(s, wrong, abs_tol=1e-9), f"s_350 = {s:.4f}: almost: {hint}.")
    raise AssertionError(f"s_350 = {s:.4f} is not the AGP formula at t = {t} (t0 = {t0}, n = {n}, Δt = {dt}).")


def rounds_to_keep(n_rounds, rate=0.2, left=0.05) -> str:
    """Check ``n_rounds`` = the fewest rounds of pruning ``rate`` of the remaining weights that
    leave at most ``left`` of them (05, exercise 2)."""
    r = whole(n_rounds, "n_rounds")
    expect(r >= 1, f"n_rounds = {r}: at least one round is needed.")
    if (1 - rate) ** r > left:
        raise AssertionError(f"After {r} rounds {(1 - rate) ** r:.1%} of the weights are left, more than {left:.0%}: "
                             f"each round removes {rate:.0%} of what *remains*, so the rounds shrink: (1 - p)^n.")
    expect((1 - rate) ** (r - 1) > left, f"{r} rounds leave {(1 - rate) ** r:.1%}, but {r - 1} rounds already leave "
                                         f"{(1 - rate) ** (r - 1):.1%}, at most {left:.0%}: the *fewest* rounds, please.")
    return f"{r} rounds leave {(1 - rate) ** r:.1%} of the weights ({r - 1} would leave {(1 - rate) ** (r - 1):.1%})"


def lottery_limits(ticket_limit, reinit_limit, lottery, within=0.5) -> str:
    """Check the smallest fraction of remaining weights at which the ticket (one run per round)
    and the re-initialized control (mean over its seeds per round) stay within ``within`` points
    of their own round-0 accuracy (05, exercise 3), computed from the student's ``lottery`` table."""
    import pandas as pd
    expect(isinstance(lottery, pd.DataFrame) and {"init", "round", "remaining", "accuracy"} <= set(lottery.columns),
           "Pass the notebook's `lottery` table (columns init, round, remaining, accuracy).")
    got = {"ticket_limit": ticket_limit, "reinit_limit": reinit_limit}
    for name, v in got.items():
        number(v, name)
        expect(not 1 < v <= 100, f"`{name}` = {v:g} looks like a percentage: give a fraction of the weights.")
    inits = sorted(lottery["init"].unique(), key=lambda s: not str(s).startswith("winning"))
    expect(len(inits) == 2, "`lottery` should hold two kinds of runs (the ticket and the random re-init).")
    tables, rights = {}, {}
    for name, init in zip(got, inits):
        acc = lottery[lottery["init"] == init].groupby("round")[["remaining", "accuracy"]].mean()
        ok = acc[acc["accuracy"] >= acc.loc[0, "accuracy"] - within]
        tables[name], rights[name] = (acc, ok), float(ok["remaining"].min())
    same = lambda a, b: math.isclose(a, b, rel_tol=1e-9)
    for name, v in got.items():
        (acc, ok), right, v = tables[name], rights[name], float(v)
        if same(v, right):
            continue
        other = [o for o in got if o != name][0]
        expect(not same(v, rights[other]), f"`{name}` holds the other curve's limit: ticket and re-init swapped?")
        expect(not same(v, 1 - right), f"`{name}`: that is a sparsity; the fraction of weights *remaining* was asked.")
        expect(not same(v, float(acc["remaining"].min())),
               f"`{name}`: that is the sparsest round tested, but there it is more than {within} points below round 0.")
        if any(same(v, x) for x in ok["remaining"]):
            raise AssertionError(f"`{name}` = {v:.4f} is within {within} points, but a sparser round is too: the smallest "
                                 "such fraction, please.")
        if any(same(v, x) for x in acc["remaining"]):
            raise AssertionError(f"`{name}` = {v:.4f}: at that round the accuracy is more than {within} points below "
                                 "round 0 (for the re-init, compare the mean over its seeds).")
        raise AssertionError(f"`{name}` = {v:.4f} is not one of the 'remaining' fractions in `lottery`.")
    return f"ticket within {within} points down to {ticket_limit:.1%} of the weights, the re-init down to {reinit_limit:.1%}"

# ---------------------------------------------------------------- one lottery-ticket round


def lottery_round_cases(seed: int = 0):
    """(trained, init, masks, rate): three small 'models' (dicts of weights), the first in round 0
    (all masks ones), the others with masks from earlier rounds; pruned positions of ``trained``
    hold stale values, as ``weight_orig`` under a torch mask does."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"fc1": (40, 30), "fc2": (20, 40), "fc3": (5, 20)}
    for keep in (1.0, 0.8, 0.41):
        init = {n: torch.randn(s, generator=g) * 0.1 for n, s in shapes.items()}
        trained = {n: w + torch.randn(w.shape, generator=g) * 0.2 for n, w in init.items()}
        masks = {n: (torch.rand(w.shape, generator=g) < keep).float() if keep < 1 else torch.ones_like(w)
                 for n, w in init.items()}
        yield trained, init, masks, {"fc1": 0.2, "fc2": 0.2, "fc3": 0.1}


def reference_lottery_round(trained, init, masks, rate, *, share_of="remaining", score="magnitude",
                            old_mask=True, rewind=True):
    """The reference round, and the usual mistakes (a share of all weights, signed scores, the
    old mask forgotten, no rewinding)."""
    new_masks, rewound = {}, {}
    for n, w in trained.items():
        alive = masks[n].bool() if old_mask else torch.ones_like(w, dtype=torch.bool)
        k = round(rate[n] * (int(alive.sum()) if share_of == "remaining" else w.numel()))
        s = w.abs() if score == "magnitude" else w
        s = torch.where(alive, s, torch.full_like(s, -float("inf")))
        mask = alive.clone()
        if k:
            mask.view(-1)[torch.topk(s.flatten(), int(alive.numel() - alive.sum()) + k, largest=False).indices] = False
        new_masks[n] = mask.float()
        rewound[n] = (init[n] if rewind else w) * mask
    return new_masks, rewound


def package_pruning_off():
    """``compresslab.pruning``'s mask makers refuse to run while the student's function does."""
    from .. import pruning
    return switched_off(pruning, ["mask_lowest", "layerwise_masks", "global_masks", "prune_model", "prune_per_layer"],
                        "compresslab.pruning's mask functions are switched off here: select the weights "
                             "yourself (torch.kthvalue or torch.topk on the magnitudes).")


def prune_and_rewind(fn) -> str:
    """Check ``fn(trained, init, masks, rate) -> (new_masks, rewound)`` (05, exercise 4): one round
    of the lottery ticket on three small three-layer cases (dicts layer -> tensor)."""
    for i, case in enumerate(lottery_round_cases(), start=1):
        trained, init, masks, rate = case
        copies = [{n: t.clone() for n, t in d.items()} for d in (trained, init, masks)]
        with package_pruning_off():
            out = call(fn, "prune_and_rewind", *copies, dict(rate))
        expect(isinstance(out, (tuple, list)) and len(out) == 2, "Return a pair (new_masks, rewound).")
        got_m = mapping(out[0], "new_masks", list(trained))
        got_w = mapping(out[1], "rewound", list(trained))
        want_m, want_w = reference_lottery_round(trained, init, masks, rate)
        for n in trained:
            m = tensor(got_m[n], f"new_masks[{n!r}]", shape=tuple(trained[n].shape)).detach()
            expect(bool(((m == 0) | (m == 1)).all()), f"Case {i}: new_masks[{n!r}] should hold 0s and 1s.")
            w = tensor(got_w[n], f"rewound[{n!r}]", shape=tuple(trained[n].shape), floating=True).detach()
            m = m.float()
            if not torch.equal(m, want_m[n]):
                kept, right = int(m.sum()), int(want_m[n].sum())
                for kw, hint in [(dict(share_of="all"), f"prune {rate[n]:.0%} of the *remaining* weights of {n}, "
                                                        "not of all of them"),
                                 (dict(score="signed"), "score by magnitude |w|, not by the signed value"),
                                 (dict(old_mask=False), "weights pruned in earlier rounds stay pruned: rank only the "
                                                        "survivors (masks[layer] == 1)")]:
                    expect(not torch.equal(m, reference_lottery_round(trained, init, masks, rate, **kw)[0][n]),
                           f"Case {i}, {n}: almost: {hint}.")
                expect(not bool((m > masks[n]).any()), f"Case {i}, {n}: your mask revives weights pruned in an "
                                                       "earlier round: multiply by the old mask.")
                expect(kept == right, f"Case {i}, {n}: your mask keeps {kept} of the {int(masks[n].sum())} surviving "
                                      f"weights; removing {rate[n]:.0%} of them (rounded) keeps a different count.")
                raise AssertionError(f"Case {i}, {n}: the right number of weights is kept, but not the ones with the "
                                     "largest trained magnitude.")
            if not torch.allclose(w, want_w[n], atol=1e-7):
                expect(not torch.allclose(w, trained[n] * m, atol=1e-7), f"Case {i}, {n}: the survivors keep their "
                       "trained values: rewind them to their initial values init[layer].")
                expect(not torch.allclose(w, init[n], atol=1e-7), f"Case {i}, {n}: rewound weights: the pruned ones "
                                                                  "should be 0 (init * new mask).")
                raise AssertionError(f"Case {i}, {n}: rewound should be init[layer] * new_masks[layer].")
    return "all 3 cases: the right weights pruned per layer, the survivors rewound to θ0"

# ---------------------------------------------------------------- the design task


DESIGN_SPARSITY, DESIGN_MAX_DROP = 0.97, 4.5  # 33x fewer weights; validation points lost at most


def ft_subset(n: int = 6000, seed: int = 1):
    """``n`` MNIST training images *outside* the validation split, for fine-tuning (a Dataset
    whose x_train / y_train are those images)."""
    import dataclasses
    from ..data import VAL_SIZE, take_subset
    mnist = dataset("mnist")
    y = mnist.y_train
    val_idx, _ = take_subset(torch.arange(len(y)), y, VAL_SIZE, 0)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[val_idx] = False
    rest = rest.nonzero().squeeze(1)
    idx = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[:n]].sort().values
    return dataclasses.replace(mnist, x_train=mnist.x_train[idx], y_train=mnist.y_train[idx])


def sparse_lenet(model) -> str:
    """Check a pruned LeNet-300-100 (05, design): at least 97% of the weights of fc1, fc2, fc3 are
    zero (counted here, masks applied) and it loses at most 4.5 points of validation accuracy
    against the zoo model's (5,000 validation images)."""
    from ..metrics import prunable_layers
    from ..models import lenet300
    model = module(model, "model")
    shapes = {n: tuple(m.weight.shape) for n, m in prunable_layers(lenet300()).items()}
    layers = prunable_layers(model)
    got = {n: tuple(m.weight.shape) for n, m in layers.items()}
    expect(got == shapes, f"The model should be a LeNet-300-100 (layers {shapes}), got layers {got}.")
    zeros = sum(int((m.weight.detach() == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    s = zeros / total
    expect(s >= DESIGN_SPARSITY - 1e-9, f"{s:.1%} of the weights are zero; at least {DESIGN_SPARSITY:.0%} is asked.")
    drop = pretrained_val_accuracy("lenet300") - val_accuracy(model.eval(), "mnist")
    expect(drop <= DESIGN_MAX_DROP, f"{s:.1%} sparse, but {drop:.2f} points lost on validation; at most "
                                    f"{DESIGN_MAX_DROP:g} is allowed: fine-tune longer, at another learning rate, or "
                                    "prune more gradually.")
    return f"{s:.1%} of the weights zero ({total / max(total - zeros, 1):.0f}x fewer), {drop:.2f} points below the zoo " \
           f"model on 5,000 validation images (at most {DESIGN_MAX_DROP:g} allowed)"
