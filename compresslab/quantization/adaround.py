"""AdaRound (Nagel et al. 2020): learn, weight by weight, whether to round up or down.

Round-to-nearest (RTN) makes each weight's own error |w - ŵ| as small as it can be, but a layer
adds its weights' errors up: what matters is the error of the layer's output, and rounding a
few weights the "wrong" way can cancel the others' errors. AdaRound keeps RTN's grid (here:
per output channel, symmetric, integers [-(2^(b-1) - 1), 2^(b-1) - 1], the scale s from the
min-max range as ``quantize_model``'s default, or ``method="mse"``; fixed beforehand, as in the
paper) and only chooses floor or ceil for every weight. In grid units, for a layer with
weights W (C_out, K) (K = C_in / groups · kernel size) and calibration inputs x_n (K,):

    Q(V) = clamp(⌊W/s⌋ + h(V), q_min, q_max),  h(V) = clamp(σ(V) (ζ - γ) + γ, 0, 1),  ζ = 1.1, γ = -0.1
    L(V) = Σ_n ||(Q(V) - W/s) x_n||² / (N m)  +  λ Σ_ij (1 - |2 h(V_ij) - 1|^β)

The rectified sigmoid h reaches 0 and 1 exactly (σ alone never does); V starts where
h(V) = frac(W/s), so Q = W/s at first. The regularizer is 0 at h in {0, 1} and pushes h there;
β goes from 20 (flat: h moves freely) to 2 (a bowl around 1/2) on a cosine after a warm-up of
20% of the iterations without it. Adam trains V only: the weights never change. At the end
Q = ⌊W/s⌋ + [h(V) >= 1/2]: every weight is its floor or its ceil (clipped weights of the "mse"
range stay at the grid's ends).

The output error is a quadratic form: with the Gram matrix G = Σ_n x_n x_nᵀ (K, K), computed
once, Σ_n ||D x_n||² = tr(D G Dᵀ) for D = Q(V) - W/s, whatever the number N of inputs (images
× output positions of a conv), and its gradient is 2 D G: one (C_out, K) × (K, K) product per
step on all calibration images at once. Dividing row c by s_c² (grid units) and the whole by
N m (m: the inputs' mean square) changes no row's minimizer; it lets one λ fit every channel
and layer. Layer inputs come from the float model (the paper's sequential variant feeds each
layer the output of the already-quantized layers before it). ζ, γ, β from 20 to 2, the 20%
warm-up and the cosine follow ``torch/ao/quantization/experimental/adaround_loss.py``, which
states that it copies the authors' implementation.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from .. import checks
from ..metrics import prunable_layers
from .affine import QParams, check_bits
from .quantizers import run_batches
from .ranges import qparams

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clamp(σ(V) (ζ - γ) + γ, 0, 1)."""
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def initial_v(frac: torch.Tensor) -> torch.Tensor:
    """The V with h(V) = frac for frac in [0, 1): σ(V) = (frac - γ) / (ζ - γ)."""
    return torch.logit((frac - GAMMA) / (ZETA - GAMMA))


def beta_at(step: int, iters: int, warmup: float = 0.2, start: float = 20.0,
            end: float = 2.0) -> float | None:
    """β of the regularizer at ``step``: None during the warm-up, then a cosine from start to end."""
    first = warmup * iters
    if step < first:
        return None
    t = (step - first) / max(iters - first, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (groups, K, N) columns: the vectors its weight rows multiply."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features).T.unsqueeze(0)
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"AdaRound handles nn.Linear, nn.Conv1d and nn.Conv2d, not {type(layer).__name__}.")
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ValueError("AdaRound needs a conv with numeric zero padding (e.g. padding=1), "
                         f"got padding={layer.padding!r}, padding_mode={layer.padding_mode!r}.")
    k, d, p, s = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if isinstance(layer, nn.Conv1d):  # a conv1d is a conv2d of height 1
        x, k, d, p, s = x.unsqueeze(2), (1, *k), (1, *d), (0, *p), (1, *s)
    cols = F.unfold(x, k, d, p, s)                       # (B, C_in · kh · kw, L)
    cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
    return cols.view(layer.groups, -1, cols.shape[1])    # (groups, K, B · L)


