"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before W8A8.

A linear layer computes y = X W^T, X: (tokens, C_in). For any positive s, one per input channel,

    y = (X diag(s)^-1) (W diag(s))^T        exactly, in real arithmetic.

If input channel j has a range far above the others, one per-tensor int8 scale for X spends its
256 levels on that channel and rounds every other channel coarsely. Dividing channel j by s_j
shrinks it; column j of W, multiplied by s_j, takes the range instead, and per-channel weight
quantization (one scale per output row) copes with it better. SmoothQuant's choice:

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)

alpha = 0 leaves the activations alone (s_j = 1 / max|W_j|: it only normalizes W), alpha = 1
moves all of their range into W; the paper uses 0.5 for most models.

In a pre-norm transformer X = LayerNorm(x) = gamma * x_hat + beta, so diag(s)^-1 folds into
gamma and beta: the smoothed model has the same layers and costs nothing more to run.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import checks
from .transformer_ops import capture, channel_ranges


def input_absmax(model: nn.Module, layers: dict[str, nn.Module], loader, batches: int = 4) -> dict[str, torch.Tensor]:
    """max |X_j| over ``batches`` batches for every input channel j of each named layer."""
    inputs = capture(model, layers, loader, batches)                 # (batch x tokens, C_in) each
    return {name: channel_ranges(x) for name, x in inputs.items()}


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), one per input channel of ``weight``."""
    checks.fraction(alpha, "alpha (how much of the activations' range moves into the weights)")
    w_absmax = weight.detach().abs().amax(0).float().cpu()   # (C_in,): max over output rows
    return act_absmax.clamp_min(1e-5) ** alpha / w_absmax.clamp_min(1e-5) ** (1 - alpha)


@torch.no_grad()
def rescale_norm_linear(norm: nn.LayerNorm, linear: nn.Linear, s: torch.Tensor) -> None:
    """In place: LayerNorm's output channel j divided by s_j, the linear's column j multiplied
    by s_j. The pair computes the same function (exactly, up to float rounding)."""
    s = s.to(linear.weight.device, linear.weight.dtype)
    norm.weight.div_(s)
    norm.bias.div_(s)
    linear.weight.mul_(s)


def norm_linear_pairs(vit: nn.Module) -> dict[str, tuple[nn.LayerNorm, nn.Linear]]:
    """The (LayerNorm, linear) pairs of a pre-norm ViT: norm1 -> attn.qkv, norm2 -> fc1."""
    pairs = {}
    for b, block in enumerate(vit.blocks):
        pairs[f"blocks.{b}.attn.qkv"] = (block.norm1, block.attn.qkv)
        pairs[f"blocks.{b}.fc1"] = (block.norm2, block.fc1)
    return pairs


def smooth_quant(vit: nn.Module, loader, alpha: float = 0.5, batches: int = 4) -> nn.Module:
    """A smoothed copy of the ViT: every LayerNorm -> linear pair rescaled by SmoothQuant's s.
    The activation maxima come from ``batches`` batches of ``loader`` (calibration data)."""
    vit = copy.deepcopy(vit).eval()
    pairs = norm_linear_pairs(vit)
    absmax = input_absmax(vit, {n: lin for n, (_, lin) in pairs.items()}, loader, batches)
    for name, (norm, linear) in pairs.items():
        rescale_norm_linear(norm, linear, smoothing_scales(absmax[name], linear.weight, alpha))
    return vit
