"""Range choice: which real range [α, β] a tensor's grid should cover.

* min-max: α = min(x), β = max(x): nothing is clipped, but one outlier stretches the grid;
* percentile: β = the p-th percentile of |x| (or of x), α = -β (or the (100-p)-th): the
  rarest outliers are clipped so that everything else rounds more finely;
* MSE: the clipping c·[min, max], c in {1/grid, ..., 1}, with the least mean squared error
  E[(x - x̂)^2] of the quantized tensor (a grid search; per channel).

``qparams`` picks the range by ``method`` and turns it into S and Z (``affine.py``).
"""
from __future__ import annotations

import torch

from .. import checks
from .affine import QParams, check_bits, check_finite, check_not_empty, qparams_from_range
from .fake import fake_quantize

METHODS = ("minmax", "percentile", "mse")

# ---------------------------------------------------------------- checks


def check_percentile(percentile) -> float:
    return checks.number(percentile, "percentile", 50, 100, low_open=True, example=99.99,
                         hint="(99.99 clips the 0.01 % largest magnitudes.)")


def check_method(method: str) -> str:
    return checks.one_of(method, "The range method", METHODS, "(Unknown range method.)")

# ---------------------------------------------------------------- ranges


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
    checks.integer(grid, "grid (the number of clipping factors tried)", 1, example=50)
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


def qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None,
            method: str = "minmax", percentile: float = 99.99, grid: int = 50) -> QParams:
    """Scale and zero point for ``x``: ``method`` 'minmax', 'percentile' or 'mse' picks [α, β];
    ``axis=0`` gives one (S, Z) per output channel of a weight."""
    bits, method = check_bits(bits), check_method(method)
    check_finite(x)
    check_not_empty(x)
    if axis is not None:
        checks.integer(axis, "axis", must="be None (per tensor) or an integer axis", example=0)
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} does not exist in a tensor of shape {tuple(x.shape)}: "
                         f"pass None (per tensor) or an axis in [{-x.dim()}, {x.dim() - 1}], e.g. 0.")
    axis = None if axis is None else axis % x.dim()
    if method == "minmax":
        lo, hi = minmax_range(x, axis)
    elif method == "percentile":
        lo, hi = percentile_range(x, percentile, axis, symmetric)
    else:
        lo, hi = mse_range(x, bits, symmetric, axis, grid)
    return qparams_from_range(lo, hi, bits, symmetric, axis)
