"""The model zoo: pretrained baselines committed in ``data/checkpoints/``.

Every checkpoint is a plain ``state_dict`` (tensors only), listed in ``manifest.json`` with
its sha256, and loaded with ``torch.load(..., weights_only=True)`` after the checksum is
verified: a truncated or tampered file is refused, and nothing is ever unpickled.

Retrain them all from scratch (prints the accuracy of each and refuses to overwrite
existing files unless told to)::

    python -m compresslab checkpoints retrain --force         # all three, ~27 min on 2 CPU cores
    python -m compresslab checkpoints retrain lenet5 --out /tmp/zoo
    python -m compresslab checkpoints verify                  # checksums + test accuracy
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from .data import DATA_DIR, dataset_label, load_dataset, sha256
from .models import DATASET_OF, MODELS, build_model, check_model_name
from .train import evaluate, fit, get_device

CHECKPOINT_DIR = DATA_DIR / "checkpoints"
MANIFEST = "manifest.json"

# How each baseline is trained. `python -m compresslab checkpoints retrain` uses exactly these.
RECIPES = {
    "lenet300": dict(epochs=20, lr=0.05, batch_size=128, weight_decay=5e-4, augment=False),
    "lenet5": dict(epochs=20, lr=0.05, batch_size=128, weight_decay=5e-4, augment=False),
    "cifar_cnn": dict(epochs=20, lr=0.2, batch_size=256, weight_decay=5e-4,
                      label_smoothing=0.1, augment=True),
}
# Test accuracy (%) each checkpoint must reach (a test checks it).
TARGETS = {"lenet300": 98.2, "lenet5": 99.1, "cifar_cnn": 88.0}


class ChecksumError(RuntimeError):
    """A checkpoint's bytes differ from those recorded in the manifest."""


def read_manifest(directory: Path = CHECKPOINT_DIR) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"No {MANIFEST} in {directory}: restore it with "
                                f"`git checkout {path}` or retrain with `python -m compresslab checkpoints retrain`.")
    return json.loads(path.read_text())


def load_state_dict(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Verify the checksum, then load tensors only (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} is missing: restore it with `git checkout {path}` "
                                "or retrain with `python -m compresslab checkpoints retrain`.")
    actual = sha256(path)
    if actual != expected_sha256:
        raise ChecksumError(f"Checkpoint {path} is corrupt or was modified (sha256 {actual[:12]}... "
                            f"instead of {expected_sha256[:12]}...). Restore it with "
                            f"`git checkout {path}` or retrain with `python -m compresslab checkpoints retrain`.")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pretrained(name: str, device: str | torch.device | None = None,
                    directory: Path = CHECKPOINT_DIR) -> nn.Module:
    """A baseline with its trained weights, in eval mode, on ``device`` (default: best available)."""
    check_model_name(name)
    entry = read_manifest(directory).get(name)
    if entry is None:
        raise KeyError(f"The manifest in {directory} has no entry for {name!r}: "
                       f"retrain it with `python -m compresslab checkpoints retrain {name}`.")
    model = build_model(name)
    model.load_state_dict(load_state_dict(Path(directory) / entry["file"], entry["sha256"]))
    return model.to(get_device(device)).eval()


