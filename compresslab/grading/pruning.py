"""Checkers for notebooks 01 (unstructured pruning) and 03 (random pruning).

Magnitude pruning removes the fraction ``s`` of a layer's weights with the smallest ``|w|``: with
``k = round(s n)`` and ``tau`` the k-th smallest ``|w|``, the mask is ``M = 1[|w| > tau]``, applied
as in ``torch.nn.utils.prune``: a parameter ``weight_orig``, a buffer ``weight_mask`` and a
forward pre-hook ``weight = weight_orig * weight_mask``. Random filter pruning removes the first
``round(s c_out)`` filters of ``torch.randperm(c_out, generator)``. The design tasks take a plan
(a sparsity per layer of LeNet-300-100), apply it to a fresh pretrained copy, and score it on the
validation split against the pretrained model's own validation accuracy.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from .. import metrics, pruning
from .common import (answered, call, expect, fraction, mapping, module, number, pretrained_val_accuracy,
                     tensor, val_accuracy)

__all__ = ["threshold_mask", "weights_only_compression", "csr_lowest_win", "magnitude_pruned_layer",
           "lenet300_sparsities", "layerwise_speedup", "largest_gap", "protected_output_layer",
           "random_filters", "random_plan", "plan_outcome"]

LAYERS = ("fc1", "fc2", "fc3")


def binary(mask, what: str, shape) -> torch.Tensor:
    m = tensor(mask, what, shape)
    expect(bool(((m == 0) | (m == 1)).all()), f"`{what}` should hold only 0 and 1 (1 = keep).")
    return m.bool()


def mask_hint(got: torch.Tensor, want: torch.Tensor, amount: float, what: str) -> None:
    """Fail with the likely mistake when a 0/1 mask is not the wanted one."""
    if torch.equal(got, want):
        return
    n, removed, k = got.numel(), int((~got).sum()), int((~want).sum())
    expect(removed != n - k, f"`{what}` removes {removed / n:.0%} of the weights: it is inverted (1 = keep, "
                             f"0 = prune), {amount:.0%} should go.")
    expect(removed != k - 1, f"`{what}` removes one weight too few: the k-th smallest |w| itself goes "
                             "(keep |w| > threshold, not >=).")
    expect(removed == k, f"`{what}` removes {removed / n:.1%} of the weights; {amount:.0%} was asked "
                         f"(k = round({amount} n) weights).")
    raise AssertionError(f"`{what}` removes the right number of weights, but not the smallest |w| "
                         "(compare magnitudes, |w|, not signed values).")


# ---------------------------------------------------------------- notebook 01


def threshold_mask(my_mask, w, amount: float) -> str:
    """``my_mask``: the magnitude mask of ``w`` at sparsity ``amount`` (1 = keep)."""
    got = binary(my_mask, "my_mask", w.shape)
    mask_hint(got, pruning.mask_lowest(w.abs(), amount).bool(), amount, "my_mask")
    return f"right: the mask keeps the {got.float().mean():.0%} largest |w|"


def weights_only_compression(value, model) -> str:
    """``value`` = n / nnz over the prunable layers' weights of ``model`` (biases left out)."""
    x = number(value, "weights_only_x")
    layers = metrics.prunable_layers(module(model, "model")).values()
    n = sum(m.weight.numel() for m in layers)
    nnz = sum(int(m.weight.count_nonzero()) for m in layers)
    if math.isclose(x, n / nnz, rel_tol=1e-9):
        return f"right: {x:.1f}x fewer weights"
    with_bias = metrics.count_parameters(model) / metrics.count_nonzero(model)
    expect(not math.isclose(x, with_bias, rel_tol=1e-9), "That counts the biases too: use the weights only.")
    expect(not math.isclose(x, nnz / n, rel_tol=1e-9), "That is the fraction of weights kept: the compression "
                                                       "ratio is its inverse, n / nnz.")
    expect(not math.isclose(x, 1 - nnz / n, rel_tol=1e-9), "That is the sparsity; the compression ratio is n / nnz.")
    raise AssertionError(f"{x:g} is not n / nnz of the layers' weights: sum numel() and count_nonzero() "
                         "over conv1, conv2, fc1 and fc2.")


