"""Experiments too long for a notebook (a command runs them and writes a CSV, a notebook reads
it), and the noise of repeated runs: when is a difference between two methods a tie?

    python -m compresslab experiments kd-cifar     # notebook 07: ~20 min on 2 CPU cores

Each experiment writes ``data/results/<name>.csv`` (one row per run and epoch) and
``<name>.json`` beside it (the settings, the machine, the wall time). The notebook shows where
its numbers come from and checks that the file was produced by the settings in this module;
rerun the command (with ``--force``) after changing them.

Noise: a mean accuracy over k seeds, measured on one test set of n images, is uncertain for
two reasons, the seeds' spread (sd / sqrt(k), more seeds shrink it) and the test set's binomial
noise (sqrt(p (1 - p) / n), the same images for every seed, so more seeds do not shrink it).
``accuracy_se`` adds both; ``ranking`` calls two methods a tie when their means differ by less
than two standard errors of the difference.
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import distillation as kd
from .data import DATA_DIR, EVAL_BATCH, dataset_label, load_dataset
from .metrics import binomial_se
from .models import build_model
from .train import bf16_is_fast, fit, get_device
from .zoo import load_pretrained

RESULTS_DIR = DATA_DIR / "results"

# Notebook 07: a 16x thinner student learns CIFAR-10 from the zoo's CNN, four ways, three seeds.
# Short schedules on the full training set; the teacher's outputs on each epoch's augmented
# images are computed once (distillation.CachedTeacher) and shared by all twelve runs.
KD_CIFAR = dict(teacher="cifar_cnn", student_widths=[16, 32, 64], epochs=8, lr=0.2, batch_size=256,
                weight_decay=5e-4, T=4.0, hint=["relu6", "relu6"], beta=1.0, feature_loss="mse",
                seeds=[0, 1, 2])
KD_VARIANTS = {  # variant -> (alpha, use the hint)
    "scratch": (0.0, False),              # alpha = 0, no hint: plain cross-entropy on the labels
    "logit KD": (0.9, False),             # Hinton et al.
    "feature KD": (0.0, True),            # FitNets: labels + hint on the last conv features
    "logit + feature KD": (0.9, True),
}


def results_path(name: str, directory: Path = RESULTS_DIR) -> Path:
    """``data/results/kd_cifar.csv`` for the experiment ``kd-cifar``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}: choose one of {list(EXPERIMENTS)}.")
    return Path(directory) / f"{name.replace('-', '_')}.csv"


