"""AWQ, activation-aware weight quantization (Lin et al. 2024), in three steps as in MIT 6.5940's lab.

Not every weight matters equally: a weight W_ij multiplies input channel j, and channels with
large activations carry more of the output. With s_X(j) = mean |X_j| over calibration tokens:

1. **Keep the salient 1%**: leave the weights of the 1% of input channels with the largest s_X
   in float, round the rest (RTN). Compare with a random 1%: the gain comes from *which*
   channels are kept, not from how many.
2. **Scale instead of keeping**: mixed precision is awkward for kernels. Multiplying column j
   by s > 1 before rounding and dividing the input channel by s (folded into the previous
   operation) computes the same function in float,

       y = W x = (W diag(s)) (diag(s)^-1 x),

   but the rounding error of the scaled column, relative to its size, shrinks by about s (the
   group's grid is set by its largest weights, which the scaling leaves mostly alone), as long
   as s does not enlarge the group's range.
3. **Search the scales**: s = s_X^alpha (normalized so that max(s) * min(s) = 1) for alpha in
   [0, 1], choosing the alpha with the smallest output error ||W X^T - Q(W diag(s)) diag(s)^-1 X^T||
   on calibration data. alpha = 0 is RTN.

We simulate: W_hat = Q(W diag(s)) diag(s)^-1 is stored in float, which equals running the
scaled weights on the rescaled inputs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .transformer_ops import capture
from .weight_only import block_linears, output_error, rtn_quantize


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """s_X(j) = mean |X_j| over the calibration rows: the size of each input channel."""
    return x.float().abs().mean(0)


def salient_channels(x: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Indices of the ``fraction`` of input channels with the largest activation scale."""
    k = max(1, round(fraction * x.shape[1]))
    return activation_scale(x).topk(k).indices


def keep_channels(w: torch.Tensor, channels: torch.Tensor, bits: int = 3, group_size: int = 128) -> torch.Tensor:
    """RTN everywhere but the given input channels, whose weights stay in float."""
    w_hat = rtn_quantize(w, bits, group_size)
    w_hat[:, channels] = w[:, channels]
    return w_hat


def scaled_quantize(w: torch.Tensor, s: torch.Tensor, bits: int = 3, group_size: int = 128) -> torch.Tensor:
    """Q(W diag(s)) diag(s)^-1: round the scaled weights, fold the scale back."""
    return rtn_quantize(w * s[None, :], bits, group_size) / s[None, :]


def awq_scales(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = s_X^alpha, normalized so that max(s) * min(s) = 1 (AWQ's code does the same)."""
    s = activation_scale(x).clamp_min(1e-4) ** alpha
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_alpha(w: torch.Tensor, x: torch.Tensor, bits: int = 3, group_size: int = 128,
                 grid: int = 20) -> tuple[float, dict[float, float]]:
    """The alpha in {0, 1/grid, ..., 1} with the smallest output error on x, and every error."""
    errors = {a / grid: output_error(w, scaled_quantize(w, awq_scales(x, a / grid), bits, group_size), x)
              for a in range(grid + 1)}
    return min(errors, key=errors.get), errors


@torch.no_grad()
def awq_model(model: nn.Module, loader, bits: int = 3, group_size: int = 128, batches: int = 8,
              grid: int = 20) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` with every block linear quantized with its searched AWQ scales, and
    the alpha chosen for each layer. The search uses the float model's inputs (as AWQ does
    within a block)."""
    model, alphas = copy.deepcopy(model), {}
    layers = block_linears(model)
    inputs = capture(model, layers, loader, batches)
    for name, layer in layers.items():
        alphas[name], _ = search_alpha(layer.weight, inputs[name], bits, group_size, grid)
        s = awq_scales(inputs[name], alphas[name])
        layer.weight.copy_(scaled_quantize(layer.weight, s, bits, group_size))
    return model, alphas
