"""Post-training int8 of a vision transformer, one family of operations at a time.

Besides its linear layers, a transformer block runs operations a CNN does not have, and each
hands int8 a distribution of its own:

* ``linear``            weights int8 per output channel; inputs uint8 per tensor. The inputs of
                        ``qkv`` and ``fc1`` are LayerNorm outputs, one scale for all channels;
* ``attention matmuls`` Q K^T and P V get int8 q, k and v (``qkv``'s output, per tensor);
* ``softmax``           the attention probabilities P in [0, 1]: with N tokens most are near
                        1 / N and a few near 1, so a grid of 256 steps over [0, max] leaves the
                        many small ones a handful of levels;
* ``layernorm``         its input, the residual stream, which adds up every block's output;
* ``gelu``              its input, ``fc1``'s output.

``quantize_ops(vit, families)`` puts fake quantizers (``ActivationQuantizer``: per tensor, range
from min / max calibration) at those places on a copy; ``calibrate`` sets their ranges.
``capture`` records what flows there, for histograms and per-channel ranges.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import checks
from .fake import ActivationQuantizer
from .quantizers import quantize_input, quantize_model, run_batches

FAMILIES = ("linear", "attention matmuls", "softmax", "layernorm", "gelu")


def quantize_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the module's output, fake-quantized."""
    return module.output_quantizer(output)


def quantize_at(module: nn.Module, where: str, bits: int) -> None:
    """Fake-quantize ``module``'s input (``where="input"``) or output, per tensor, asymmetric."""
    q = ActivationQuantizer(bits, symmetric=False)
    if where == "input":
        module.input_quantizer = q
        module.register_forward_pre_hook(quantize_input)
    else:
        module.output_quantizer = q
        module.register_forward_hook(quantize_output)


def quantize_ops(vit: nn.Module, families, bits: int = 8) -> nn.Module:
    """A copy of the ViT with the given families of operations in (fake) ``bits``-bit integers.
    Calibrate it (``quantization.calibrate(model, loader, batches)``) before evaluating."""
    families = [checks.one_of(f, "family of operations", FAMILIES) for f in families]
    vit = copy.deepcopy(vit).eval()
    if "linear" in families:
        quantize_model(vit, bits, per_channel=True, act_bits=bits)
    for block in vit.blocks:
        if "attention matmuls" in families:
            quantize_at(block.attn.qkv, "output", bits)       # q, k and v
        if "softmax" in families:
            quantize_at(block.attn.softmax, "output", bits)   # P, the input of P V
        if "layernorm" in families:
            quantize_at(block.norm1, "input", bits)
            quantize_at(block.norm2, "input", bits)
        if "gelu" in families:
            quantize_at(block.act, "input", bits)
    if "layernorm" in families:
        quantize_at(vit.norm, "input", bits)
    return vit


@torch.no_grad()
def capture(model: nn.Module, modules: dict[str, nn.Module], loader, batches: int = 1,
            output: bool = False) -> dict[str, torch.Tensor]:
    """What flows into (``output=False``) or out of each named module over ``batches`` batches,
    as (rows, last dimension) float tensors: a linear's input is (images x tokens, channels)."""
    found: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def keep(name, value):
        found[name].append(value.detach().float().reshape(-1, value.shape[-1]).cpu())
    handles = [m.register_forward_hook(lambda m, a, out, n=n: keep(n, out)) if output else
               m.register_forward_pre_hook(lambda m, a, n=n: keep(n, a[0])) for n, m in modules.items()]
    try:
        run_batches(model, loader, batches)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in found.items()}


def channel_ranges(x: torch.Tensor) -> torch.Tensor:
    """max |x_j| of every channel j (the last dimension) of a captured (rows, channels) tensor."""
    return x.abs().amax(0)


def outlier_ratio(x: torch.Tensor) -> float:
    """The largest channel's range over the median channel's: about 1 without outliers; large
    transformers reach 100 (Dettmers et al. 2022; Xiao et al. 2023)."""
    r = channel_ranges(x)
    return float(r.max() / r.median().clamp_min(1e-12))
