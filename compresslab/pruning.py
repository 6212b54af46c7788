"""Unstructured pruning: importance scores, masks, and when to prune.

The recipe has three separate parts, each a few lines:

1. **Score** every weight: how much would the network miss it?
   magnitude |w|, a random number, or |w|^p for any norm p.
2. **Mask** the lowest-scoring fraction ``amount`` of the weights, either per layer
   ("layer-wise": every layer loses the same fraction) or over all chosen layers at once
   ("global": one threshold, so layers with many small weights lose more).
3. **Apply** the masks with PyTorch's own mechanism, ``torch.nn.utils.prune``: the module
   keeps ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer) and a forward pre-hook
   computes ``weight = weight_orig * weight_mask`` before every forward pass, so a pruned
   weight stays zero through training. ``make_permanent`` folds the mask in for good.

Schedules: one-shot, iterative (prune a step, fine-tune, repeat) and the gradual cubic
schedule of Zhu & Gupta (2017), s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune

from . import checks
from .metrics import prunable_layers

# ---------------------------------------------------------------- 1. scores


def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    """Han et al. (2015): small weights matter least. score = |w|."""
    return w.abs()


def check_norm_p(p) -> float:
    """The p of an L_p norm: a positive number, or inf for the max norm (p <= 0 is no norm)."""
    checks.number(p, "p", 0, low_open=True, must="be a positive number (1, 2, ... or float('inf'))", example=2)
    return p


def norm_scores(w: torch.Tensor, p: float = 1) -> torch.Tensor:
    """score = |w|^p. For single weights every p ranks alike; p matters for groups (filters)."""
    p = check_norm_p(p)
    return w.abs() if p == float("inf") else w.abs().pow(p)


def random_scores(w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The baseline every criterion must beat: a random score per weight.

    torch's ``random_unstructured`` prunes the weights with the *largest* uniform draws u,
    so we score -u: the same weights are pruned for the same random state.
    """
    return -torch.rand(w.shape, generator=generator, device=w.device)


CRITERIA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "magnitude": magnitude_scores, "l1": magnitude_scores, "random": random_scores,
}
SCOPES = ("global", "layerwise")

# ---------------------------------------------------------------- 2. masks


def check_amount(amount: float | int, numel: int) -> int:
    """How many weights to prune. As in ``torch.nn.utils.prune``: a float is a fraction in
    [0, 1], an int is a count in [0, numel]."""
    if isinstance(amount, numbers.Integral) and not isinstance(amount, bool):
        if not 0 <= amount <= numel:
            raise ValueError(f"Cannot prune {amount} weights out of {numel}: an int amount must be a count in "
                             f"[0, {numel}], e.g. {numel // 2} (for a fraction pass a float, e.g. 0.5); got {amount}.")
        return int(amount)
    amount = checks.number(amount, "amount", 0, 1, must="be a fraction in [0, 1] (a float) or a count of "
                           "weights (an int)", example=0.5)
    return round(amount * numel)  # rounded as torch.nn.utils.prune does


def mask_lowest(scores: torch.Tensor, amount: float | int) -> torch.Tensor:
    """A 0/1 mask that removes the ``amount`` lowest-scoring entries (ties: torch.topk's order)."""
    k = check_amount(amount, scores.numel())
    mask = torch.ones_like(scores)
    if k:
        mask.view(-1)[torch.topk(scores.reshape(-1), k, largest=False).indices] = 0
    return mask


