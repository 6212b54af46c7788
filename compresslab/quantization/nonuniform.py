"""Non-uniform grids: levels that are not evenly spaced, or only two or three of them.

* k-means weight sharing (Han et al. 2016, "Deep Compression"): a codebook of 2^b centroids
  per layer, found by Lloyd's iterations; each weight stores the b-bit index of its own;
* powers of two (Miyashita et al. 2016): levels 0 and ±2^e, so a multiply becomes a shift;
* binary weights α sign(w) (BinaryConnect / XNOR-Net), with α = mean |w|, the α that
  minimizes ||w - α sign(w)||^2;
* ternary weights 0, ±α (Li & Liu 2016, TWN): zero below Δ = 0.7 mean |w|.
"""
from __future__ import annotations

import math

import torch

from .. import checks
from .affine import EPS, check_bits, check_finite, check_not_empty


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
    checks.number(threshold, "threshold", 0, math.inf, high_open=True, must="be a finite number >= 0",
                  example="0.7 (TWN)")
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
