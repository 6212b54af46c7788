"""Fake quantization: r̂ computed in float, differentiable, and the observers that pick ranges.

Fake quantization computes r̂ = S (clamp(round(r / S) + Z, q_min, q_max) - Z) in float, so that
a model can be evaluated (post-training quantization, PTQ: the activation ranges come from
*observers* fed a few calibration batches) or trained (quantization-aware training, QAT) with
quantized weights and activations.

round() has a zero gradient almost everywhere; the straight-through estimator (Bengio et al.
2013) passes the gradient through it unchanged (d r̂ / d r := 1), and clipped values get none.

An observer keeps the running min / max of what it sees (or an exponential moving average
m <- m + momentum (x - m) of each batch's min / max, as in QAT); its range gives S and Z.
"""
from __future__ import annotations

import torch
from torch import nn

from .affine import QParams, check_bits, check_finite, check_not_empty, qparams_from_range


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
