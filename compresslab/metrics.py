"""The yardsticks every notebook reports: parameters, sparsity, bytes, FLOPs and latency.

Definitions (for a weight tensor W with n entries, nnz of them non-zero):

* sparsity        = 1 - nnz / n                      (0 = dense, 0.9 = 90 % zeros)
* compression     = n / nnz                          (Han et al.'s "12x fewer weights")
* dense size      = n * b / 8 bytes at b bits per weight (32 for float32); 1 KB = 1,000 bytes
                    (``KB``), the unit of the papers' tables, everywhere in the workbook
* sparse size     = CSR storage of every weight matrix (reshaped to rows x columns):
                    nnz * (b + index_bits) / 8 + (rows + 1) * 4 bytes of row pointers;
                    index_bits = bits needed to name a column, rounded up to 8 or 16 or 32
* gzip size       = what ``gzip`` makes of the raw float32 bytes (zeros compress well)
* FLOPs           = counted by ``torch.utils.flop_counter`` (1 multiply-add = 2 FLOPs)
* effective FLOPs = each conv / linear layer's FLOPs times its weight density: a zero
                    weight's multiply-adds could be skipped by a sparse kernel
* latency         = median wall time of one forward pass, ``torch.utils.benchmark``
"""
from __future__ import annotations

import gzip
import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE = (nn.Linear, nn.Conv2d, nn.Conv1d)
# Bytes per KB. Han et al.'s "1070 KB" LeNet-300-100 is 1,066,440 bytes: kilo = 1,000, as in SI.
# (1 KiB = 1,024 bytes would make it 1,041 "KB": one unit for the whole workbook avoids that.)
KB = 1000


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight a forward pass uses: with a pruning mask applied, if there is one."""
    return module.weight.detach()


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv and linear layers, by name: the layers whose weights we count and prune."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def all_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model computes with (parameters and pruned weights), by name.

    With ``torch.nn.utils.prune`` the parameter is ``weight_orig`` and the used tensor
    ``weight`` = ``weight_orig * weight_mask``; we count the latter.
    """
    out = {}
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if pname.endswith("_orig"):
                pname = pname[: -len("_orig")]
                p = getattr(m, pname)
            out[f"{mname}.{pname}" if mname else pname] = p.detach()
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in all_weights(model).values())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(t)) for t in all_weights(model).values())


def sparsity(model_or_tensor: nn.Module | torch.Tensor) -> float:
    """Fraction of zeros, over a tensor or over all of a model's weights and biases."""
    if isinstance(model_or_tensor, torch.Tensor):
        t = model_or_tensor
        return 1.0 - int(torch.count_nonzero(t)) / max(t.numel(), 1)
    n = count_parameters(model_or_tensor)
    return 1.0 - count_nonzero(model_or_tensor) / max(n, 1)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the conv / linear weights only (biases left out, as in the papers)."""
    ws = [weight_of(m) for m in prunable_layers(model).values()]
    return 1.0 - sum(int(torch.count_nonzero(w)) for w in ws) / max(sum(w.numel() for w in ws), 1)


def layer_table(model: nn.Module) -> pd.DataFrame:
    """One row per conv / linear layer: shape, weights, non-zeros, kept fraction."""
    rows = []
    for name, m in prunable_layers(model).items():
        w = weight_of(m)
        nnz = int(torch.count_nonzero(w))
        rows.append({"layer": name, "type": type(m).__name__, "shape": tuple(w.shape),
                     "weights": w.numel(), "nonzero": nnz, "kept_%": 100.0 * nnz / w.numel(),
                     "sparsity_%": 100.0 * (1 - nnz / w.numel())})
    return pd.DataFrame(rows).set_index("layer")


def index_bits(columns: int) -> int:
    """Bits of an unsigned integer type (8, 16, 32) able to name any of ``columns`` columns."""
    need = max(1, math.ceil(math.log2(max(columns, 2))))
    return next(b for b in (8, 16, 32) if b >= need)


def csr_bytes(t: torch.Tensor, value_bits: int = 32) -> float:
    """Bytes of ``t`` in CSR form: values + column indices + 32-bit row pointers.

    A vector (bias) has no sparse form worth the index: it is stored dense.
    """
    if t.dim() < 2:
        return t.numel() * value_bits / 8
    m = t.reshape(t.shape[0], -1)
    nnz = int(torch.count_nonzero(m))
    return nnz * (value_bits + index_bits(m.shape[1])) / 8 + (m.shape[0] + 1) * 4


def model_size(model: nn.Module, storage: str = "dense", bits: int = 32) -> float:
    """Model size in bytes: ``storage`` is 'dense' (every weight at ``bits`` bits),
    'sparse' (CSR, index overhead counted) or 'gzip' (gzip of the raw float32 bytes)."""
    weights = all_weights(model)
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be between 1 and 32, got {bits}.")
    if storage == "dense":
        return sum(t.numel() for t in weights.values()) * bits / 8
    if storage == "sparse":
        return sum(csr_bytes(t, bits) for t in weights.values())
    if storage == "gzip":
        raw = b"".join(t.cpu().float().numpy().tobytes() for t in weights.values())
        return float(len(gzip.compress(raw, compresslevel=9, mtime=0)))
    raise ValueError(f"Unknown storage {storage!r}: use 'dense', 'sparse' or 'gzip'.")


def example_input(model: nn.Module, input_shape, batch_size: int = 1) -> torch.Tensor:
    """A random input of ``(batch_size, *input_shape)`` on the model's device, in its float
    dtype (a half-precision model gets a half-precision input)."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.randn(batch_size, *input_shape, device=device, dtype=dtype)


