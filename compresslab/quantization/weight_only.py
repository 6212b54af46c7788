"""Weight-only quantization of a language model, group by group (round-to-nearest, RTN).

A linear layer's weight W (out x in) is cut along its input dimension into groups of g
consecutive weights in one row; every group gets its own b-bit asymmetric grid over its own
[min, max] (``affine.qparams_from_range``):

    S = (max - min) / (2^b - 1),   Z = -round(min / S),   W_hat = S (clamp(round(W / S) + Z, 0, 2^b - 1) - Z)

Small groups follow the weights closely but store more scales. The real cost in bits per weight
counts them: b for the integer, plus one float16 scale and one b-bit zero point per group,

    bits per weight = b + (16 + b) / g      (int4 at g = 128: 4.16; int3 at g = 128: 3.15)

Only the weights are quantized: activations stay in float, and the matrix product runs on
weights dequantized on the fly (what GPTQ's and AWQ's kernels, llama.cpp and ONNX Runtime's
MatMulNBits do). That pays where the time goes into reading weights from memory: decoding one
token at a time. The token embedding and the output layer stay in float, as in the GPTQ and AWQ
papers' tables.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .affine import dequantize, qparams_from_range, quantize

SCALE_BITS = 16  # a float16 scale per group


def check_group_size(w: torch.Tensor, group_size: int) -> int:
    columns = w.shape[-1]
    if not isinstance(group_size, int) or group_size < 1 or columns % group_size:
        raise ValueError(f"group_size must be a positive divisor of the {columns} input columns "
                         f"(e.g. 32, 64 or {columns}), got {group_size!r}.")
    return group_size


def rtn_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Round-to-nearest, asymmetric, one grid per group of ``group_size`` inputs of a row: W_hat."""
    g = check_group_size(w, group_size)
    groups = w.detach().float().reshape(-1, g)                    # (out * in / g, g)
    qp = qparams_from_range(groups.amin(1), groups.amax(1), bits, symmetric=False, axis=0)
    return dequantize(quantize(groups, qp), qp).reshape(w.shape).to(w.dtype)


def bits_per_weight(bits: float, group_size: int | None, scale_bits: int = SCALE_BITS,
                    zero_bits: float | None = None) -> float:
    """b + (scale bits + zero-point bits) / g; ``group_size=None``: one grid per row (free)."""
    if group_size is None:
        return float(bits)
    zero_bits = bits if zero_bits is None else zero_bits
    return bits + (scale_bits + zero_bits) / group_size


def linears_by_block(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """The linear layers of each transformer block (qkv, proj, fc1, fc2), one dict per block,
    named as in the model (``blocks.3.fc1``)."""
    return [{f"blocks.{i}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            for i, block in enumerate(model.blocks)]


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the transformer blocks (qkv, proj, fc1, fc2 of every block):
    what the papers quantize. The embedding and the output layer are left out."""
    return {name: m for layers in linears_by_block(model) for name, m in layers.items()}


@torch.no_grad()
def quantize_weights(model: nn.Module, quantizer: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose block linears hold ``quantizer(W)`` instead of W (simulated:
    the stored numbers are the dequantized W_hat in float), e.g.
    ``quantize_weights(gpt, lambda w: rtn_quantize(w, 4, 128))``."""
    model = copy.deepcopy(model)
    for layer in block_linears(model).values():
        layer.weight.copy_(quantizer(layer.weight))
    return model


def weight_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared error of the weights, relative to their mean square: ||W - W_hat||^2 / ||W||^2."""
    return float(((w - w_hat) ** 2).sum() / (w ** 2).sum())


def output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """What GPTQ minimizes: ||W X^T - W_hat X^T||^2 / ||W X^T||^2 over the inputs x (rows, in)."""
    y, y_hat = x @ w.T, x @ w_hat.T
    return float(((y - y_hat) ** 2).sum() / (y ** 2).sum())
