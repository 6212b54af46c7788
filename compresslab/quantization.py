"""Quantization: from the rounding formula to an int8 model that runs on a CPU.

**Uniform affine quantization** (Jacob et al. 2018) stores a real number r as a b-bit
integer q, with a real scale S > 0 and an integer zero point Z:

    q = clamp(round(r / S) + Z, q_min, q_max),        r ≈ r̂ = S (q - Z)

Inside the range [S (q_min - Z), S (q_max - Z)] the error |r - r̂| is at most S / 2; outside it
r is clipped. S and Z come from a real range [α, β], widened to contain 0 so that 0 (padding,
ReLU outputs, pruned weights) is stored exactly:

* asymmetric: q in [0, 2^b - 1],                   S = (β - α) / (2^b - 1),  Z = -round(α / S)
* symmetric:  q in [-(2^(b-1) - 1), 2^(b-1) - 1],  S = max(-α, β) / (2^(b-1) - 1),  Z = 0
  (the "restricted" range without -2^(b-1), so that the grid is symmetric; ONNX Runtime
  stores int8 weights the same way)

per tensor (one S and Z) or per channel (one per output channel: axis 0 of a weight). [α, β]
is the min / max, a percentile (outliers clipped), or the clipping that minimizes the mean
squared error (a grid search). A range of width zero (an all-zero tensor) gets S = float32
eps, as in torch's observers: every value is then 0 exactly, and nothing divides by zero.

**Fake quantization** computes r̂ in float, so that a model can be evaluated (post-training
quantization, PTQ: the activation ranges come from *observers* fed a few calibration batches)
or trained (quantization-aware training, QAT) with quantized weights and activations.
round() has a zero gradient almost everywhere; the straight-through estimator (Bengio et al.
2013) passes the gradient through it unchanged (d r̂ / d r := 1), and clipped values get none.

**Non-uniform** grids: k-means weight sharing (Han et al. 2016, "Deep Compression": a
codebook of 2^b centroids per layer, each weight stores a b-bit index), powers of two
(Miyashita et al. 2016), binary weights ±α (BinaryConnect / XNOR-Net) and ternary weights
0, ±α (Li & Liu 2016, TWN).

**Size**: n weights at b bits take n b / 8 bytes, plus their scales, zero points or codebook.

**Deployment**: fake quantization is only a simulation; it runs at float speed. Real int8
speed needs int8 kernels: ``deploy.py`` exports to ONNX and quantizes for ONNX Runtime.
"""
from __future__ import annotations

import copy
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from .metrics import prunable_layers
from .train import evaluate, model_device

EPS = torch.finfo(torch.float32).eps
METHODS = ("minmax", "percentile", "mse")
SCHEMES = ("uniform", "kmeans", "pow2", "binary", "ternary")

# ---------------------------------------------------------------- checks


def check_bits(bits, minimum: int = 2) -> int:
    """Bit widths are integers in [minimum, 16]; 1 bit exists only as binary (or k-means)."""
    if isinstance(bits, bool):
        raise TypeError(f"bits must be an integer, got {bits!r}.")
    try:
        bits = operator.index(bits)
    except TypeError:
        raise TypeError(f"bits must be an integer, got {bits!r}.") from None
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}.")
    if bits < minimum:
        raise ValueError(f"{bits} bit is too few for this grid (it needs at least {minimum}): "
                         "for 1-bit weights use binarize() or scheme='binary'.")
    return bits


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """NaN or inf would poison min / max and therefore every scale (or an SVD): refuse them."""
    if not torch.isfinite(x).all():
        n = int((~torch.isfinite(x)).sum())
        raise ValueError(f"The {what} holds {n} NaN or inf value(s); quantization and factorization need "
                         "finite numbers. Find where they come from (a diverged training run?) first.")


def check_not_empty(x: torch.Tensor, what: str = "tensor") -> None:
    """A range (min, max) or a codebook needs at least one number."""
    if x.numel() == 0:
        raise ValueError(f"The {what} is empty (shape {tuple(x.shape)}): there is nothing to quantize.")


def check_percentile(percentile) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r} (e.g. 99.99 clips "
                         "the 0.01 % largest magnitudes).")
    return float(percentile)