def run_checked(model: nn.Module, x: torch.Tensor):
    """Run ``model(x)``; a shape mismatch becomes an error that says what was expected."""
    try:
        return model(x)
    except RuntimeError as e:
        raise ValueError(f"The model cannot take an input of shape {tuple(x.shape[1:])} "
                         f"(without the batch dimension): {e}. Pass input_shape=(1, 28, 28) "
                         "for MNIST models or (3, 32, 32) for CIFAR-10 ones.") from e


def check_input_shape(input_shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes without "
                         f"the batch dimension, e.g. (1, 28, 28); got {input_shape!r}.")
    return shape


@torch.no_grad()
def flop_counts(model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """torch's flop counter over one forward pass of ``x`` (eval mode): {"Global" or a module's
    path: {operator: FLOPs}}."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        run_checked(model, x)
    model.train(was_training)
    return counter.get_flop_counts()


def flops_by_layer(model: nn.Module, input_shape, batch_size: int = 1) -> pd.Series:
    """FLOPs of one forward pass per conv / linear layer, from torch's flop counter."""
    shape = check_input_shape(input_shape)
    counts = flop_counts(model, example_input(model, shape, batch_size))
    # The counter names modules by their path under the root, e.g. "Sequential.conv1".
    root = type(model).__name__
    out = {name: sum(counts.get(f"{root}.{name}", {}).values())
           for name in prunable_layers(model)}
    out["total"] = sum(counts.get("Global", {}).values())
    return pd.Series(out, dtype="int64")


def flops(model: nn.Module, input_shape, batch_size: int = 1) -> int:
    """Total FLOPs of one forward pass (a multiply-add counts as 2)."""
    return int(flops_by_layer(model, input_shape, batch_size)["total"])


def effective_flops(model: nn.Module, input_shape, batch_size: int = 1) -> int:
    """FLOPs a perfectly sparse kernel would do: each layer's FLOPs times its density."""
    per_layer = flops_by_layer(model, input_shape, batch_size)
    layers = prunable_layers(model)
    dense_part = sum(per_layer[n] for n in layers)
    sparse_part = sum(per_layer[n] * (1 - sparsity(weight_of(m))) for n, m in layers.items())
    return int(round(per_layer["total"] - dense_part + sparse_part))


@torch.no_grad()
def latency(model: nn.Module, input_shape, batch_size: int = 1, min_run_time: float = 0.5,
            num_threads: int | None = None) -> dict[str, float]:
    """Forward-pass wall time in milliseconds: median and interquartile range.

    ``torch.utils.benchmark.Timer`` warms up, synchronizes CUDA, and repeats until
    ``min_run_time`` seconds are spent; the median resists the odd slow run.
    """
    shape = check_input_shape(input_shape)
    was_training = model.training
    model.eval()
    x = example_input(model, shape, batch_size)
    run_checked(model, x)  # warm-up, and a clear error for a wrong shape
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x},
                            num_threads=num_threads or torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    model.train(was_training)
    return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "runs": len(m.times)}


