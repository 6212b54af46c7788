"""GPTQ (Frantar et al. 2023): quantize a layer's weights one column at a time, and let the
columns not yet quantized absorb each error.

For one linear layer with weight W (out x in) and calibration inputs X (rows x in), GPTQ
minimizes the change of the layer's output, ||W X^T - W_hat X^T||^2, row by row. That error is a
quadratic form in the weights with the same Hessian for every row,

    H = 2 X^T X  (in x in)      (we use the mean 2 X^T X / rows: the scale does not matter)

Optimal Brain Quantization: quantize weight q of a row, and the best update of the remaining
weights F of that row is  delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}.
GPTQ's three changes make this fast and stable:

1. the same column order for every row (left to right), so H_F^-1 is shared by all rows, and the
   successive inverses are the rows of the upper Cholesky factor U of H^-1 (H^-1 = U^T U):
   quantizing column j updates the later columns by  err_j * U[j, j:] / U[j, j];
2. lazy batch updates: inside a block of B columns the updates are applied at once to the
   columns after the block (one matrix product instead of B rank-1 updates);
3. damping: H + lambda * mean(diag H) * I with lambda = 0.01, so that the Cholesky factorization
   does not fail on a nearly singular H (a channel that is always 0).

With groups (``group_size``), each group's grid is computed when GPTQ reaches its first column,
from the weights as they are then (already updated by the earlier columns' errors).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .affine import dequantize, qparams_from_range, quantize
from .transformer_ops import capture
from .weight_only import check_group_size, linears_by_block


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / rows for inputs x of shape (rows, in)."""
    x = x.double()
    return 2 * x.T @ x / len(x)


def inverse_hessian_factor(h: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """U with H^-1 = U^T U (upper Cholesky factor) of the damped H, and the inputs that are
    always 0 ("dead": their weights can be anything, GPTQ and SparseGPT set them to 0)."""
    H = h.double().clone()
    dead = H.diag() == 0
    H[dead, dead] = 1
    H += damp * H.diag().mean() * torch.eye(len(H), dtype=H.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True), dead


def group_grid(w: torch.Tensor, bits: int):
    """The asymmetric grid of each row of w (out x g): one scale and zero point per row."""
    return qparams_from_range(w.amin(1), w.amax(1), bits, symmetric=False, axis=0)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int = 128,
                  block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """W_hat of one layer (out x in) for the Hessian h (in x in), as in the module docstring."""
    g = check_group_size(w, group_size)
    W = w.detach().double().clone()
    columns = W.shape[1]
    U, dead = inverse_hessian_factor(h, damp)
    W[:, dead] = 0                              # an input that is always 0: its weights do not matter
    Q = torch.zeros_like(W)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, dtype=W.dtype)
        for i in range(i2 - i1):
            j = i1 + i
            if j % g == 0:                      # a new group starts: its grid from the weights as they are now
                grid = group_grid(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :g].float(), bits)
            col = W1[:, i]
            q = dequantize(quantize(col.float()[:, None], grid), grid)[:, 0].double()
            Q[:, j] = q
            err = (col - q) / U[j, j]
            W1[:, i:] -= err[:, None] * U[j, j:i2][None, :]   # the rest of the block absorbs the error
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]          # lazy update of everything after the block
    return Q.to(w.dtype)


@torch.no_grad()
def gptq_model(model: nn.Module, loader, bits: int = 4, group_size: int = 128, batches: int = 8,
               damp: float = 0.01) -> nn.Module:
    """A copy of ``model`` with every block linear quantized by GPTQ, block after block: the
    Hessians of a block's four linears come from the inputs they receive in the model whose
    earlier blocks are already quantized (as in the paper's code), over ``batches`` batches of
    calibration text."""
    model = copy.deepcopy(model)
    for layers in linears_by_block(model):
        inputs = capture(model, layers, loader, batches)             # this block's inputs, one pass
        for name, layer in layers.items():
            layer.weight.copy_(gptq_quantize(layer.weight, hessian(inputs[name]), bits, group_size, damp=damp))
    return model