def kd_cifar(device=None, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Train the KD_CIFAR students; one row per (variant, seed, epoch), and the settings."""
    cfg, device = KD_CIFAR, get_device(device)
    ds = load_dataset("cifar10")
    test = ds.loader("test", EVAL_BATCH)
    teacher = load_pretrained(cfg["teacher"], device)
    start = time.perf_counter()
    cache = kd.CachedTeacher(teacher, ds, cfg["epochs"], hint_layer=cfg["hint"][1], device=device)
    cache_seconds = time.perf_counter() - start
    rows = []
    for seed in cfg["seeds"]:
        for variant, (alpha, use_hint) in KD_VARIANTS.items():
            student = build_model("cifar_cnn", seed=seed, widths=cfg["student_widths"])
            hint = tuple(cfg["hint"]) if use_hint else None
            model = (kd.with_hint_projection(student, teacher, *hint, ds.normalize(ds.x_train[:2]), seed=seed)
                     if use_hint else student)
            loss_fn = kd.distillation_loss_fn(cache, cfg["T"], alpha, hint=hint, beta=cfg["beta"],
                                              feature_loss=cfg["feature_loss"])
            history = fit(model, cache.loader(cfg["batch_size"], seed=seed, device=device), cfg["epochs"],
                          cfg["lr"], weight_decay=cfg["weight_decay"], test_loader=test, seed=seed,
                          loss_fn=loss_fn, mixed_precision=bf16_is_fast(device), device=device,
                          progress=progress, desc=f"{variant} seed {seed}")
            history.insert(0, "seed", seed)
            history.insert(0, "variant", variant)
            rows.append(history)
            final = history.iloc[-1]
            print(f"{variant:20s} seed {seed}: {final['test_acc']:.2f}% ({history['seconds'].sum():.0f} s)", flush=True)
    info = {"settings": cfg, "variants": {k: {"alpha": a, "hint": h} for k, (a, h) in KD_VARIANTS.items()},
            "dataset_label": dataset_label("cifar10"), "teacher_train_accuracy_augmented": round(cache.accuracy(), 2),
            "teacher_cache_seconds": round(cache_seconds), "seconds": round(time.perf_counter() - start),
            "device": str(device), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "bf16_autocast": bf16_is_fast(device)}
    return pd.concat(rows, ignore_index=True), info


# name -> (the function that runs it, the settings its results must have been computed with)
EXPERIMENTS = {"kd-cifar": (kd_cifar, KD_CIFAR)}


def run(name: str, directory: Path = RESULTS_DIR, force: bool = False, device=None, progress: bool = True) -> Path:
    """Run an experiment and write its CSV and JSON; refuses to overwrite without ``force``."""
    path = results_path(name, directory)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to recompute it or --out DIR to write elsewhere.")
    table, info = EXPERIMENTS[name][0](device, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path.with_suffix(".tmp"), index=False, float_format="%.4f")
    path.with_suffix(".tmp").replace(path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {path} ({info['seconds'] / 60:.1f} min)")
    return path


def load_results(name: str, directory: Path = RESULTS_DIR) -> tuple[pd.DataFrame, dict]:
    """The CSV and settings an experiment wrote; refused when the settings have changed since."""
    path = results_path(name, directory)
    command = f"python -m compresslab experiments {name} --force"
    if not path.exists() or not path.with_suffix(".json").exists():
        raise FileNotFoundError(f"No results in {path}: compute them with `{command}`.")
    info = json.loads(path.with_suffix(".json").read_text())
    expected = EXPERIMENTS[name][1]
    if info["settings"] != expected:
        raise ValueError(f"{path} was computed with other settings ({info['settings']}) than "
                         f"compresslab.experiments now has ({expected}): rerun `{command}`.")
    return pd.read_csv(path), info


# ---------------------------------------------------------------- noise of repeated runs


def accuracy_se(accuracies, n_test: int) -> float:
    """Standard error (points) of the mean of per-seed accuracies (%) on one test set of n_test
    images: sqrt(sd^2 / k + p (1 - p) / n_test), p the mean. One run: the binomial SE alone."""
    a = np.asarray(accuracies, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("Need at least one accuracy.")
    seeds_var = a.var(ddof=1) / a.size if a.size > 1 else 0.0
    return math.sqrt(seeds_var + binomial_se(float(a.mean()), n_test) ** 2)


def gap(a, b, n_test: int) -> tuple[float, float]:
    """mean(a) - mean(b) in points, and its standard error sqrt(SE_a^2 + SE_b^2).

    Unpaired: both are measured on the same test images, so this overstates the test set's
    share of the noise (a lead called with it is safe; a close tie may hide a small lead)."""
    d = float(np.mean(a) - np.mean(b))
    return d, math.hypot(accuracy_se(a, n_test), accuracy_se(b, n_test))


def paired_gap(a, b) -> tuple[float, float]:
    """mean(a_i - b_i) and its standard error sd / sqrt(k), for k >= 2 runs measured twice
    (seed i's run after 6 and after 3 epochs): the same runs and test images on both sides, so
    the seeds' spread and most of the test set's noise cancel; what the change itself varies
    by remains."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"Pairs need the same runs on both sides, got {a.size} and {b.size} values.")
    d = a - b
    if d.size < 2:
        raise ValueError(f"Need two or more pairs of runs for a paired standard error, got {d.size}.")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def ranking(name_a: str, a, name_b: str, b, n_test: int, z: float = 2.0) -> str:
    """'A ahead of B by 3.10 ± 0.40 points', or 'A and B tie (+0.05 ± 0.18 points)' when the
    means differ by less than ``z`` standard errors of the difference."""
    d, se = gap(a, b, n_test)
    if abs(d) < z * se:
        return f"{name_a} and {name_b} tie ({d:+.2f} ± {se:.2f} points)"
    first, second = (name_a, name_b) if d > 0 else (name_b, name_a)
    return f"{first} ahead of {second} by {abs(d):.2f} ± {se:.2f} points"
