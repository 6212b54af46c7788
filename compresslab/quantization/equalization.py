"""Data-free quantization (Nagel et al. 2019): cross-layer equalization, bias correction; and
BatchNorm re-estimation.

Per-tensor quantization gives every weight of a layer one step S = max_i r_i / 127 (r_i: the
range max |W_i| of output channel i). A channel with r_i << max r uses only a few of the 255
levels, and one with r_i < S / 2 rounds to zero entirely; in MobileNet-style networks with
BatchNorm folded in, the ranges differ by orders of magnitude and per-tensor int8 collapses.

* ``fold_batchnorm``: y = a (z - μ) + β with a = γ / sqrt(σ² + ε) becomes W' = a W,
  b' = a (b - μ) + β in the conv before it. With a max-pool in between (conv -> pool -> BN):
  a per-channel affine map with a >= 0 is non-decreasing, so it commutes with the max:
  a·max(z) + c = max(a z + c); the fold is exact when every a_i >= 0 (else it is refused).
* ``cross_layer_equalization``: for consecutive layers y = W2 f(W1 x + b1) where f is positively
  homogeneous per channel, f(x / s) = f(x) / s for s > 0 (ReLU, max-pool, identity, flatten;
  not ReLU6, whose clip at 6 does not scale), dividing output channel i of layer 1 (W1_i, b1_i)
  by s_i and multiplying input channel i of layer 2 (W2[:, i]) by s_i leaves the function
  unchanged. s_i = sqrt(r1_i r2_i) / r2_i makes both ranges sqrt(r1_i r2_i): equal. A depthwise
  layer is layer 2 of one pair and layer 1 of the next; the pairs are swept until the scales
  converge (the paper's iteration).
* ``correct_bias``: quantization shifts a layer's mean output, E[W_q x] - E[W x] = (W_q - W) E[x]
  = ε E[x]; subtracting it from the bias removes the shift. Here E[ε x] is empirical: the mean
  of ε * x (the layer's own conv with ε as weight, so the zero-padded borders count too) over a
  few calibration batches, the input x being what the quantized model feeds that layer. The
  paper's data-free version takes E[x] from the preceding BN instead: x = ReLU(z) with
  z ~ N(β, γ²) per channel gives E[x] = γ φ(β / γ) + β Φ(β / γ) (the clipped normal).
* ``reestimate_bn``: after pruning or QAT a BatchNorm's running statistics describe the old
  network; recompute them as cumulative averages (momentum None) over a few batches, no gradient.
"""
from __future__ import annotations


import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .. import checks
from ..metrics import prunable_layers
from .quantizers import quantized_layers, run_batches

LAYERS = (nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# f(x / s) = f(x) / s per channel for s > 0: may sit between two equalized layers
HOMOGENEOUS = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Flatten, nn.Dropout)


def flat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ValueError("Equalization walks a flat nn.Sequential (as every workbook model is), "
                         f"got {type(model).__name__}.")
    return list(model.named_children())

# ---------------------------------------------------------------- BatchNorm folding


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """``integer.fold_batchnorm`` across max-pools, where every BN must fold: equalization needs
    each channel's scale to pass from one layer to the next (the folding lives in integer.py)."""
    from ..integer import fold_batchnorm as fold

    checks.module(model, "model", nn.Sequential)
    return fold(model, through_maxpool=True, strict=True)

# ---------------------------------------------------------------- cross-layer equalization


def pairs(model: nn.Sequential) -> list[tuple[str, str]]:
    """Consecutive (layer 1, layer 2) names with only positively homogeneous maps between."""
    out, last, ok = [], None, True
    for name, m in flat_modules(model):
        if isinstance(m, BATCHNORMS):
            raise ValueError(f"{name!r} is a BatchNorm: call fold_batchnorm(model) before equalizing.")
        if isinstance(m, LAYERS):
            if last is not None and ok:
                out.append((last, name))
            last, ok = name, True
        elif not isinstance(m, HOMOGENEOUS):
            ok = False
    return out


def input_view(layer: nn.Module, channels: int) -> torch.Tensor:
    """W2 as (groups, outputs per group, inputs per group, rest): input channel i = (g, j) with
    i = g * c + j. A linear layer after a flatten sees each channel in (in_features / C) columns."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return w.view(1, w.shape[0], channels, -1)
    g = layer.groups
    return w.view(g, w.shape[0] // g, w.shape[1], -1)


def output_ranges(layer: nn.Module) -> torch.Tensor:
    """r1_i = max |W1_i| over output channel i's weights; shape (C_out,)."""
    return layer.weight.detach().abs().flatten(1).amax(1)


def input_ranges(layer: nn.Module, channels: int) -> torch.Tensor:
    """r2_i = max |W2[:, i]| over the weights that read input channel i; shape (C_in,)."""
    return input_view(layer, channels).detach().abs().amax(dim=(1, 3)).flatten()