def csr_lowest_win(lowest, csr) -> str:
    """``lowest``: the smallest sparsity of the table ``csr`` at which CSR beats dense at batch 1
    (speed-up > 1), or None when it never does: judged on the student's own measurements."""
    import pandas as pd
    expect(isinstance(csr, pd.DataFrame) and {"sparsity", "batch", "CSR speed-up x"} <= set(csr.columns),
           "Pass the table `csr` of section 7 (columns sparsity, batch, CSR speed-up x).")
    b1 = csr[csr["batch"] == 1].set_index("sparsity")["CSR speed-up x"]
    wins = sorted(s for s, x in b1.items() if x > 1)
    if lowest is None:
        expect(not wins, "`lowest` is None, but in your table CSR is faster than dense at batch 1 "
                         "at some sparsity.")
        return "right: CSR never beats dense at batch 1 in your table"
    s = number(lowest, "lowest")
    match = [t for t in b1.index if math.isclose(t, s, abs_tol=1e-9)]
    expect(match or not 1 < s <= 100, f"`lowest` = {s:g} looks like a percentage: give the sparsity as in the table.")
    expect(match, f"`lowest` = {s:g} is not one of the table's sparsities {list(b1.index)}.")
    if b1[match[0]] <= 1:
        b256 = csr[(csr["batch"] == 256) & (csr["sparsity"] == match[0])]["CSR speed-up x"]
        expect(not (len(b256) and b256.iloc[0] > 1), f"At sparsity {s:g} CSR wins at batch 256, not at batch 1.")
        raise AssertionError(f"At sparsity {s:g} CSR is not faster than dense at batch 1 in your table.")
    expect(s == wins[0], f"CSR is faster at {s:g}, but already at a lower sparsity: take the smallest.")
    return f"right: on this machine CSR first wins at batch 1 at {s:.0%} sparsity"


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight a linear layer computes with, read off its outputs: f(I) - f(0) = W^T."""
    with torch.no_grad():
        eye = torch.eye(layer.in_features)
        return (layer(eye) - layer(torch.zeros(1, layer.in_features))).T


def magnitude_pruned_layer(fn) -> str:
    """``fn(layer, amount)`` prunes an ``nn.Linear`` in place, as ``torch.nn.utils.prune`` does but
    written by hand: ``weight_orig`` (parameter), ``weight_mask`` (buffer, the kthvalue threshold's
    mask) and a forward pre-hook; checked on three layers, before and after 3 SGD steps."""
    g = torch.Generator().manual_seed(0)
    for i, (n_in, n_out, amount) in enumerate([(40, 30, 0.7), (100, 20, 0.9), (12, 8, 0.5)]):
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in ** 0.5)
        w0 = layer.weight.detach().clone()
        want = pruning.mask_lowest(w0.abs(), amount).bool()
        out = call(fn, "prune_layer", layer, amount)
        layer = out if isinstance(out, nn.Linear) else layer
        case = f"Layer {i + 1} ({n_out}x{n_in}, sparsity {amount})"
        expect(not any(isinstance(h, prune.BasePruningMethod) for h in layer._forward_pre_hooks.values()),
               f"{case}: that is torch.nn.utils.prune's hook; write the mask, the buffer and the hook yourself.")
        params, buffers = dict(layer.named_parameters()), dict(layer.named_buffers())
        expect("weight_orig" in params, f"{case}: keep the trained weights as a parameter `weight_orig` "
                                        "(layer.register_parameter), so that the optimizer updates them.")
        expect("weight_mask" in buffers, f"{case}: keep the mask as a buffer `weight_mask` "
                                         "(layer.register_buffer): saved with the model, not trained.")
        expect("weight" not in params, f"{case}: `weight` is still a parameter: delete it "
                                       "(del layer._parameters['weight']); the hook recomputes it.")
        mask_hint(binary(buffers["weight_mask"], "weight_mask", w0.shape), want, amount, "weight_mask")
        try:
            w = effective_weight(layer)
            opt = torch.optim.SGD(layer.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                (layer(torch.randn(16, n_in, generator=g)) * torch.randn(16, n_out, generator=g)).sum().backward()
                opt.step()
            w_after = effective_weight(layer)
        except Exception as e:
            raise AssertionError(f"{case}: your pruned layer does not run and train "
                                 f"({type(e).__name__}: {e}).") from None
        expect(torch.allclose(w, w0 * want, atol=1e-6),
               f"{case}: the layer does not compute with weight_orig * weight_mask (its outputs differ).")
        back = int((w_after[~want] != 0).sum())
        expect(back == 0, f"{case}: after 3 SGD steps {back} pruned weights are non-zero again: apply the mask "
                          "before every forward pass (a forward pre-hook setting weight = weight_orig * weight_mask).")
        expect(not torch.allclose(w_after[want], w0[want]), f"{case}: the kept weights did not change in "
                                                            "3 SGD steps: the optimizer must reach weight_orig.")
    return "all 3 layers: the right mask, and it survives 3 SGD steps"


def plan_outcome(plan, criterion: str = "magnitude", seeds=(0,)) -> tuple[float, float]:
    """(compression n / nnz of the weights, mean validation-accuracy drop over ``seeds``) of a
    per-layer sparsity plan for LeNet-300-100, applied to fresh pretrained copies, no fine-tuning."""
    from ..zoo import load_pretrained
    mapping(plan, "plan", LAYERS, "such as {'fc1': 0.9, 'fc2': 0.8, 'fc3': 0.5}")
    plan = {layer: fraction(plan[layer], f"plan['{layer}']") for layer in LAYERS}
    drops = []
    for seed in seeds:
        model = pruning.prune_per_layer(load_pretrained("lenet300", "cpu"), plan, criterion,
                                        generator=torch.Generator().manual_seed(seed))
        drops.append(pretrained_val_accuracy("lenet300") - val_accuracy(model, "mnist"))
    layers = metrics.prunable_layers(model).values()
    x = sum(m.weight.numel() for m in layers) / max(1, sum(int(m.weight.count_nonzero()) for m in layers))
    return x, sum(drops) / len(drops)


def lenet300_sparsities(plan) -> str:
    """Design: per-layer magnitude sparsities ``{'fc1': s1, 'fc2': s2, 'fc3': s3}`` that make
    LeNet-300-100 at least 12x smaller (weights) and lose at most 8 points of validation accuracy,
    one-shot, without fine-tuning."""
    x, drop = plan_outcome(plan)
    expect(x >= 12, f"Your plan keeps one weight in {x:.1f}; 12x fewer weights is the target: prune more "
                    "where the scan says it costs least.")
    expect(drop <= 8, f"Your plan reaches {x:.1f}x but loses {drop:.2f} points on validation; at most 8 are "
                      "allowed: move sparsity from the sensitive layers to the tolerant ones.")
    return f"on target: {x:.1f}x fewer weights, {drop:.2f} points lost on validation, no fine-tuning"


# ---------------------------------------------------------------- notebook 03


def layerwise_speedup(value) -> str:
    """``value`` = FLOPs / effective FLOPs of LeNet-300-100 pruned layer-wise at sparsity 0.9."""
    x = number(value, "speedup_90")
    if math.isclose(x, 1 / (1 - 0.9), rel_tol=1e-9):
        return f"right: {x:.1f}x fewer multiply-adds"
    expect(not math.isclose(x, 0.1, rel_tol=1e-6), "That is the fraction of multiply-adds *kept*: the speed-up "
                                                   "is the full count divided by the kept count.")
    expect(not math.isclose(x, 0.9, rel_tol=1e-6), "That is the sparsity; the speed-up is FLOPs / effective FLOPs.")
    raise AssertionError(f"{x:g} is not it: every layer keeps the same fraction of its multiply-adds, so "
                         "the speed-up is one over that fraction.")


def gap_table(results, column: str, other: str = "random (layerwise)"):
    acc = results.groupby(["model", "sparsity", "criterion"])[column].mean().unstack()
    return (acc["magnitude (layerwise)"] - acc[other]).dropna()


def largest_gap(answer, results) -> str:
    """``answer`` = (model, sparsity) where magnitude beats layer-wise random pruning by the most
    points right after pruning, seeds averaged; judged on the student's own ``results``."""
    answered(answer, "largest")
    expect(isinstance(answer, tuple) and len(answer) == 2,
           f"`largest` should be a tuple (model, sparsity), such as ('lenet5', 0.5); got a {type(answer).__name__}.")
    name, s = answer[0], number(answer[1], "the sparsity in `largest`")
    gaps = gap_table(results, "pruned")
    expect(name in gaps.index.get_level_values("model"), f"No model {name!r} in `results`.")
    expect(not 1 < s <= 100, f"Sparsity {s:g} looks like a percentage: give it as in `results`, a fraction.")
    match = [t for t in gaps.loc[name].index if math.isclose(t, s, abs_tol=1e-9)]
    expect(match, f"{name} was not pruned to sparsity {s:g} in `results`.")
    key = (name, match[0])
    if gaps[key] == gaps.max():
        return f"right: the largest gap is {name} at {s:.0%} sparsity, {gaps[key]:.1f} points"
    expect(gaps[key] != gaps.min(), "That is the smallest gap: take the largest.")
    expect(gap_table(results, "fine-tuned")[key] != gap_table(results, "fine-tuned").max(),
           "That is the largest gap *after fine-tuning*: use the accuracy right after pruning (column 'pruned').")
    raise AssertionError(f"Magnitude beats random by more elsewhere than at {name}, {s:g}: average the "
                         "'pruned' accuracy over seeds for each (model, sparsity, criterion) and subtract.")


