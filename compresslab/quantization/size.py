"""Size accounting and mixed precision: what a quantized model costs, and where bits matter.

**Size**: n weights at b bits take n b / 8 bytes, plus their scales and zero points (32 + b
bits per channel), or their codebook (2^b float32 values); unquantized tensors count 32 bits.

**Mixed precision**: a sensitivity scan measures the accuracy a(l, b) with only layer l at b
bits; a greedy allocation then lowers, while the model is over its budget, the layer whose next
step down costs the least accuracy per byte saved, (a(l, b) - a(l, b')) / (n_l (b - b') / 8),
assuming that the layers' losses add up independently.
"""
from __future__ import annotations

import pandas as pd
from torch import nn
from torch.nn.utils import parametrize

from ..metrics import prunable_layers
from ..train import evaluate
from .quantizers import quantize_model, remove_quantization


def size_table(model: nn.Module) -> pd.DataFrame:
    """One row per parameter tensor: entries, bits per entry, bytes of codes and of overhead
    (scales, zero points, codebooks). Unquantized tensors count 32 bits (as metrics.model_size)."""
    rows = []
    for mname, m in model.named_modules():
        if "parametrizations" in mname.split("."):
            continue  # the quantizers' own tensors are counted with their layer
        prefix = f"{mname}." if mname else ""
        if parametrize.is_parametrized(m):
            for tname, plist in m.parametrizations.items():
                w = plist.original
                q = plist[0]
                payload, overhead = q.storage_bits(w) if hasattr(q, "storage_bits") else (32 * w.numel(), 0)
                rows.append((prefix + tname, w.numel(), payload / w.numel(), payload / 8, overhead / 8))
        for pname, p in m.named_parameters(recurse=False):
            rows.append((prefix + pname, p.numel(), 32.0, p.numel() * 4.0, 0.0))
    table = pd.DataFrame(rows, columns=["tensor", "entries", "bits", "code_bytes", "overhead_bytes"])
    table["bytes"] = table.code_bytes + table.overhead_bytes
    return table.set_index("tensor")


def quantized_size(model: nn.Module) -> float:
    """Bytes to store the model packed: codes at their bits + scales / zero points / codebooks."""
    return float(size_table(model)["bytes"].sum())


def sensitivity_scan(model: nn.Module, loader, bits=(8, 6, 4, 3, 2), layers=None,
                     **quant_kwargs) -> pd.DataFrame:
    """Accuracy (%) when only one layer's weights are quantized to b bits, the rest float.

    Rows: layers, columns: bits; ``.attrs['float_accuracy']`` holds the unquantized baseline.
    The model is restored after every trial. ``quant_kwargs`` go to ``quantize_model``
    (weights only: activation quantizers would need a calibration per trial).
    """
    names = list(prunable_layers(model)) if layers is None else list(layers)
    table = pd.DataFrame(index=pd.Index(names, name="layer"), columns=list(bits), dtype=float)
    for name in names:
        for b in bits:
            quantize_model(model, b, layers=[name], **quant_kwargs)
            try:
                table.loc[name, b] = evaluate(model, loader)["accuracy"]
            finally:
                remove_quantization(model, keep_quantized_weights=False)
    table.attrs["float_accuracy"] = evaluate(model, loader)["accuracy"]
    return table


def allocate_bits(scan: pd.DataFrame, model: nn.Module, budget_bytes: float | None = None,
                  average_bits: float | None = None) -> dict[str, int]:
    """Greedy bit allocation under a size budget for the scanned layers' weight codes.

    Start every layer at the most bits of the scan; while over budget, lower by one step the
    layer whose step costs the least accuracy per byte saved (accuracy at b bits minus at the
    next lower width, from the scan: each layer's loss is assumed to add up independently).
    Budget in bytes, or as ``average_bits`` per weight (budget = weights x bits / 8).
    """
    if (budget_bytes is None) == (average_bits is None):
        raise ValueError("Give exactly one of budget_bytes or average_bits.")
    layers = prunable_layers(model)
    unknown = [n for n in scan.index if n not in layers]
    if unknown:
        raise ValueError(f"The scan names layers {unknown} that the model does not have.")
    numel = {n: layers[n].weight.numel() for n in scan.index}
    if average_bits is not None:
        budget_bytes = sum(numel.values()) * average_bits / 8
    if not budget_bytes >= 0:  # also refuses NaN, which no comparison would ever stop at
        raise ValueError(f"The budget must be a number of bytes >= 0, got budget_bytes={budget_bytes!r} "
                         f"(average_bits={average_bits!r}).")
    choices = sorted((int(b) for b in scan.columns), reverse=True)
    alloc = {n: choices[0] for n in scan.index}

    def size(a):
        return sum(numel[n] * a[n] for n in a) / 8

    smallest = size({n: choices[-1] for n in alloc})
    if smallest > budget_bytes:
        raise ValueError(f"The budget of {budget_bytes:,.0f} bytes is too small: even at {choices[-1]} "
                         f"bits the layers take {smallest:,.0f} bytes. Scan fewer bits or raise the budget.")
    while size(alloc) > budget_bytes:
        best, best_cost = None, float("inf")
        for n, b in alloc.items():
            i = choices.index(b)
            if i + 1 == len(choices):
                continue
            lower = choices[i + 1]
            cost = (scan.loc[n, b] - scan.loc[n, lower]) / (numel[n] * (b - lower) / 8)
            if cost < best_cost:
                best, best_cost = (n, lower), cost
        alloc[best[0]] = best[1]
    return alloc