@torch.no_grad()
def rescale_pair(layer1: nn.Module, layer2: nn.Module, s: torch.Tensor) -> None:
    """W1_i /= s_i, b1_i /= s_i, W2[:, i] *= s_i (s > 0): the same function, other ranges."""
    layer1.weight.div_(s.view(-1, *[1] * (layer1.weight.dim() - 1)))
    if layer1.bias is not None:
        layer1.bias.div_(s)
    v = input_view(layer2, len(s))
    v.mul_(s.view(v.shape[0], 1, v.shape[2], 1))          # a view: writes into layer2.weight


@torch.no_grad()
def equalize_pair(layer1: nn.Module, layer2: nn.Module) -> torch.Tensor:
    """Rescale by s_i = sqrt(r1_i r2_i) / r2_i: both ranges become sqrt(r1_i r2_i). Returns s.
    A channel with a zero range on either side keeps s_i = 1."""
    r1 = output_ranges(layer1)
    r2 = input_ranges(layer2, len(r1))
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 * r2) / r2.clamp_min(1e-30), torch.ones_like(r1))
    rescale_pair(layer1, layer2, s)
    return s


@torch.no_grad()
def cross_layer_equalization(model: nn.Sequential, iterations: int = 100, tol: float = 1e-4) -> nn.Sequential:
    """Equalize every consecutive pair in place, sweeping until max_i |s_i - 1| < tol.
    The model must have its BatchNorms folded (``fold_batchnorm``)."""
    checks.integer(iterations, "iterations", 1, example=100)
    todo, layers = pairs(model), dict(model.named_children())
    if not todo:
        raise ValueError("No two consecutive conv / linear layers to equalize in this model.")
    for _ in range(iterations):
        change = max(float((equalize_pair(layers[a], layers[b]) - 1).abs().max()) for a, b in todo)
        if change < tol:
            break
    return model


def range_table(model: nn.Module, bits: int = 8) -> pd.DataFrame:
    """Per layer, the spread of the output-channel ranges r_i that per-tensor quantization
    shares one step S = max r / (2^(b-1) - 1) across: max / median, max / min, and the channels
    whose every weight rounds to zero (r_i < S / 2)."""
    rows = []
    for name, m in prunable_layers(model).items():
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        r = w.detach().abs().flatten(1).amax(1)
        step = r.max() / (2 ** (bits - 1) - 1)
        rows.append({"layer": name, "channels": len(r), "max / median": float(r.max() / r.median()),
                     "max / min": float(r.max() / r.min()) if r.min() > 0 else float("inf"),
                     f"zero at int{bits}": int((r < step / 2).sum())})
    return pd.DataFrame(rows).set_index("layer")

# ---------------------------------------------------------------- bias correction


def weight_error_output(layer: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ε * x: the layer's own operation with the weight error ε = W_q - W; per-channel mean."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, eps).flatten(0, -2).mean(0)                      # (O,)
    y = F.conv2d(x, eps, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return y.mean(dim=(0, 2, 3))                                            # (O,)


@torch.no_grad()
def correct_bias(model: nn.Module, loader, batches: int = 4) -> nn.Module:
    """Empirical bias correction in place: b <- b - E[ε x] for every weight-quantized layer
    (``quantize_model`` first; after ``calibrate`` if activations are quantized too), averaged
    over ``batches`` batches of the loader, in one pass. A layer without a bias gets one."""
    checks.integer(batches, "batches", 1, example=4)
    layers = {n: prunable_layers(model)[n] for n in quantized_layers(model)}
    if not layers:
        raise ValueError("No quantized layer to correct: quantize_model(model, ...) first.")
    eps = {n: (m.weight - m.parametrizations.weight.original).detach() for n, m in layers.items()}
    shift = dict.fromkeys(layers, 0.0)

    def record(name):
        def hook(module, args, output):   # args[0]: the input the layer computes with
            shift[name] = shift[name] + weight_error_output(module, args[0], eps[name])
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        seen = run_batches(model, loader, batches)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for n, m in layers.items():
        if m.bias is None:
            m.bias = nn.Parameter(-shift[n] / seen)
        else:
            m.bias.sub_(shift[n] / seen)
    return model

# ---------------------------------------------------------------- BatchNorm re-estimation


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader, batches: int = 4) -> nn.Module:
    """Recompute every BatchNorm's running mean / variance over ``batches`` batches: stats reset,
    momentum None (a cumulative average: the mean of the batch means and of the batches'
    unbiased variances), only the BNs in train mode, no gradient; back to eval mode.
    Feed images as training fed them (augmented): the later layers were trained on features
    normalized with those statistics, and plain images' statistics differ (no padded crops)."""
    checks.integer(batches, "batches", 1, example=4)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("The model has no BatchNorm whose statistics could be re-estimated.")
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        run_batches(model, loader, batches, eval_mode=False)  # the BNs stay in train mode
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return model