def speed_table(models: dict[str, nn.Module], input_shape, batch_sizes=(1, 16, 256),
                rounds: int = 5, min_run_time: float = 0.25, control: bool = True) -> pd.DataFrame:
    """Latency of several models at several batch sizes, against the first model.

    The models are timed in interleaved rounds (model after model, then again), so that a slow
    moment of the machine cannot favour one of them. Each round is a median of repeated runs;
    timing noise only ever *adds* time, so the fastest round is the least disturbed estimate
    ("best ms"); "speed-up x" is the first model's best over this model's best.

    The noise, measured rather than guessed: ``control=True`` times the first model a second
    time at the end of every round (an A/A pair: the same model, so its true speed-up is 1).
    "speed-up lo/hi" are the smallest and largest per-round ratios (first model's time over this
    model's, same round): the error bars. "noise +/-" is the largest distance from 1 of the A/A
    ratios at that batch size: a speed-up inside 1 +/- noise is a tie (``verdict``). The last
    column divides the speed-up by the FLOP reduction, its physical limit.
    """
    first = next(iter(models))
    timed = dict(models, **({aa_name(first): models[first]} if control else {}))
    rows = [{"round": r, "model": name, "batch": b,
             "ms": latency(m, input_shape, b, min_run_time)["median_ms"]}
            for r in range(rounds) for name, m in timed.items() for b in batch_sizes]
    raw = pd.DataFrame(rows)
    ref = raw[raw.model == first].set_index(["round", "batch"])["ms"]
    raw["ratio"] = ref.loc[list(zip(raw["round"], raw.batch))].values / raw["ms"]
    table = (raw.groupby(["model", "batch"], sort=False)
             .agg(**{"best ms": ("ms", "min"), "spread ms": ("ms", lambda t: t.max() - t.min()),
                     "speed-up lo": ("ratio", "min"), "speed-up hi": ("ratio", "max")}).reset_index())
    best = table[table.model == first].set_index("batch")["best ms"]
    table.insert(4, "speed-up x", best[table.batch].values / table["best ms"])
    if control:
        aa = raw[raw.model == aa_name(first)].groupby("batch")["ratio"].agg(lambda t: (t - 1).abs().max())
        table["noise +/-"] = aa[table.batch].values
    mflops = {name: flops(m, input_shape) / 1e6 for name, m in timed.items()}
    table["MFLOPs"] = table.model.map(mflops)
    # A model torch cannot count FLOPs of (an ONNX Runtime session) gets no ratio, not a 0.
    counted = table["MFLOPs"].where(table["MFLOPs"] > 0)
    table["speed-up / FLOP reduction"] = table["speed-up x"] / (mflops[first] / counted)
    return table


def aa_name(name: str) -> str:
    """The row name of the A/A control of model ``name`` in a ``speed_table``."""
    return f"{name} again (A/A control)"


def verdict(speed: pd.DataFrame, model: str, batch: int) -> str:
    """'1.52x faster', '0.75x (slower)' or 'a tie (1.04x)', judged against the A/A noise band."""
    row = speed[(speed.model == model) & (speed.batch == batch)].iloc[0]
    x, noise = row["speed-up x"], row.get("noise +/-", 0.0)
    if x > 1 + noise:
        return f"{x:.2f}x faster"
    if x < 1 - noise:
        return f"{x:.2f}x (slower)"
    return f"a tie ({x:.2f}x, inside the noise band 1 +/- {noise:.2f})"


def compare(models: dict[str, nn.Module], input_shape, test_loader=None,
            latency_batches: tuple[int, ...] = (1, 256), min_run_time: float = 0.5) -> pd.DataFrame:
    """One table, one row per model: accuracy, parameters, sizes, FLOPs, latency.

    Pass ``latency_batches=()`` to skip the timing (the slowest column).
    """
    from .train import evaluate

    rows = []
    for name, model in models.items():
        row = {"model": name}
        if test_loader is not None:
            row["accuracy_%"] = evaluate(model, test_loader)["accuracy"]
        n, nnz = count_parameters(model), count_nonzero(model)
        row.update({
            "params": n, "nonzero": nnz, "compression_x": n / max(nnz, 1),
            "dense_KB": model_size(model, "dense") / KB,
            "sparse_KB": model_size(model, "sparse") / KB,
            "gzip_KB": model_size(model, "gzip") / KB,
            "MFLOPs": flops(model, input_shape) / 1e6,
            "eff_MFLOPs": effective_flops(model, input_shape) / 1e6,
        })
        for b in latency_batches:
            row[f"latency_b{b}_ms"] = latency(model, input_shape, b, min_run_time)["median_ms"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """counts[i, j] = how many samples of true class i were predicted as class j."""
    pred = logits.argmax(1)
    idx = labels * num_classes + pred
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes).numpy()


def binomial_se(accuracy_pct: float, n: int) -> float:
    """Standard error (points) of an accuracy measured on n independent test images:
    sqrt(p (1 - p) / n); about 0.7 points at p = 88% and n = 2,000, 0.33 at n = 10,000.
    Two accuracies closer than about 2 SE of their difference are a tie."""
    if n < 1:
        raise ValueError(f"n must be a positive number of test images, got {n}.")
    p = accuracy_pct / 100
    return 100 * math.sqrt(max(p * (1 - p), 0.0) / n)