def protected_output_layer(model, acc, test_loader) -> str:
    """``model``: LeNet-300-100 pruned by a *global* random threshold (generator seed 0) to 95%
    of fc1 + fc2, fc3 untouched, then fine-tuned; ``acc``: that model's accuracy on ``test_loader``."""
    from ..train import evaluate
    from ..zoo import load_pretrained
    module(model, "protected")
    layers = metrics.prunable_layers(model)
    fresh = load_pretrained("lenet300", "cpu")
    shapes = {n: m.weight.shape for n, m in metrics.prunable_layers(fresh).items()}
    expect({n: m.weight.shape for n, m in layers.items()} == shapes, "`protected` should be a LeNet-300-100 "
           "(cl.load_pretrained('lenet300', 'cpu')), pruned and fine-tuned.")
    kept = {n: layers[n].weight.detach().cpu() != 0 for n in LAYERS}
    n12 = kept["fc1"].numel() + kept["fc2"].numel()
    gone = 1 - (int(kept["fc1"].sum()) + int(kept["fc2"].sum())) / n12
    expect(abs(gone - 0.95) < 1e-3, f"{gone:.1%} of fc1 and fc2 are zero; 95% should be pruned.")
    expect(bool(kept["fc3"].all()), f"fc3 has {int((~kept['fc3']).sum())} zero weights: it should be untouched "
                                    "(exclude=['fc3']).")
    want = pruning.global_masks(fresh, 0.95, "random", exclude=["fc3"], generator=torch.Generator().manual_seed(0))
    if not all(torch.equal(kept[n], want[n].bool()) for n in ("fc1", "fc2")):
        magnitude = pruning.global_masks(fresh, 0.95, "magnitude", exclude=["fc3"])
        expect(not torch.equal(kept["fc1"], magnitude["fc1"].bool()), "Those are the smallest weights: "
               "the criterion asked is 'random'.")
        raise AssertionError("95% pruned, but not the weights a *global* random threshold removes with "
                             "generator=torch.Generator().manual_seed(0).")
    w0 = fresh.fc1.weight.detach()
    expect(not torch.allclose(layers["fc1"].weight.detach().cpu()[kept["fc1"]], w0[kept["fc1"]]),
           "The surviving weights are the pretrained ones: fine-tune for one epoch on `small_train`.")
    a = number(acc, "protected_acc")
    expect(math.isclose(a, evaluate(model, test_loader)["accuracy"], abs_tol=1e-6),
           "`protected_acc` is not this model's accuracy on `test`: evaluate the fine-tuned model.")
    return f"right: 95% of fc1 + fc2 pruned at random, fc3 untouched, fine-tuned: {a:.2f}%"