def check_range(lo: torch.Tensor, hi: torch.Tensor) -> None:
    """A real range [α, β] (or one per channel): finite ends and α <= β."""
    check_finite(lo, "range's lower end")
    check_finite(hi, "range's upper end")
    if (lo > hi).any():
        raise ValueError(f"The range [lo, hi] must have lo <= hi, got lo={lo.tolist()}, hi={hi.tolist()}.")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"Unknown range method {method!r}: use one of {METHODS}.")
    return method

# ---------------------------------------------------------------- 1. uniform affine quantization


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer grid [q_min, q_max]: [-(2^(b-1) - 1), 2^(b-1) - 1] or [0, 2^b - 1]."""
    bits = check_bits(bits)
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


@dataclass
class QParams:
    """Scale(s) and zero point(s) of one tensor: shape () per tensor, (C,) per channel."""
    scale: torch.Tensor        # float32
    zero_point: torch.Tensor   # int32
    bits: int
    symmetric: bool
    axis: int | None = None    # None: per tensor; else the channel axis

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def shaped_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S and Z reshaped to broadcast against ``x`` (per channel: (C, 1, 1, ...))."""
        s, z = self.scale.to(x.device), self.zero_point.to(x.device, torch.float32)
        if self.axis is None:
            return s, z
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return s.view(shape), z.view(shape)

    def real_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reals the grid covers without clipping: S (q_min - Z) and S (q_max - Z)."""
        z = self.zero_point.float()
        return self.scale * (self.qmin - z), self.scale * (self.qmax - z)


def as_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(C, rest) for per-channel statistics along ``axis``; (1, everything) per tensor."""
    x = x.detach().float()
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)


