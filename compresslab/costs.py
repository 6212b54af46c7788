"""Where a vision transformer's time goes: FLOPs and measured CPU time per family of operations.

For N tokens of width D in a block with H heads of size d (H d = D here) and MLP width M:

* linears (qkv, proj, fc1, fc2)  2 N (3 D H d + H d D + 2 D M) FLOPs: grow as N;
* attention matmuls (Q K^T, P V)  2 * 2 N^2 H d FLOPs: grow as N^2;
* softmax (over N^2 H scores), LayerNorm (N D), GELU (N M): a few operations per element,
  which torch's flop counter does not count (it counts matrix products and convolutions);
  their cost is reading and writing memory, so only a clock shows it.

``op_flops`` groups torch's flop counter by operator, ``op_times`` groups the self CPU time of
``torch.profiler`` by operator, both into the families of ``FAMILY``.
"""
from __future__ import annotations

import os

import pandas as pd
import torch
from torch import nn

from .metrics import example_input, flop_counts

# Kineto, the profiler's engine, prints start / stop notes (and, without a GPU, an error about
# one) to stderr at its default log level; 6 keeps only what is fatal.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

# aten operator -> family. A linear on (B, N, D) runs as addmm / mm; x @ y on 4-d tensors as bmm.
FAMILY = {"addmm": "linears", "mm": "linears", "linear": "linears", "bmm": "attention matmuls",
          "_softmax": "softmax", "softmax": "softmax", "native_layer_norm": "LayerNorm",
          "layer_norm": "LayerNorm", "gelu": "GELU", "convolution": "patch embedding",
          "mkldnn_convolution": "patch embedding", "_convolution": "patch embedding",
          "_mkldnn_convolution": "patch embedding"}
ORDER = ["linears", "attention matmuls", "softmax", "LayerNorm", "GELU", "patch embedding",
         "other (adds, copies, reshapes)"]


def family_of(op: str) -> str:
    """'aten::addmm' or 'aten.addmm.default' -> 'linears'; anything unlisted -> 'other'."""
    name = op.replace("aten::", "").replace("aten.", "").split(".")[0]
    return FAMILY.get(name, ORDER[-1])


@torch.no_grad()
def op_flops(model: nn.Module, batch_size: int = 1, shape=(3, 32, 32)) -> pd.Series:
    """FLOPs of one forward pass per family (multiply-add = 2), from torch's flop counter."""
    out = pd.Series(0, index=ORDER, dtype="int64")
    for op, n in flop_counts(model, example_input(model, shape, batch_size)).get("Global", {}).items():
        out[family_of(str(op))] += n
    return out


@torch.no_grad()
def op_times(model: nn.Module, batch_size: int = 1, repeats: int = 10, shape=(3, 32, 32)) -> pd.Series:
    """Self CPU time in ms per forward pass per family, from ``torch.profiler`` over ``repeats``
    passes after two warm-up passes. Self time: a parent operator's time excludes its children's,
    so the families add up to the whole forward pass."""
    model.eval()
    x = example_input(model, shape, batch_size)
    for _ in range(2):
        model(x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            model(x)
    out = pd.Series(0.0, index=ORDER)
    for event in prof.key_averages():
        out[family_of(event.key)] += event.self_cpu_time_total / 1e3 / repeats
    return out
