"""Uniform affine quantization: the scale, the zero point, and the rounding itself.

A real number r is stored as a b-bit integer q, with a real scale S > 0 and an integer zero
point Z (Jacob et al. 2018):

    q = clamp(round(r / S) + Z, q_min, q_max),        r ≈ r̂ = S (q - Z)

Inside the range [S (q_min - Z), S (q_max - Z)] the error |r - r̂| is at most S / 2; outside it
r is clipped. S and Z come from a real range [α, β], widened to contain 0 so that 0 (padding,
ReLU outputs, pruned weights) is stored exactly:

* asymmetric: q in [0, 2^b - 1],                   S = (β - α) / (2^b - 1),  Z = -round(α / S)
* symmetric:  q in [-(2^(b-1) - 1), 2^(b-1) - 1],  S = max(-α, β) / (2^(b-1) - 1),  Z = 0
  (the "restricted" range without -2^(b-1), so that the grid is symmetric; ONNX Runtime
  stores int8 weights the same way)

per tensor (one S and Z) or per channel (one per output channel: axis 0 of a weight). A range
of width zero (an all-zero tensor) gets S = float32 eps, as in torch's observers: every value
is then 0 exactly, and nothing divides by zero. Choosing [α, β] is ``ranges.py``'s job.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks

EPS = torch.finfo(torch.float32).eps

# ---------------------------------------------------------------- checks


def check_bits(bits, minimum: int = 2) -> int:
    """Bit widths are integers in [minimum, 16]; 1 bit exists only as binary (or k-means)."""
    bits = checks.integer(bits, "bits", 1, 16, must="be an integer between 1 and 16", example=8)
    if bits < minimum:
        raise ValueError(f"{bits} bit is too few for this grid (it needs at least {minimum}, e.g. 2): "
                         "for 1-bit weights use binarize() or scheme='binary'.")
    return bits


check_finite = checks.finite        # NaN or inf would poison min / max and so every scale
check_not_empty = checks.not_empty  # a range (min, max) or a codebook needs at least one number


def check_range(lo: torch.Tensor, hi: torch.Tensor) -> None:
    """A real range [α, β] (or one per channel): finite ends and α <= β."""
    check_finite(lo, "range's lower end")
    check_finite(hi, "range's upper end")
    if (lo > hi).any():
        raise ValueError(f"The range [lo, hi] must have lo <= hi, e.g. [-1, 2]; got lo={lo.tolist()}, "
                         f"hi={hi.tolist()}.")

# ---------------------------------------------------------------- the grid, S and Z


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