def random_filters(fn) -> str:
    """``fn(weight, amount, generator)`` -> a 0/1 mask of shape (c_out,), 1 = keep: removes the
    first round(amount c_out) filters of torch.randperm(c_out, generator=generator)."""
    for i, (c_out, c_in, amount, seed) in enumerate([(20, 1, 0.5, 0), (50, 20, 0.3, 1), (64, 32, 0.75, 2),
                                                     (7, 3, 0.4, 3)]):
        weight = torch.randn(c_out, c_in, 3, 3, generator=torch.Generator().manual_seed(100 + i))
        got = call(fn, "random_filters", weight.clone(), amount, torch.Generator().manual_seed(seed))
        case = f"Layer {i + 1} ({c_out} filters, amount {amount}, seed {seed})"
        answered(got, "random_filters(...)")
        expect(not (isinstance(got, torch.Tensor) and got.shape == weight.shape),
               f"{case}: your mask has the weight's shape; return one entry per filter, shape ({c_out},).")
        got = binary(got, "random_filters(...)", (c_out,))
        k = round(amount * c_out)
        removed = int((~got).sum())
        expect(removed == k or removed != c_out - k, f"{case}: your mask removes {removed} of {c_out} filters: "
                                                     "it is inverted (1 = keep).")
        expect(removed == k, f"{case}: your mask removes {removed} of {c_out} filters; it should remove "
                             f"round({amount} * {c_out})" + (" (round, not int)" if removed == int(amount * c_out) else "") + ".")
        again = call(fn, "random_filters", weight.clone(), amount, torch.Generator().manual_seed(seed))
        expect(torch.equal(binary(again, "random_filters(...)", (c_out,)), got),
               f"{case}: the same seed gave a different mask: draw from `generator`, not the global random state.")
        want = torch.ones(c_out, dtype=torch.bool)
        want[torch.randperm(c_out, generator=torch.Generator().manual_seed(seed))[:k]] = False
        expect(not torch.equal(got, ~want), f"{case}: your mask keeps the filters it should remove: it is "
                                            "inverted (1 = keep).")
        l1 = pruning.mask_lowest(weight.abs().sum((1, 2, 3)), amount).bool()
        expect(torch.equal(got, want) or not torch.equal(got, l1),
               f"{case}: those are the filters of smallest L1 norm; the task is random filters.")
        expect(torch.equal(got, want), f"{case}: the right number of filters, but not the first {k} of "
                                       "torch.randperm(c_out, generator=generator).")
    return "all 4 layers: the right number of filters, drawn from the seed"


def random_plan(plan) -> str:
    """Design: per-layer sparsities for *random* pruning of LeNet-300-100 that make it at least 2x
    smaller (weights) and lose at most 4 points of validation accuracy, averaged over the masks of
    seeds 0, 1 and 2, without fine-tuning."""
    x, drop = plan_outcome(plan, "random", seeds=(0, 1, 2))
    expect(x >= 2, f"Your plan keeps one weight in {x:.2f}; 2x fewer weights is the target: prune more.")
    expect(drop <= 4, f"Your plan reaches {x:.2f}x but loses {drop:.2f} points on validation (mean of 3 seeds); "
                      "at most 4 are allowed: take the weights from the layers that tolerate it.")
    return f"on target: {x:.2f}x fewer weights, {drop:.2f} points lost on validation (mean of 3 random masks)"