def minmax_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """α = min(x), β = max(x), per tensor or per channel."""
    rows = as_rows(x, axis)
    lo, hi = rows.amin(1), rows.amax(1)
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def percentile_range(x: torch.Tensor, percentile: float = 99.99, axis: int | None = None,
                     symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the outliers: β = the p-th percentile (α the (100-p)-th); symmetric: ±p-th of |x|."""
    percentile = check_percentile(percentile)
    rows = as_rows(x, axis)
    rows = rows.abs() if symmetric else rows
    s = rows.sort(dim=1).values   # sort rather than torch.quantile: no size limit, any device
    n = s.shape[1]
    hi = s[:, round((n - 1) * percentile / 100)]
    lo = -hi if symmetric else s[:, round((n - 1) * (1 - percentile / 100))]
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def mse_range(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
              grid: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping c·[min, max], c in {1/grid, ..., 1}, with the least E[(x - x̂)^2].

    A narrower range rounds more finely but clips more: this finds the balance, per channel.
    """
    if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1 (the number of clipping factors tried), got {grid!r}.")
    rows = as_rows(x, axis)
    lo, hi = rows.amin(1), rows.amax(1)
    best_err = torch.full_like(lo, float("inf"))
    best_c = torch.ones_like(lo)
    for c in torch.arange(1, grid + 1, device=rows.device) / grid:
        qp = qparams_from_range(lo * c, hi * c, bits, symmetric, axis=0)
        err = (fake_quantize(rows, qp) - rows).pow(2).mean(1)
        better = err < best_err
        best_err, best_c = torch.where(better, err, best_err), torch.where(better, c, best_c)
    lo, hi = lo * best_c, hi * best_c
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int = 8, symmetric: bool = True,
                       axis: int | None = None) -> QParams:
    """S and Z of the range [α, β] (widened to hold 0), as in the module docstring."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32, device=lo.device)
    check_range(lo, hi)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = scale.clamp(min=EPS)  # an all-zero range: any scale stores 0 exactly
    if symmetric:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return QParams(scale, zero_point, bits, symmetric, axis)


def qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
            method: str = "minmax", percentile: float = 99.99, grid: int = 50) -> QParams:
    """Scale and zero point for ``x``: ``method`` 'minmax', 'percentile' or 'mse' picks [α, β];
    ``axis=0`` gives one (S, Z) per output channel of a weight."""
    bits, method = check_bits(bits), check_method(method)
    check_finite(x)
    check_not_empty(x)
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} does not exist in a tensor of shape {tuple(x.shape)}.")
    axis = None if axis is None else axis % x.dim()
    if method == "minmax":
        lo, hi = minmax_range(x, axis)
    elif method == "percentile":
        lo, hi = percentile_range(x, percentile, axis, symmetric)
    else:
        lo, hi = mse_range(x, bits, symmetric, axis, grid)
    return qparams_from_range(lo, hi, bits, symmetric, axis)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """q = clamp(round(r / S) + Z, q_min, q_max), as int32.

    We multiply by 1/S (as torch's kernels and integer hardware do) instead of dividing by S;
    the two can differ in the last bit, which moves a value only at an exact tie.
    """
    check_finite(x)
    s, z = qp.shaped_like(x)
    return torch.clamp(torch.round(x * (1.0 / s)) + z, qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """r̂ = S (q - Z)."""
    s, z = qp.shaped_like(q)
    return (q.float() - z) * s


class StraightThrough(torch.autograd.Function):
    """The straight-through estimator: forward returns the quantized ``x_q``; backward hands
    the gradient to the float ``x`` unchanged (as if d x_q / d x = 1), or only where ``inside``
    is true (clipped values get 0). An explicit Function rather than ``x + (x_q - x).detach()``:
    that trick can be off from ``x_q`` by a rounding error."""

    @staticmethod
    def forward(ctx, x, x_q, inside=None):
        ctx.save_for_backward(inside)
        return x_q.clone()

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return (grad if inside is None else grad * inside), None, None


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """r̂ = S (clamp(round(r / S) + Z, q_min, q_max) - Z), in float, differentiable.

    Gradient (straight-through): 1 where round(r / S) + Z lands inside [q_min, q_max], 0 where
    it is clipped; the same mask as torch.fake_quantize_per_tensor_affine's.
    """
    s, z = qp.shaped_like(x)
    q = torch.round(x.detach() * (1.0 / s)) + z
    inside = (q >= qp.qmin) & (q <= qp.qmax)
    return StraightThrough.apply(x, (q.clamp(qp.qmin, qp.qmax) - z) * s, inside)

# ---------------------------------------------------------------- 2. non-uniform grids


def channel_mean_abs(w: torch.Tensor, per_channel: bool = True, where: torch.Tensor | None = None):
    """mean |w| per output channel (shape (C, 1, 1, ...)) or over the tensor, optionally over
    the entries where ``where`` is true only (0 where there are none)."""
    a = w.abs() if where is None else w.abs() * where
    n = torch.ones_like(w) if where is None else where.to(w.dtype)
    if not per_channel or w.dim() < 2:
        return a.sum() / n.sum().clamp(min=1)
    dims = tuple(range(1, w.dim()))
    return a.sum(dims, keepdim=True) / n.sum(dims, keepdim=True).clamp(min=1)


def binarize(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """w_b = α sign(w), α = mean |w| per output channel (XNOR-Net; the α that minimizes
    ||w - α sign(w)||²). sign(0) counts as +1, so there are exactly two values per channel."""
    check_finite(w, "weight")
    alpha = channel_mean_abs(w, per_channel)
    return torch.where(w >= 0, alpha, -alpha)


def ternarize(w: torch.Tensor, per_channel: bool = True, threshold: float = 0.7) -> torch.Tensor:
    """TWN (Li & Liu 2016): Δ = 0.7 mean |w|; w_t = α sign(w) where |w| > Δ, else 0, with
    α = the mean |w| over the entries kept. Per output channel by default (the paper: per layer)."""
    check_finite(w, "weight")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < math.inf:
        raise ValueError(f"threshold must be a finite number >= 0 (TWN: 0.7), got {threshold!r}.")
    delta = threshold * channel_mean_abs(w, per_channel)
    keep = w.abs() > delta
    alpha = channel_mean_abs(w, per_channel, where=keep)
    return torch.sign(w) * alpha * keep


def power_of_two(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Levels 0 and ±2^e for the 2^(b-1) - 1 exponents e up to e_max = round(log2 max|w|):
    one sign bit, and a multiply becomes a shift. e = round(log2 |w|) is clamped to the top
    exponent; magnitudes whose exponent falls below the lowest one become 0."""
    bits = check_bits(bits)
    check_finite(w, "weight")
    check_not_empty(w, "weight")
    n_exp = 2 ** (bits - 1) - 1
    mag = w.abs()
    e_max = torch.round(torch.log2(mag.max().clamp(min=EPS)))
    e = torch.round(torch.log2(mag)).clamp(max=e_max)   # log2(0) = -inf: that weight stays 0
    keep = e >= e_max - n_exp + 1
    return torch.where(keep, torch.sign(w) * torch.exp2(e), torch.zeros_like(w))


def assign_to_centroids(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (sorted, 1-D): a binary search among the midpoints,
    without the n x k distance matrix."""
    return torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)


def kmeans_codebook(w: torch.Tensor, bits: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep Compression's weight sharing: 2^b centroids and, per weight, the index of its own.

    Centroids start evenly spaced between min(w) and max(w) (Han et al.'s "linear"
    initialization: it keeps the rare large weights, which matter most, represented); then
    Lloyd's iterations: assign every weight to its nearest centroid, move every centroid to
    the mean of its weights (an empty cluster keeps its centroid), until nothing moves.
    Returns (centroids of shape (2^b,), labels of w's shape).
    """
    bits = check_bits(bits, minimum=1)
    check_finite(w, "weight")
    check_not_empty(w, "weight")
    flat = w.detach().reshape(-1).float()
    k = 2 ** bits
    centroids = torch.linspace(flat.min().item(), flat.max().item(), k, device=flat.device)
    labels = assign_to_centroids(flat, centroids)
    for _ in range(iters):
        sums = torch.zeros(k, device=flat.device).index_add_(0, labels, flat)
        counts = torch.zeros(k, device=flat.device).index_add_(0, labels, torch.ones_like(flat))
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new = assign_to_centroids(flat, centroids)  # 1-D Lloyd keeps the centroids sorted
        if torch.equal(new, labels):
            break
        labels = new
    return centroids, labels.view(w.shape)

# ---------------------------------------------------------------- 3. quantizers for a model


class WeightQuantizer(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``): the layer's ``weight`` becomes the
    quantized copy of the float weight kept in ``parametrizations.weight.original``.

    The optimizer updates the float weight; the forward pass sees the quantized one; the
    gradient reaches the float weight straight through (QAT). Schemes: 'uniform' (affine,
    bits 2-16), 'pow2', 'binary', 'ternary'.
    """

    def __init__(self, scheme: str = "uniform", bits: int = 8, symmetric: bool = True,
                 per_channel: bool = True, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        if scheme not in ("uniform", "pow2", "binary", "ternary"):
            raise ValueError(f"Unknown weight scheme {scheme!r}: use 'uniform', 'pow2', 'binary' "
                             "or 'ternary' (k-means has its own KMeansQuantizer).")
        bits = {"binary": 1, "ternary": 2}.get(scheme, bits)
        self.scheme, self.bits = scheme, check_bits(bits, minimum=1 if scheme == "binary" else 2)
        self.symmetric, self.per_channel = symmetric, per_channel
        self.method, self.percentile = check_method(method), check_percentile(percentile)
        self._cache = (None, None)  # (weight version, QParams): the grid search runs once per update

    def qparams(self, w: torch.Tensor) -> QParams:
        key = (w.data_ptr(), w._version, w.device)
        if self._cache[0] != key:
            self._cache = (key, qparams(w, self.bits, self.symmetric, 0 if self.per_channel else None,
                                        self.method, self.percentile))
        return self._cache[1]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scheme == "uniform":
            return fake_quantize(w, self.qparams(w))
        wd = w.detach()
        wq = {"pow2": lambda: power_of_two(wd, self.bits),
              "binary": lambda: binarize(wd, self.per_channel),
              "ternary": lambda: ternarize(wd, self.per_channel)}[self.scheme]()
        return StraightThrough.apply(w, wq)   # the value of wq, the gradient to w

    def storage_bits(self, w: torch.Tensor) -> tuple[int, int]:
        """(bits of the integer codes, bits of scales / zero points) to store ``w``."""
        channels = w.shape[0] if self.per_channel and w.dim() > 1 else 1
        if self.scheme == "uniform":
            return w.numel() * self.bits, channels * (32 + (0 if self.symmetric else self.bits))
        if self.scheme == "pow2":
            return w.numel() * self.bits, 8                 # the top exponent
        return w.numel() * self.bits, channels * 32         # binary / ternary: α per channel

    def extra_repr(self) -> str:
        s = f"scheme={self.scheme}, bits={self.bits}, per_channel={self.per_channel}"
        return s + (f", symmetric={self.symmetric}, method={self.method}" if self.scheme == "uniform" else "")


class KMeansQuantizer(nn.Module):
    """A parametrization: weight = centroids[labels], one codebook of 2^b values per layer.

    The float weight is no longer used; only the ``centroids`` are trained. Autograd's
    backward of the indexing adds up the gradients of all weights that share a centroid:
    ∂L/∂c_k = Σ_{i: label_i = k} ∂L/∂w_i, exactly Deep Compression's centroid fine-tuning.
    ``keep_zeros``: a pruned layer's zeros stay exactly zero and only its surviving weights
    are clustered (Deep Compression shares the weights that pruning left).
    """

    def __init__(self, weight: torch.Tensor, bits: int, iters: int = 30, keep_zeros: bool = False):
        super().__init__()
        self.bits = check_bits(bits, minimum=1)
        check_not_empty(weight, "weight")
        mask = weight.detach() != 0 if keep_zeros else torch.ones_like(weight, dtype=torch.bool)
        if not mask.any():
            raise ValueError("Every weight of this layer is zero: there is nothing to cluster.")
        centroids, labels = kmeans_codebook(weight.detach()[mask], self.bits, iters)
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("labels", labels)
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(w).masked_scatter(self.mask, self.centroids[self.labels].to(w.dtype))

    def storage_bits(self, w: torch.Tensor) -> tuple[int, int]:
        """b-bit indices of the clustered weights + the float codebook (a sparse layer's
        positions are extra: see ``coding.layer_storage``)."""
        return int(self.mask.sum()) * self.bits, self.centroids.numel() * 32

    def extra_repr(self) -> str:
        return f"bits={self.bits}, codebook={self.centroids.numel()}"


class Observer(nn.Module):
    """Records the range of everything it sees: running min / max (PTQ calibration), or an
    exponential moving average of each batch's min / max with ``momentum`` (as in QAT)."""

    def __init__(self, momentum: float | None = None):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def reset(self) -> None:
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.min_val) & torch.isfinite(self.max_val))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x, "observed tensor")
        check_not_empty(x, "observed tensor")
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if self.momentum is None or not self.calibrated:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        return x

    def qparams(self, bits: int = 8, symmetric: bool = False) -> QParams:
        if not self.calibrated:
            raise RuntimeError("This observer has seen no data: run calibrate(model, loader) first.")
        return qparams_from_range(self.min_val, self.max_val, bits, symmetric)


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a layer's input with the range its observer saw (per tensor).

    While ``observing`` it records ranges; while ``enabled`` it quantizes. ``calibrate`` observes
    a few batches, then quantizes with the ranges frozen (also in QAT). Before calibration a
    forward pass raises, rather than silently running in float.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, momentum: float | None = None):
        super().__init__()
        self.bits, self.symmetric = check_bits(bits), symmetric
        self.observer = Observer(momentum)
        self.observing, self.enabled = False, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer(x)
        if not self.enabled:
            return x
        return fake_quantize(x, self.observer.qparams(self.bits, self.symmetric))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, enabled={self.enabled}"


def quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer computes with its fake-quantized input."""
    return (module.input_quantizer(args[0]), *args[1:])


def weight_quantizer(module: nn.Module) -> nn.Module | None:
    """The WeightQuantizer / KMeansQuantizer of a layer, or None."""
    if parametrize.is_parametrized(module, "weight"):
        q = module.parametrizations.weight[0]
        if isinstance(q, (WeightQuantizer, KMeansQuantizer)):
            return q
    return None


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight quantizer of every quantized conv / linear layer, by layer name."""
    return {n: q for n, m in prunable_layers(model).items() if (q := weight_quantizer(m)) is not None}


def quantize_model(model: nn.Module, bits: int | dict[str, int] = 8, scheme: str = "uniform", *,
                   symmetric: bool = True, per_channel: bool = True, method: str = "minmax",
                   percentile: float = 99.99, act_bits: int | None = None, act_symmetric: bool = False,
                   kmeans_iters: int = 30, keep_zeros: bool = False, layers: Iterable[str] | None = None,
                   exclude: Iterable[str] = ()) -> nn.Module:
    """Quantize the weights of conv / linear layers in place (and their inputs if ``act_bits``).

    ``bits`` is one width or a dict layer -> width (mixed precision; only those layers).
    ``scheme``: 'uniform' (``symmetric``, ``per_channel``, range ``method``), 'kmeans',
    'pow2', 'binary' or 'ternary' (``keep_zeros``: k-means leaves a pruned layer's zeros at
    zero). Activations: per tensor, asymmetric by default (post-ReLU
    inputs are non-negative: an unsigned grid wastes no level on negatives); their ranges come
    from ``calibrate``. Undo with ``remove_quantization``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown scheme {scheme!r}: use one of {SCHEMES}.")
    if isinstance(bits, dict):
        if layers is not None:
            raise ValueError("Pass either a dict of bits per layer or layers=, not both.")
        layers = list(bits)
    available = prunable_layers(model)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"No conv / linear layer named {unknown}; the model has {list(available)}.")
    names = [n for n in names if n not in set(exclude)]
    if act_bits is not None:
        check_bits(act_bits)
    quantizers = {}  # every quantizer is built (and its arguments checked) before the model changes
    for name in names:
        m = available[name]
        b = bits[name] if isinstance(bits, dict) else bits
        if prune.is_pruned(m):
            raise ValueError(f"Layer {name!r} carries a pruning mask: call "
                             "pruning.make_permanent(model) before quantizing it.")
        if weight_quantizer(m) is not None or hasattr(m, "input_quantizer"):
            raise ValueError(f"Layer {name!r} is already quantized: call remove_quantization(model) first.")
        if scheme == "kmeans":
            quantizers[name] = KMeansQuantizer(m.weight, b, kmeans_iters, keep_zeros)
        else:
            quantizers[name] = WeightQuantizer(scheme, b, symmetric, per_channel, method, percentile)
        quantizers[name](m.weight.detach())  # the weight itself must be quantizable (finite, not empty)
    for name, q in quantizers.items():
        m = available[name]
        parametrize.register_parametrization(m, "weight", q.to(m.weight.device))
        if act_bits is not None:
            m.input_quantizer = ActivationQuantizer(act_bits, act_symmetric).to(m.weight.device)
            m.register_forward_pre_hook(quantize_input)
    return model


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, loader, batches: int = 10) -> nn.Module:
    """PTQ calibration: run ``batches`` batches (inputs, or (inputs, labels) pairs) through the
    model in eval mode while the observers record every quantized input's range; then freeze
    the ranges and switch activation quantization on."""
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError("The model has no activation quantizers to calibrate: "
                         "quantize_model(model, ..., act_bits=8) first.")
    if batches < 1:
        raise ValueError(f"Calibration needs at least 1 batch, got batches={batches}.")
    for q in quantizers:
        q.observer.reset()
        q.observing, q.enabled = True, False
    device, was_training, seen = model_device(model), model.training, 0
    model.eval()
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            seen += 1
            if seen == batches:
                break
    finally:
        model.train(was_training)
        for q in quantizers:
            q.observing, q.enabled = False, True
    if seen == 0:
        raise ValueError("The calibration loader gave no batch: pass a non-empty loader "
                         "(e.g. data.loader('train', subset=512)).")
    return model


def remove_quantization(model: nn.Module, keep_quantized_weights: bool = True) -> nn.Module:
    """Back to a plain model: weight quantizers folded in (``keep_quantized_weights``: the
    weights keep their quantized values; False: the float weights come back), activation
    quantizers and their hooks removed."""
    for m in model.modules():
        if weight_quantizer(m) is not None:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=keep_quantized_weights)
        if hasattr(m, "input_quantizer"):
            for key, hook in list(m._forward_pre_hooks.items()):
                if hook is quantize_input:
                    del m._forward_pre_hooks[key]
            del m.input_quantizer
    return model

# ---------------------------------------------------------------- 4. size


def size_table(model: nn.Module) -> pd.DataFrame:
    """One row per parameter tensor: entries, bits per entry, bytes of codes and of overhead
    (scales, zero points, codebooks). Unquantized tensors count 32 bits (as metrics.model_size)."""
    rows = []
    for mname, m in model.named_modules():
        if "parametrizations" in mname.split("."):
            continue  # the quantizers' own tensors are counted with their layer
        prefix = f"{mname}." if mname else ""
        if parametrize.is_parametrized(m):
            for tname, plist in m.parametrizations.items():
                w = plist.original
                q = plist[0]
                payload, overhead = q.storage_bits(w) if hasattr(q, "storage_bits") else (32 * w.numel(), 0)
                rows.append((prefix + tname, w.numel(), payload / w.numel(), payload / 8, overhead / 8))
        for pname, p in m.named_parameters(recurse=False):
            rows.append((prefix + pname, p.numel(), 32.0, p.numel() * 4.0, 0.0))
    table = pd.DataFrame(rows, columns=["tensor", "entries", "bits", "code_bytes", "overhead_bytes"])
    table["bytes"] = table.code_bytes + table.overhead_bytes
    return table.set_index("tensor")


def quantized_size(model: nn.Module) -> float:
    """Bytes to store the model packed: codes at their bits + scales / zero points / codebooks."""
    return float(size_table(model)["bytes"].sum())

# ---------------------------------------------------------------- 5. mixed precision


def sensitivity_scan(model: nn.Module, loader, bits=(8, 6, 4, 3, 2), layers=None,
                     **quant_kwargs) -> pd.DataFrame:
    """Accuracy (%) when only one layer's weights are quantized to b bits, the rest float.

    Rows: layers, columns: bits; ``.attrs['float_accuracy']`` holds the unquantized baseline.
    The model is restored after every trial. ``quant_kwargs`` go to ``quantize_model``
    (weights only: activation quantizers would need a calibration per trial).
    """
    names = list(prunable_layers(model)) if layers is None else list(layers)
    table = pd.DataFrame(index=pd.Index(names, name="layer"), columns=list(bits), dtype=float)
    for name in names:
        for b in bits:
            quantize_model(model, b, layers=[name], **quant_kwargs)
            try:
                table.loc[name, b] = evaluate(model, loader)["accuracy"]
            finally:
                remove_quantization(model, keep_quantized_weights=False)
    table.attrs["float_accuracy"] = evaluate(model, loader)["accuracy"]
    return table


def allocate_bits(scan: pd.DataFrame, model: nn.Module, budget_bytes: float | None = None,
                  average_bits: float | None = None) -> dict[str, int]:
    """Greedy bit allocation under a size budget for the scanned layers' weight codes.

    Start every layer at the most bits of the scan; while over budget, lower by one step the
    layer whose step costs the least accuracy per byte saved (accuracy at b bits minus at the
    next lower width, from the scan: each layer's loss is assumed to add up independently).
    Budget in bytes, or as ``average_bits`` per weight (budget = weights x bits / 8).
    """
    if (budget_bytes is None) == (average_bits is None):
        raise ValueError("Give exactly one of budget_bytes or average_bits.")
    layers = prunable_layers(model)
    unknown = [n for n in scan.index if n not in layers]
    if unknown:
        raise ValueError(f"The scan names layers {unknown} that the model does not have.")
    numel = {n: layers[n].weight.numel() for n in scan.index}
    if average_bits is not None:
        budget_bytes = sum(numel.values()) * average_bits / 8
    if not budget_bytes >= 0:  # also refuses NaN, which no comparison would ever stop at
        raise ValueError(f"The budget must be a number of bytes >= 0, got budget_bytes={budget_bytes!r} "
                         f"(average_bits={average_bits!r}).")
    choices = sorted((int(b) for b in scan.columns), reverse=True)
    alloc = {n: choices[0] for n in scan.index}

    def size(a):
        return sum(numel[n] * a[n] for n in a) / 8

    smallest = size({n: choices[-1] for n in alloc})
    if smallest > budget_bytes:
        raise ValueError(f"The budget of {budget_bytes:,.0f} bytes is too small: even at {choices[-1]} "
                         f"bits the layers take {smallest:,.0f} bytes. Scan fewer bits or raise the budget.")
    while size(alloc) > budget_bytes:
        best, best_cost = None, float("inf")
        for n, b in alloc.items():
            i = choices.index(b)
            if i + 1 == len(choices):
                continue
            lower = choices[i + 1]
            cost = (scan.loc[n, b] - scan.loc[n, lower]) / (numel[n] * (b - lower) / 8)
            if cost < best_cost:
                best, best_cost = (n, lower), cost
        alloc[best[0]] = best[1]
    return alloc
