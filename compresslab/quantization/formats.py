"""Number formats for weights beyond the uniform integer grid: NF4, FP8, MXFP4 / MXFP8.

Each format is a fixed set of levels (a grid) and a scale per block of weights; a weight is
stored as the nearest level of its block's scaled grid, W_hat = scale * level.

* **int4** (for comparison): 16 evenly spaced levels, here symmetric absmax per block.
* **NF4** (Dettmers et al. 2023, QLoRA): 16 levels at quantiles of the standard normal, so that
  each level is equally used by normally distributed weights; 0 is a level, the grid is slightly
  asymmetric (8 positive levels, 7 negative), and it is scaled by the block's absmax (blocks of
  64). *Double quantization* stores those float32 absmax scales themselves as 8-bit floats
  (their mean subtracted, blocks of 256 scales, one float32 scale each): 32/64 = 0.5 bits per
  weight of scale become 8/64 + 32/(64 * 256) = 0.127.
* **FP8** E4M3 (4 exponent bits, 3 mantissa bits, largest 448) and E5M2 (largest 57344): a
  float grid, dense near 0 and coarse far away; torch's ``float8_e4m3fn`` / ``float8_e5m2``
  do the rounding. One float scale per output row maps the row's absmax to the largest value.
* **MX** (OCP Microscaling formats 1.0, 2023): blocks of 32 elements share one 8-bit power-of-two
  scale X = 2^(floor(log2 absmax) - emax), emax the largest exponent of the element format;
  elements in FP4 E2M1 (levels 0, 0.5, 1, 1.5, 2, 3, 4, 6: MXFP4) or FP8 E4M3 (MXFP8), clamped
  to the largest level. 4 + 8/32 = 4.25 bits per weight for MXFP4.
"""
from __future__ import annotations

import torch

NF4_OFFSET = 0.9677083  # the outermost quantile, as in QLoRA's code (bitsandbytes create_normal_map)
FP4_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
FP8_DTYPE = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
EMAX = {"fp4": 2, "fp8": 8}  # largest exponent of an element: 6 = 1.5 * 2^2, 448 = 1.75 * 2^8


def nf4_levels() -> torch.Tensor:
    """QLoRA's 16 NF4 levels in [-1, 1]: normal quantiles, 8 positive, 0, and 7 negative."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1].float())
    negative = -normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1].float())
    levels = torch.cat([positive, torch.zeros(1), negative]).sort().values
    return levels / levels.abs().max()


def int_levels(bits: int = 4) -> torch.Tensor:
    """The symmetric integer grid -(2^(b-1) - 1) .. 2^(b-1) - 1, divided by its largest level."""
    top = 2 ** (bits - 1) - 1
    return torch.arange(-top, top + 1, dtype=torch.float32) / top


def round_to_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each entry of x replaced by its nearest level (levels sorted ascending)."""
    levels = levels.to(x.device, x.dtype)
    middles = (levels[1:] + levels[:-1]) / 2
    return levels[torch.bucketize(x, middles)]


def blocks_of(w: torch.Tensor, block: int) -> torch.Tensor:
    if w.numel() % block:
        raise ValueError(f"{w.numel()} weights do not split into blocks of {block}.")
    return w.detach().float().reshape(-1, block)


def absmax_quantize(w: torch.Tensor, levels: torch.Tensor, block: int = 64) -> torch.Tensor:
    """W_hat = absmax(block) * nearest level of W / absmax(block): int4 or NF4 by ``levels``."""
    b = blocks_of(w, block)
    scale = b.abs().amax(1, keepdim=True).clamp_min(1e-12)
    return (round_to_levels(b / scale, levels) * scale).reshape(w.shape).to(w.dtype)


def nf4_quantize(w: torch.Tensor, block: int = 64, double_quant: bool = True) -> torch.Tensor:
    """NF4 with blocks of ``block``; ``double_quant``: the absmax scales themselves in FP8 E4M3,
    their mean subtracted, one scale per 256 of them (QLoRA's second quantization)."""
    b = blocks_of(w, block)
    scale = b.abs().amax(1).clamp_min(1e-12)
    if double_quant:
        pad = (-len(scale)) % 256
        s = torch.cat([scale, scale[-1:].expand(pad)]) if pad else scale
        mean = s.mean()
        scale = (fp8_quantize((s - mean).reshape(-1, 256)).flatten() + mean)[: len(scale)].clamp_min(1e-12)
    return (round_to_levels(b / scale[:, None], nf4_levels()) * scale[:, None]).reshape(w.shape).to(w.dtype)


def fp8_quantize(w: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """One float scale per row maps the row's absmax to the format's largest value; torch's
    float8 cast rounds to nearest (even)."""
    if fmt not in FP8_MAX:
        raise ValueError(f"Unknown FP8 format {fmt!r}: use 'e4m3' or 'e5m2'.")
    rows = w.detach().float().reshape(w.shape[0], -1)
    scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / FP8_MAX[fmt]
    return ((rows / scale).to(FP8_DTYPE[fmt]).float() * scale).reshape(w.shape).to(w.dtype)


def mx_quantize(w: torch.Tensor, element: str = "fp4", block: int = 32) -> torch.Tensor:
    """OCP MX: a shared power-of-two scale 2^(floor(log2 absmax) - emax) per block of 32, then
    each element rounded in FP4 E2M1 (``"fp4"``) or FP8 E4M3 (``"fp8"``), clamped to its largest."""
    if element not in EMAX:
        raise ValueError(f"Unknown MX element format {element!r}: use 'fp4' or 'fp8'.")
    b = blocks_of(w, block)
    amax = b.abs().amax(1, keepdim=True).clamp_min(2.0 ** -126)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - EMAX[element])
    x = b / scale
    if element == "fp4":
        levels = torch.cat([-FP4_E2M1.flip(0)[:-1], FP4_E2M1])
        q = round_to_levels(x.clamp(-6.0, 6.0), levels)
    else:
        q = x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
    return (q * scale).reshape(w.shape).to(w.dtype)


def format_bits(name: str) -> float:
    """Bits per weight, scales included, of each format as this module stores it."""
    return {"int4 (absmax, blocks of 64)": 4 + 16 / 64, "NF4 (blocks of 64)": 4 + 32 / 64,
            "NF4 + double quantization": 4 + 8 / 64 + 32 / (64 * 256),
            "FP8 E4M3": 8.0, "FP8 E5M2": 8.0, "MXFP4": 4 + 8 / 32, "MXFP8": 8 + 8 / 32}[name]
