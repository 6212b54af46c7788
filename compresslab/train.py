"""Training and evaluation: ``fit``, ``fine_tune``, ``evaluate``, ``predict``.

One plain loop, written out so that a student can read it: for each batch,
forward -> loss -> backward -> optimizer step -> learning-rate step. Later notebooks plug
into it through two arguments instead of copying it:

* ``loss_fn(model, x, y, *extra) -> loss``  e.g. a distillation loss that also runs a teacher;
  a loader may yield ``(x, y, *extra)``, and the extras travel with their batch to ``loss_fn``
  (a cached teacher's outputs for exactly these samples);
* ``after_step(step)``              e.g. re-applying a pruning mask or a gradual schedule.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar and a ``done(summary)`` to call at the end.

    In Jupyter the bar is a widget while it runs and is then replaced by the one-line ``summary``:
    a saved notebook would otherwise keep the widget's text fallback, a bar stalled at 0%.
    In a terminal it is a text bar, erased at the end."""
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:  # no ipywidgets: tqdm.auto is the text bar
        notebook_tqdm = None
    if enabled and notebook_tqdm is not None and issubclass(tqdm, notebook_tqdm):
        from IPython.display import display

        bar = notebook_tqdm(total=total, desc=desc, leave=False, display=False)
        handle = display(bar.container, display_id=True)

        def done(summary: str) -> None:
            bar.close()
            handle.update({"text/plain": summary}, raw=True)
        return bar, done
    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False)
    return bar, lambda summary: bar.close()


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU (or whatever ``prefer`` names)."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 mixed precision where asked for (fast on CPUs with AMX and on GPUs)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bf16_is_fast(device: torch.device) -> bool:
    """bfloat16 autocast pays off on GPUs and on CPUs with native bf16 (AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return True
    try:  # a private torch function, the only test there is; if it moves, use float32
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of a loader, on the CPU."""
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader, device: torch.device | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy (in %) over a loader."""
    logits, labels = predict(model, loader, device)
    return {"loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": 100.0 * (logits.argmax(1) == labels).float().mean().item()}


def lr_at(step: int, total: int, peak: float, schedule: str, warmup: float = 0.15) -> float:
    """Learning rate at a step: 'constant', 'cosine' decay, or 'onecycle' (linear up for
    the first ``warmup`` fraction, then linear down to zero)."""
    t = step / max(total, 1)
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return 0.5 * peak * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return peak * (t / warmup if t < warmup else (1 - t) / (1 - warmup))
    raise ValueError(f"Unknown schedule {schedule!r}: use 'constant', 'cosine' or 'onecycle'.")


def fit(model: nn.Module, train_loader, epochs: int, lr: float = 0.05, *,
        test_loader=None, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
        label_smoothing: float = 0.0, schedule: str = "onecycle", seed: int = 0,
        loss_fn: Callable | None = None, after_step: Callable[[int], None] | None = None,
        mixed_precision: bool = False, device: torch.device | str | None = None,
        progress: bool = True, desc: str = "train") -> pd.DataFrame:
    """Train ``model`` in place with SGD + Nesterov momentum (or ``optimizer="adam"`` / ``"adamw"``).

    Seeds torch's, NumPy's and Python's global RNGs with ``seed`` (``seed_everything``) before
    the first batch, and leaves the model in eval mode; returns the history (a DataFrame).

    * The reseeding replaces the random state you had, it does not continue it: the same model,
      loader and ``seed`` give the same weights whatever ran before, and the global state after
      ``fit`` is what ``seed`` and the training left (dropout draws from it; the data loader
      draws epoch e's batches from its own (seed, e) generator: ``set_epoch``), not the one
      you had before the call.
    * Eval mode (``model.training`` is False: dropout off, BatchNorm on its running statistics)
      even if the model came in training mode; call ``model.train()`` to go on training it in
      a loop of your own.

    The SGD update is w <- w - lr_t * (m_t + wd * w) with momentum m; ``lr_t`` follows
    ``schedule``. One row per epoch: epoch, lr, train_loss, seconds, test_loss, test_acc.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}.")
    seed_everything(seed)
    device = get_device(device) if not isinstance(device, torch.device) else device
    model.to(device).train()
    # oneDNN (CPU) and cuDNN run convolutions fastest in NHWC ("channels last") layout.
    nhwc = device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if nhwc:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                              weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019): transformers' default
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"Unknown optimizer {optimizer!r}: use 'sgd', 'adam' or 'adamw'.")
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if loss_fn is None:
        def loss_fn(m, x, y):
            return criterion(m(x), y)

    total, step, rows, last_test = epochs * len(train_loader), 0, [], {}
    bar, done = progress_bar(total, desc, progress)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        start, loss_sum, n = time.perf_counter(), 0.0, 0
        if hasattr(train_loader, "set_epoch"):  # the same seed and loader: the same batches
            train_loader.set_epoch(epoch - 1)
        for x, y, *extra in train_loader:
            x, y = x.to(device), y.to(device)
            extra = [e.to(device) if isinstance(e, torch.Tensor) else e for e in extra]
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, lr, schedule)
            with autocast(device, mixed_precision):
                loss = loss_fn(model, x, y, *extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
            loss_sum += loss.item() * len(y)
            n += len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / n:.3f}", **last_test)
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / n,
               "seconds": time.perf_counter() - start}
        if test_loader is not None:
            res = evaluate(model, test_loader, device)
            row.update(test_loss=res["loss"], test_acc=res["accuracy"])
            last_test = {"test_acc": f"{res['accuracy']:.2f}%"}
            model.train()
        rows.append(row)
    summary = f"{desc}: {epochs} epochs, {step} steps in {time.perf_counter() - started:.1f} s"
    if rows:
        summary += f", train loss {rows[-1]['train_loss']:.3f}"
        if "test_acc" in rows[-1]:
            summary += f", test accuracy {rows[-1]['test_acc']:.2f}%"
    done(summary)
    if nhwc:  # leave the model in the layout it came in: latency comparisons stay fair
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return pd.DataFrame(rows)


def fine_tune(model: nn.Module, train_loader, epochs: int, lr: float = 0.005, **kwargs) -> pd.DataFrame:
    """Retrain a compressed model briefly at a small, constant learning rate.

    Han et al. (2015) retrain pruned networks at 1/10 of the original learning rate:
    the surviving weights only need to adjust, not to learn from scratch.
    """
    kwargs.setdefault("schedule", "constant")
    kwargs.setdefault("desc", "fine-tune")
    return fit(model, train_loader, epochs, lr, **kwargs)