def rows(w: torch.Tensor, groups: int) -> torch.Tensor:
    """A weight (C_out, C_in / groups, ...) as (groups, C_out / groups, K)."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def check_options(iters, lr, lam, warmup):
    checks.integer(iters, "iters", 1, example=500)
    checks.number(lr, "lr", 0, low_open=True, example=0.01)
    checks.number(lam, "lam (the regularizer's weight λ)", 0, example=0.01)
    checks.fraction(warmup, "warmup", example=0.2)


def adaround_codes(ws: torch.Tensor, g: torch.Tensor, qmin: int, qmax: int, iters: int = 500,
                   lr: float = 0.03, lam: float = 1.0, warmup: float = 0.2) -> torch.Tensor:
    """Learned integer codes for weights ``ws`` = W/s (groups, C, K), given the Gram matrices of
    the inputs ``g`` (groups, K, K) scaled as in the module docstring; returns (groups, C, K)."""
    check_options(iters, lr, lam, warmup)
    base = torch.floor(ws)
    v = initial_v(ws - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    for step in range(iters):
        h = rectified_sigmoid(v)
        d = torch.clamp(base + h, qmin, qmax) - ws       # (groups, C, K), grid steps
        with torch.no_grad():
            grad_d = 2 * d @ g                           # ∂ tr(D G Dᵀ) / ∂D = 2 D G
        opt.zero_grad()
        beta = beta_at(step, iters, warmup)
        if beta is None or lam == 0:
            d.backward(grad_d)
        else:
            reg = lam * (1 - (2 * h - 1).abs().pow(beta)).sum()
            torch.autograd.backward([d, reg], [grad_d, torch.ones_like(reg)])
        opt.step()
    with torch.no_grad():
        return torch.clamp(base + (rectified_sigmoid(v) >= 0.5).float(), qmin, qmax)


def gram(cols: torch.Tensor) -> torch.Tensor:
    """Σ_n x_n x_nᵀ of columns (groups, K, N): (groups, K, K)."""
    return cols @ cols.transpose(1, 2)


def adaround_weight(layer: nn.Module, g: torch.Tensor, bits: int, method: str = "minmax",
                    **options) -> tuple[torch.Tensor, QParams]:
    """AdaRound's integer codes (shaped like the weight) and per-channel QParams of one layer,
    from the Gram matrix Σ x xᵀ (groups, K, K) of its inputs."""
    w = layer.weight.detach()
    qp = qparams(w, bits, symmetric=True, axis=0, method=method)
    s, _ = qp.shaped_like(w)
    ws = rows(w * (1.0 / s), layer.groups if not isinstance(layer, nn.Linear) else 1)
    g = g / g.diagonal(dim1=1, dim2=2).mean().clamp(min=1e-12)   # / (N m): inputs' mean square 1
    q = adaround_codes(ws, g, qp.qmin, qp.qmax, **options)
    return q.reshape(w.shape), qp


def adaround_layer(layer: nn.Module, bits: int, inputs, **options) -> tuple[torch.Tensor, QParams]:
    """AdaRound for one layer given its calibration inputs (a tensor or a list of batches)."""
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not inputs:
        raise ValueError("AdaRound needs calibration inputs: got none.")
    g = sum(gram(patches(layer, x.detach().float())) for x in inputs)
    return adaround_weight(layer, g, check_bits(bits), **options)


@torch.no_grad()
def input_grams(model: nn.Module, layers: dict[str, nn.Module], loader, batches: int | None) -> dict:
    """Σ x xᵀ of every layer's input over the calibration batches, one float forward pass."""
    grams = {}

    def hook(name):
        def record(module, args):
            g = gram(patches(module, args[0].float()))
            grams[name] = grams[name] + g if name in grams else g
        return record
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        run_batches(model, loader, batches)
    finally:
        for h in handles:
            h.remove()
    return grams


def adaround_model(model: nn.Module, bits: int, calib_loader, iters: int = 500, *, lr: float = 0.03,
                   lam: float = 1.0, warmup: float = 0.2, method: str = "minmax",
                   batches: int | None = None) -> nn.Module:
    """A copy of ``model`` whose conv / linear weights are AdaRound's b-bit weights s · q
    (dequantized, written in: a plain model), learned on ``calib_loader``'s images (``batches``
    of them, default all) with inputs from the float model; ``model`` is left unchanged.
    The defaults were chosen on validation images (training set) for the CIFAR CNN at 3 bits."""
    bits = check_bits(bits)
    check_options(iters, lr, lam, warmup)
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("The model has no conv / linear layer to quantize.")
    if batches is not None:
        checks.integer(batches, "batches", 1, example=4)
    for name, m in layers.items():
        if parametrize.is_parametrized(m) or prune.is_pruned(m):
            raise ValueError(f"Layer {name!r} carries a parametrization or a pruning mask: AdaRound "
                             "needs a plain model (remove_quantization / pruning.make_permanent first).")
    grams = input_grams(model, layers, calib_loader, batches)
    unused = [n for n in layers if n not in grams]
    if unused:
        raise ValueError(f"Layers {unused} saw no input in the forward pass: AdaRound cannot calibrate them.")
    out = copy.deepcopy(model)
    for name, m in prunable_layers(out).items():
        q, qp = adaround_weight(m, grams[name], bits, method, iters=iters, lr=lr, lam=lam, warmup=warmup)
        s, _ = qp.shaped_like(q)
        m.weight.data.copy_(q * s)
    return out
