"""One-shot pruning of a language model's linear layers, without fine-tuning: magnitude,
Wanda and SparseGPT, unstructured or N:M.

For a layer y = W x with calibration inputs X (rows x in):

* **magnitude**: score |W_ij|.
* **Wanda** (Sun et al. 2024): score |W_ij| * ||X_j||_2, the weight times the norm of its input
  channel over the calibration tokens; a weight on a loud channel matters more. Weights compete
  *within their output row* (every row keeps the same share), not across the layer.
* **SparseGPT** (Frantar & Alistarh 2023): Optimal Brain Surgeon with GPTQ's machinery. Going
  left to right through the columns with the same Hessian H = 2 X^T X / rows (``gptq``), each
  block of 128 columns picks its pruned weights by w^2 / U_jj^2 = w^2 / [H_F^-1]_jj (the OBS
  saliency, H_F^-1 the inverse Hessian of the columns not yet pruned, U its Cholesky factor),
  among all the block's weights, every row together (as the authors' code does), zeroes them,
  and the error of each column is spread over the columns after it, exactly as GPTQ spreads a
  rounding error: the kept weights are *changed* to reconstruct the layer's output.

**N:M** sparsity (NVIDIA's 2:4 on Ampere and later): in every group of M consecutive weights of
a row, at most N are non-zero; 2:4 and 4:8 are both 50% sparse. GPU sparse tensor cores skip the
zeros and double the matmul throughput; CPU runtimes (PyTorch, ONNX Runtime) do not exploit 2:4,
so here it saves storage (N values plus a 2-bit index each per group of 4), not time.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import checks
from .quantization.gptq import hessian, inverse_hessian_factor
from .quantization.transformer_ops import capture
from .quantization.weight_only import block_linears, linears_by_block

METHODS = ("magnitude", "wanda", "sparsegpt")


def check_sparsity(sparsity: float) -> float:
    return checks.number(sparsity, "sparsity", 0, 1, high_open=True, example=0.5,
                         must="be the fraction of weights removed, in [0, 1)")


def check_nm(n: int, m: int, columns: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m and columns % m == 0):
        raise ValueError(f"N:M needs integers 0 < N < M with M dividing the {columns} columns, e.g. 2:4; got {n}:{m}.")


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep (True) the largest scores of every row: each row loses the same share."""
    drop = int(scores.shape[1] * check_sparsity(sparsity))
    mask = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        mask.scatter_(1, scores.argsort(1)[:, :drop], False)
    return mask


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep (True) the n largest scores of every m consecutive entries of a row."""
    out, columns = scores.shape
    check_nm(n, m, columns)
    groups = scores.reshape(out, columns // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(n, dim=2).indices, True)
    return mask.reshape(out, columns)


def wanda_scores(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 for inputs x (rows, in)."""
    return w.abs() * x.float().norm(dim=0)[None, :]


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                    block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """The pruned and reconstructed W of one layer (out x in) for the Hessian h, as in the
    module docstring: ``sparsity`` unstructured, or ``nm=(n, m)`` (n kept of every m)."""
    W = w.detach().double().clone()
    out, columns = W.shape
    if nm is not None:
        check_nm(*nm, columns)
    else:
        check_sparsity(sparsity)
    U, dead = inverse_hessian_factor(h, damp)
    W[:, dead] = 0
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(out, i2 - i1, dtype=W.dtype)
        d = U.diag()[i1:i2]
        if nm is None:                       # this block's pruned weights: the lowest OBS saliency
            keep = ~torch.zeros_like(W1, dtype=torch.bool)
            saliency = (W1 / d) ** 2
            drop = int(saliency.numel() * sparsity)
            if drop:
                keep.view(-1)[saliency.flatten().argsort()[:drop]] = False
        for i in range(i2 - i1):
            j = i1 + i
            if nm is not None and i % nm[1] == 0:   # the next group of m: keep its n most salient
                keep_group = nm_mask(((W1[:, i:i + nm[1]] / d[i:i + nm[1]]) ** 2), *nm)
            col = W1[:, i]
            kept = keep_group[:, i % nm[1]] if nm is not None else keep[:, i]
            q = torch.where(kept, col, torch.zeros_like(col))
            err = (col - q) / U[j, j]
            W1[:, i:] -= err[:, None] * U[j, j:i2][None, :]   # the kept weights to the right absorb it
            W1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return W.to(w.dtype)


@torch.no_grad()
def prune_llm(model: nn.Module, method: str = "wanda", sparsity: float = 0.5, nm: tuple[int, int] | None = None,
              loader=None, batches: int = 8) -> nn.Module:
    """A copy of ``model`` with every block linear pruned one-shot by ``method``, block after
    block, each block's calibration inputs taken from the model pruned up to the block before (as
    both papers' code does).
    ``nm=(2, 4)`` for 2:4 instead of ``sparsity``. Magnitude needs no ``loader``."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {METHODS}.")
    if method != "magnitude" and loader is None:
        raise ValueError(f"{method} needs calibration text: pass loader=corpus.loader('train', ...).")
    model = copy.deepcopy(model)
    for layers in linears_by_block(model):
        # one pass for the block's four linears, through the model pruned up to the block before
        inputs = {} if method == "magnitude" else capture(model, layers, loader, batches)
        for name, layer in layers.items():
            w = layer.weight
            if method == "sparsegpt":
                w.copy_(sparsegpt_prune(w, hessian(inputs[name]), sparsity, nm))
                continue
            scores = w.abs() if method == "magnitude" else wanda_scores(w, inputs[name])
            w.mul_(nm_mask(scores, *nm) if nm is not None else row_mask(scores, sparsity))
    return model


def sparsity_of(model: nn.Module) -> float:
    """Share of zeros among the block linears' weights."""
    ws = [m.weight for m in block_linears(model).values()]
    return float(sum((w == 0).sum() for w in ws) / sum(w.numel() for w in ws))