def bf16_is_fast(device: torch.device) -> bool:
    """bfloat16 autocast pays off on GPUs and on CPUs with native bf16 (AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def train_baseline(name: str, seed: int = 0, device=None, progress: bool = True):
    """Train one baseline from scratch with its recipe; return (model, history)."""
    check_model_name(name)
    recipe = dict(RECIPES[name])
    device = get_device(device)
    ds = load_dataset(DATASET_OF[name])
    train = ds.loader("train", recipe.pop("batch_size"), augment=recipe.pop("augment"), seed=seed)
    test = ds.loader("test", 1000)
    model = build_model(name, seed=seed)
    history = fit(model, train, recipe.pop("epochs"), recipe.pop("lr"), test_loader=test, seed=seed,
                  device=device, mixed_precision=bf16_is_fast(device), desc=name, **recipe)
    return model, history


def retrain(names=None, out_dir: Path = CHECKPOINT_DIR, force: bool = False, seed: int = 0,
            device=None, progress: bool = True) -> dict:
    """Retrain baselines, write ``<name>.pt`` and update the manifest in ``out_dir``."""
    names = list(names or MODELS)
    out_dir = Path(out_dir)
    for name in names:
        check_model_name(name)
        if (out_dir / f"{name}.pt").exists() and not force:
            raise FileExistsError(f"{out_dir / f'{name}.pt'} exists; pass --force to replace it "
                                  "or --out DIR to write elsewhere.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir) if (out_dir / MANIFEST).exists() else {}
    for name in names:
        start = time.perf_counter()
        model, history = train_baseline(name, seed, device, progress)
        seconds = time.perf_counter() - start
        acc = history["test_acc"].iloc[-1]  # fit evaluated the final model on the test set
        model.to("cpu")
        path = out_dir / f"{name}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        tmp.replace(path)
        manifest[name] = {
            "file": path.name, "sha256": sha256(path), "test_accuracy": round(acc, 2),
            "dataset": DATASET_OF[name], "dataset_label": dataset_label(DATASET_OF[name]), "seed": seed, "recipe": RECIPES[name],
            "train_seconds": round(seconds), "device": str(get_device(device)),
            "bf16_autocast": bf16_is_fast(get_device(device)), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
        }
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        write_readme(out_dir, manifest)
        print(f"{name}: test accuracy {acc:.2f}% (target {TARGETS[name]}%), "
              f"{seconds:.0f} s, sha256 {manifest[name]['sha256'][:12]}... -> {path}", flush=True)
    return manifest


def write_readme(out_dir: Path, manifest: dict) -> None:
    """``README.md`` beside the checkpoints, generated from the manifest (never typed by hand)."""
    lines = ["# Pretrained baselines", "",
             "Written by `python -m compresslab checkpoints retrain` from `manifest.json`; do not edit by hand.",
             "Each file is a plain `state_dict`, loaded with `torch.load(..., weights_only=True)`",
             "after its sha256 is checked against the manifest.", "",
             "| model | dataset | test accuracy | target | epochs | seed | wall time | device | threads | torch | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in manifest.items():
        label = e.get("dataset_label", e["dataset"])
        lines.append(f"| `{name}` | {label} | {e['test_accuracy']:.2f}% | {TARGETS[name]}% | "
                     f"{e['recipe']['epochs']} | {e['seed']} | {e['train_seconds'] / 60:.1f} min | "
                     f"{e['device']} | {e['cpu_threads']} | {e['torch']} | "
                     f"`python -m compresslab checkpoints retrain {name} --force --seed {e['seed']}` |")
    lines += ["", "Recipes (SGD with Nesterov momentum 0.9, one-cycle learning rate; bfloat16 autocast",
              "where the hardware runs it natively, see `bf16_autocast` in the manifest):", ""]
    for name, e in manifest.items():
        lines.append(f"- `{name}`: {json.dumps(e['recipe'])}")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def verify(directory: Path = CHECKPOINT_DIR) -> bool:
    """Check every checkpoint's checksum and test accuracy; print one line each."""
    ok = True
    for name in MODELS:
        try:
            model = load_pretrained(name, "cpu", directory)
            ds = load_dataset(DATASET_OF[name])
            acc = evaluate(model, ds.loader("test", 1000))["accuracy"]
            good = acc >= TARGETS[name]
            print(f"{'ok  ' if good else 'LOW '} {name}: {acc:.2f}% (target {TARGETS[name]}%)")
            ok &= good
        except Exception as e:
            print(f"FAIL {name}: {e}")
            ok = False
    return ok
