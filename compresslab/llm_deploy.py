"""A language model run for real: ONNX export, ONNX Runtime sessions, tokens per second, the roofline.

(Its int4 weights come from ``deploy.quantize_onnx_int4``, ONNX Runtime's weight-only quantizer.)

Generating text has two phases. *Prefill* reads the prompt, T tokens in one pass: every weight is
used T times, so the pass is bound by arithmetic. *Decode* produces one token per pass, each
weight matrix multiplied by a single vector: 2 FLOPs (a multiply-add) per weight read, an
arithmetic intensity of 2 / (bytes per weight) FLOPs per byte, far below a CPU's ridge point
(its peak FLOP/s over its memory bandwidth). So a decode step costs about

    seconds per token ~ bytes of weights / memory bandwidth,

once the weights no longer fit in the caches: fewer bytes per weight is what speeds decoding up
(int4 reads 8x fewer bytes than fp32). ``gemv_bandwidth`` measures the bandwidth a matrix-vector
product reaches at growing sizes, the roofline's slanted side, on this machine.

A real decoder keeps each block's keys and values of past tokens (the KV cache,
``quantization.kv_cache``), so that a decode step processes one new token: ``decode`` below
times one-token passes, the weight-reading cost of such a step (attention over the cache adds
2 x context x dim multiply-adds per block, a few percent here).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .deploy import OnnxModel, require_onnx, write_onnx


def export_lm(model: nn.Module, path: str | Path) -> Path:
    """Write the language model to ONNX: int64 character ids (batch, tokens) in, logits out,
    both dimensions dynamic, the tokens up to the model's context."""
    require_onnx()
    plain = copy.deepcopy(model).cpu().eval()
    ids = torch.zeros(2, min(8, plain.context), dtype=torch.long)
    return write_onnx(plain, ids, path, "ids", {0: ("batch", None, None), 1: ("tokens", 1, plain.context)})


class OnnxLM(OnnxModel):
    """An exported language model in ONNX Runtime, called like the PyTorch one: ids in, logits
    out (so ``text.nats_per_char`` and ``text.generate`` take it). ``context`` as the model's."""

    def __init__(self, path: str | Path, context: int, num_threads: int | None = None):
        super().__init__(path, num_threads)
        self.context = context

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: ids.detach().cpu().long().numpy()})[0]
        return torch.from_numpy(out).to(ids.device)


def file_mb(path: str | Path) -> float:
    """A file's size in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


def seconds_per_call(fn, min_run_time: float = 0.3) -> float:
    """Median seconds of one call of ``fn()``, by ``torch.utils.benchmark``'s adaptive timer."""
    from torch.utils.benchmark import Timer
    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def tokens_per_second(models: dict[str, nn.Module], context: int, rounds: int = 3,
                      min_run_time: float = 0.3) -> pd.DataFrame:
    """Prefill (one pass over ``context`` tokens) and decode (one-token passes) tokens per second
    of each model, at batch 1, in interleaved rounds: every model is timed once per round, so a
    slow moment of the machine hits them all. Mean and standard deviation over the rounds; time
    one model under two names for an A/A control (the noise band)."""
    ids = {"prefill": torch.randint(0, 10, (1, context)), "decode": torch.randint(0, 10, (1, 1))}
    runs: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, model in models.items():
                for phase, x in ids.items():
                    s = seconds_per_call(lambda: model(x), min_run_time)
                    runs.setdefault((name, phase), []).append(x.shape[1] / s)
    rows = {}
    for (name, phase), v in runs.items():
        rows.setdefault(name, {})[f"{phase} tokens/s"] = float(np.mean(v))
        rows[name][f"{phase} SD"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return pd.DataFrame.from_dict(rows, orient="index")


def gemv_bandwidth(sizes_mb=(0.5, 2, 8, 32, 128, 256), dtype=torch.float32, min_run_time: float = 0.2) -> pd.DataFrame:
    """y = W x for square W of each size (in MB of ``dtype``): seconds, and the bandwidth it
    reaches, bytes of W per second (W is read once per product; x and y are negligible)."""
    rows = []
    for mb in sizes_mb:
        n = int((mb * 1e6 / torch.tensor([], dtype=dtype).element_size()) ** 0.5)
        w, x = torch.randn(n, n).to(dtype), torch.randn(n, 1).to(dtype)
        s = seconds_per_call(lambda: w @ x, min_run_time)
        nbytes = w.numel() * w.element_size()
        rows.append({"matrix MB": nbytes / 1e6, "microseconds": s * 1e6, "GB/s": nbytes / s / 1e9,
                     "GFLOP/s": 2 * w.numel() / s / 1e9})
    return pd.DataFrame(rows)


def generate_timed(model: nn.Module, corpus, prompt: str, length: int) -> tuple[str, float]:
    """Greedy text from ``model`` (``text.generate`` at temperature 0) and the seconds it took."""
    from .text import generate
    start = time.perf_counter()
    out = generate(model, corpus, prompt, length, temperature=0)
    return out, time.perf_counter() - start