def select_layers(model: nn.Module, layers: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The conv / linear layers to prune, by name (default: all of them)."""
    available = prunable_layers(model)
    names = list(layers) if layers is not None else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"No prunable layer named {unknown}; the model has {list(available)}.")
    chosen = {n: available[n] for n in names if n not in set(exclude)}
    if not chosen:
        raise ValueError("No layer left to prune: the selection is empty.")
    return chosen


def score_layers(modules: dict[str, nn.Module], criterion: str | Callable = "magnitude",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Scores of each layer's *current* weights (already pruned weights score lowest)."""
    if isinstance(criterion, str):
        criterion = CRITERIA[checks.one_of(criterion, "criterion", CRITERIA, "Unknown criterion: pass one "
                                                                      "of these names or a function w -> scores.")]
    scores = {}
    for name, m in modules.items():
        w = m.weight.detach()
        s = criterion(w, generator) if criterion is random_scores else criterion(w)
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            s = torch.where(m.weight_mask.bool(), s, torch.full_like(s, -float("inf")))
        scores[name] = s
    return scores


def layerwise_masks(model: nn.Module, amount: float, criterion="magnitude", layers=None,
                    exclude=(), generator=None) -> dict[str, torch.Tensor]:
    """Every chosen layer loses the same fraction ``amount`` of its weights."""
    modules = select_layers(model, layers, exclude)
    scores = score_layers(modules, criterion, generator)
    return {n: mask_lowest(s, amount) for n, s in scores.items()}


def global_masks(model: nn.Module, amount: float, criterion="magnitude", layers=None,
                 exclude=(), generator=None) -> dict[str, torch.Tensor]:
    """One threshold over all chosen layers: the fraction ``amount`` of all their weights."""
    modules = select_layers(model, layers, exclude)
    scores = score_layers(modules, criterion, generator)
    flat = mask_lowest(torch.cat([s.flatten() for s in scores.values()]), amount)
    masks, start = {}, 0
    for n, s in scores.items():
        masks[n] = flat[start:start + s.numel()].view_as(s)
        start += s.numel()
    return masks

# ---------------------------------------------------------------- 3. apply


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach masks with ``prune.custom_from_mask``; a second call multiplies the masks."""
    modules = prunable_layers(model)
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"No prunable layer named {name!r} in the model.")
        prune.custom_from_mask(modules[name], "weight", mask.to(modules[name].weight.device))
    return model


def prune_model(model: nn.Module, amount: float, criterion="magnitude", scope: str = "global",
                layers=None, exclude=(), generator=None) -> nn.Module:
    """One-shot pruning in place: score, mask (``scope`` 'global' or 'layerwise'), apply.

    ``amount`` is the fraction of the chosen weights that will be zero *in total*
    (already pruned weights count), so pruning to 0.5 then to 0.8 ends at 80 %.
    """
    make = {"global": global_masks, "layerwise": layerwise_masks}[checks.one_of(scope, "scope", SCOPES)]
    masks = make(model, amount, criterion, layers, exclude, generator)
    return apply_masks(model, masks)


def prune_per_layer(model: nn.Module, amounts: dict[str, float], criterion="magnitude",
                    generator=None) -> nn.Module:
    """A different fraction for every layer, e.g. chosen from a sensitivity scan
    (Han et al. 2015 keep 8 % / 9 % / 26 % of LeNet-300-100's fc1 / fc2 / fc3)."""
    modules = select_layers(model, list(amounts))
    scores = score_layers(modules, criterion, generator)
    return apply_masks(model, {n: mask_lowest(scores[n], a) for n, a in amounts.items()})


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` on every pruned tensor of every module (weights, biases, BatchNorm
    scales): the zeros stay, the masks and hooks go."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current masks, by layer name (layers without one are left out)."""
    return {n: m.weight_mask.detach().clone() for n, m in prunable_layers(model).items()
            if hasattr(m, "weight_mask")}


def kept_fraction(model: nn.Module) -> dict[str, float]:
    """Fraction of non-zero weights per layer (Han et al.'s "weights kept" column)."""
    return {n: float((m.weight != 0).float().mean()) for n, m in prunable_layers(model).items()}

# ---------------------------------------------------------------- schedules


def iterative_steps(final: float, step: float) -> list[float]:
    """Sparsity targets of iterative pruning: step, 2*step, ... up to ``final``."""
    need = f"Need 0 < step <= final <= 1, e.g. iterative_steps(0.9, 0.2); got step={step!r}, final={final!r}."
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in (final, step)):
        raise TypeError(need)
    if not 0 < step <= final <= 1:
        raise ValueError(need)
    n = math.floor(final / step + 1e-9)  # whole steps below final: never one past it
    return [round(step * i, 10) for i in range(1, n + 1) if step * i < final - 1e-9] + [final]


def geometric_steps(final: float, rounds: int) -> list[float]:
    """Sparsity targets that remove the same fraction of the *remaining* weights each round:
    s_r = 1 - (1 - final)^(r / rounds). Linear steps take ever larger bites of what is left
    (from 81 % to 97 % removes 84 % of the survivors at once); these do not."""
    need = (f"Need 0 <= final < 1 and an integer rounds >= 1, e.g. geometric_steps(0.9, 3); "
            f"got final={final!r}, rounds={rounds!r}.")
    if (isinstance(final, bool) or not isinstance(final, numbers.Real)
            or isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral)):
        raise TypeError(need)
    if not 0 <= final < 1 or rounds < 1:
        raise ValueError(need)
    return [1 - (1 - final) ** (r / rounds) for r in range(1, rounds + 1)]


def agp_sparsity(t: int, s_initial: float, s_final: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta's gradual schedule at step t: s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3.

    Fast at first, while there are many redundant weights, then ever slower.
    """
    need = "Need 0 <= s_initial <= s_final <= 1, n >= 1 pruning steps and dt >= 1, e.g. (0, 0.9, n=10, dt=100)"
    args = f"got s_initial={s_initial!r}, s_final={s_final!r}, n={n!r}, dt={dt!r}."
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in (t, s_initial, s_final, t0, n, dt)):
        raise TypeError(f"{need}, all numbers; {args}")
    if not (0 <= s_initial <= s_final <= 1 and n >= 1 and dt >= 1):
        raise ValueError(f"{need}; {args}")
    progress = min(max((t - t0) / (n * dt), 0.0), 1.0)
    return s_final + (s_initial - s_final) * (1 - progress) ** 3


class GradualPruner:
    """Call after every training step (``fit(..., after_step=pruner)``): every ``dt`` steps
    from ``t0`` on, prune up to the AGP sparsity of that step (masks composed, so hard)."""

    def __init__(self, model, s_final, n, dt, t0=0, s_initial=0.0, criterion="magnitude",
                 scope="global", layers=None, exclude=()):
        agp_sparsity(t0, s_initial, s_final, t0, n, dt)  # validates the arguments
        self.model, self.s_i, self.s_f, self.n, self.dt, self.t0 = model, s_initial, s_final, n, dt, t0
        self.kwargs = dict(criterion=criterion, scope=scope, layers=layers, exclude=exclude)
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int) -> None:
        if step < self.t0 or (step - self.t0) % self.dt or step > self.t0 + self.n * self.dt:
            return
        s = agp_sparsity(step, self.s_i, self.s_f, self.t0, self.n, self.dt)
        prune_model(self.model, s, **self.kwargs)
        self.history.append((step, s))


class SoftPruner:
    """Soft pruning (He et al. 2018, soft filter pruning): after every step, zero the
    lowest-scoring weights *in place*, without a mask; the optimizer may grow them back,
    and the next call chooses again from the updated weights (so it is also dynamic)."""

    def __init__(self, model, amount, criterion="magnitude", scope="global", layers=None, exclude=()):
        self.model, self.amount = model, amount
        self.kwargs = dict(criterion=criterion, layers=layers, exclude=exclude)
        checks.one_of(scope, "scope", SCOPES)
        self.make = global_masks if scope == "global" else layerwise_masks
        layers_ = select_layers(model, layers, exclude)
        check_amount(amount, sum(m.weight.numel() for m in layers_.values()))

    @torch.no_grad()
    def __call__(self, step: int | None = None) -> None:
        masks = self.make(self.model, self.amount, **self.kwargs)
        modules = prunable_layers(self.model)
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)
