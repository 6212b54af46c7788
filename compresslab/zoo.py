"""The model zoo: pretrained baselines committed in ``data/checkpoints/``.

Every checkpoint is a plain ``state_dict`` (tensors only), listed in ``manifest.json`` with
its sha256, and loaded with ``torch.load(..., weights_only=True)`` after the checksum is
verified: a truncated or tampered file is refused, and nothing is ever unpickled.

This module *loads* checkpoints and imports no compression technique; how each one is
*made* is a plain function of the same name in :mod:`compresslab.recipes`, which
``retrain`` looks up by name.

Retrain them all from scratch (prints the accuracy of each and refuses to overwrite
existing files unless told to)::

    python -m compresslab checkpoints retrain --force         # all of them, ~5.3 h on 2 CPU cores (the two ViTs 2.2 h, the GPT 35 min)
    python -m compresslab checkpoints retrain lenet5 --out /tmp/zoo
    python -m compresslab checkpoints verify                  # checksums + test accuracy (the LM: val nats/char)
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from .data import DATA_DIR, EVAL_BATCH, dataset_label, load_dataset, sha256
from .models import DATASET_OF, build_model
from .text import CORPORA, load_text, nats_per_char
from .train import bf16_is_fast, evaluate, get_device  # noqa: F401 (bf16_is_fast: notebooks use zoo.bf16_is_fast)

CHECKPOINT_DIR = DATA_DIR / "checkpoints"
MANIFEST = "manifest.json"

# The settings of each checkpoint's recipe, as the manifest records them and the notebooks print
# them. The training itself is the function of the same name in compresslab/recipes.py (these
# dicts are read, never interpreted); tests/test_recipes.py checks that each function trains
# with exactly these settings. "model" names the architecture when it differs from the
# checkpoint's name; "store" is how retrain writes the file.
EPOCHS_800 = 20
RECIPES = {
    "lenet300": dict(epochs=20, lr=0.05, batch_size=128, weight_decay=5e-4, augment=False),
    "lenet5": dict(epochs=20, lr=0.05, batch_size=128, weight_decay=5e-4, augment=False),
    "cifar_cnn": dict(epochs=20, lr=0.2, batch_size=256, weight_decay=5e-4,
                      label_smoothing=0.1, augment=True),
    # The depthwise-separable CNN (cross-layer equalization), trained with cifar_cnn's recipe.
    "cifar_cnn_dws": dict(epochs=20, lr=0.2, batch_size=256, weight_decay=5e-4,
                          label_smoothing=0.1, augment=True),
    # Network slimming (notebook 04): the cifar_cnn recipe plus bn_l1 * sum |gamma| in the loss.
    # Liu et al. train 160 epochs at batch 64 with lambda = 1e-4: the L1 term pulls every gamma by
    # lambda * sum_t lr_t ~ 1e-4 * 6,600 ~ 0.66 in all. Our 20-epoch one-cycle run has
    # sum_t lr_t ~ 390, so the same total pull takes lambda ~ 1.7e-3.
    "cifar_cnn_slim": dict(model="cifar_cnn", epochs=20, lr=0.2, batch_size=256, weight_decay=5e-4,
                           label_smoothing=0.1, augment=True, bn_l1=1.7e-3),
    # L1-filter pruning (notebook 02): 30% of the filters of every conv of the trained cifar_cnn
    # removed (half the FLOPs), then fine-tuned on the full training set.
    "cifar_cnn_pruned": dict(model="cifar_cnn", start_from="cifar_cnn", prune_filters=0.3,
                             epochs=10, lr=0.05, schedule="cosine", batch_size=256,
                             weight_decay=5e-4, label_smoothing=0.1, augment=True),
    # The combined pipeline (notebook 09): 40% of every conv's filters removed (L1 norm), about
    # 2.8x fewer FLOPs, then the accuracy recovered by distillation from the unpruned cifar_cnn.
    # (Half of the filters, 8 epochs: 86.22%, 2.1 points lost.)
    "cifar_cnn_pruned_kd": dict(model="cifar_cnn", start_from="cifar_cnn", prune_filters=0.4,
                                teacher="cifar_cnn", T=4, alpha=0.9, epochs=8, lr=0.05,
                                schedule="cosine", batch_size=256, weight_decay=5e-4, augment=True),
    # Deep Compression (notebook 09, the report): Han et al.'s per-layer pruning in 4 rounds of
    # 3 epochs, k-means sharing at their bits with the centroids fine-tuned for one epoch.
    "lenet300_dc": dict(model="lenet300", start_from="lenet300", deep_compression="lenet300", rounds=4,
                        epochs=3, lr=0.01, weight_decay=5e-4, batch_size=128, augment=False),
    "lenet5_dc": dict(model="lenet5", start_from="lenet5", deep_compression="lenet5", rounds=3, epochs=2,
                      lr=0.01, batch_size=128, augment=False),
    # Tucker-2 (notebook 08): every conv but the first as 1x1 -> 3x3 core -> 1x1 at half its
    # channels as ranks (2.5x fewer FLOPs), initialized from the trained cifar_cnn's HOOI
    # factors, then fine-tuned on the full training set.
    "cifar_cnn_tucker": dict(model="cifar_cnn", start_from="cifar_cnn", tucker=0.5, epochs=6, lr=0.02,
                             schedule="cosine", batch_size=256, weight_decay=5e-4, label_smoothing=0.1,
                             augment=True),
    # Hinton et al.'s (2015) MNIST teacher (notebook 07): 784-1200-1200-10 with dropout 0.5,
    # trained on inputs jittered by up to 2 pixels in every direction (augment=True on MNIST is
    # exactly that: a random crop after 2-pixel zero padding, no flips). Stored in float16 (4.8 MB,
    # same accuracy) to keep the repository small. 6 min on 2 CPU cores for 98.97%
    # (103 test errors; Hinton et al.'s teacher made 67, trained far longer).
    "mlp1200": dict(epochs=30, lr=0.1, batch_size=128, weight_decay=5e-4, augment=True,
                    store="float16"),
    # Their student, 784-800-800-10 with no regularization at all (no dropout, no jitter, no
    # weight decay): alone, then "regularized solely by ... matching the soft targets produced
    # by the large net at a temperature of 20" (notebook 07), and distilled on a transfer set
    # with every 3 removed (drop_class=3).
    "mlp800": dict(epochs=EPOCHS_800, lr=0.1, batch_size=128, weight_decay=0.0, augment=False,
                   store="float16"),
    "mlp800_kd": dict(model="mlp800", teacher="mlp1200", T=20, alpha=0.9, epochs=EPOCHS_800, lr=0.1,
                      batch_size=128, weight_decay=0.0, augment=False, store="float16"),
    "mlp800_kd_no3": dict(model="mlp800", teacher="mlp1200", T=20, alpha=0.9, drop_class=3,
                          epochs=EPOCHS_800, lr=0.1, batch_size=128, weight_decay=0.0, augment=False,
                          store="float16"),
    # The vision transformer (notebook 10): AdamW, weight decay 0.05, crops and flips; 30 epochs of
    # 1.7 min on 2 AMD EPYC cores with bf16 autocast (about 2.5x slower where a CPU lacks bf16).
    "vit": dict(epochs=30, lr=1e-3, optimizer="adamw", batch_size=128, weight_decay=0.05,
                label_smoothing=0.1, augment=True),
    # DeiT's recipe in miniature (Touvron et al. 2021): the same ViT and training, with half of
    # the loss on the CNN teacher's top class for each augmented image (hard-label distillation).
    "vit_distilled": dict(model="vit", teacher="cifar_cnn", distillation="hard", epochs=30, lr=1e-3,
                          optimizer="adamw", batch_size=128, weight_decay=0.05, label_smoothing=0.1,
                          augment=True),
    # The character-level GPT (notebook 11): 9 epochs of 500 batches of 64 random 128-character windows
    # (37 M characters); AdamW, weight decay 0.1; 0.46 s a batch on 2 AMD EPYC cores; stored in float16.
    "char_gpt": dict(corpus="shakespeare", epochs=9, batches=500, batch_size=64, context=128, lr=1.5e-3,
                     optimizer="adamw", weight_decay=0.1, store="float16"),
}
# Test accuracy (%) each checkpoint must reach (a test checks it). The pruned and the Tucker-2
# CNN may lose at most 1.5 points against cifar_cnn, the combined pipeline's at most 2 and the
# Deep Compression LeNets at most 0.1 (what the notebooks promise of them). The L1 penalty
# costs the slim CNN about 2 points in 20 epochs (86.3% measured; Liu et al. lose none, but
# train 160 epochs). The MNIST students: floors a little under what they reached.
TARGETS = {"lenet300": 98.2, "lenet5": 99.1, "cifar_cnn": 88.0, "cifar_cnn_dws": 84.5, "cifar_cnn_slim": 86.0,
           "cifar_cnn_pruned": 86.8, "cifar_cnn_tucker": 86.8, "cifar_cnn_pruned_kd": 86.3, "mlp1200": 98.8, "mlp800": 98.5,
           "mlp800_kd": 98.7, "mlp800_kd_no3": 98.0, "lenet300_dc": 98.34, "lenet5_dc": 99.18, "vit": 78.0,
           "vit_distilled": 78.0, "char_gpt": 1.45}
# The language model is scored by its validation loss in nats per character: its target is a ceiling.


def check_checkpoint_name(name: str) -> str:
    if name not in RECIPES:
        raise ValueError(f"Unknown model {name!r}: the zoo has {list(RECIPES)}.")
    return name


def architecture(name: str) -> str:
    """The model family a checkpoint belongs to (``cifar_cnn_pruned`` -> ``cifar_cnn``)."""
    return RECIPES[check_checkpoint_name(name)].get("model", name)


def dataset_of(name: str) -> str:
    return DATASET_OF[architecture(name)]


def metric(name: str) -> str:
    """The manifest's name of a checkpoint's score: ``val_nats_per_char`` (the LM) or ``test_accuracy``."""
    return "val_nats_per_char" if dataset_of(name) in CORPORA else "test_accuracy"


def score(name: str, model: nn.Module) -> float:
    """The checkpoint's metric, measured: validation nats per character, or test accuracy (%)."""
    if metric(name) == "val_nats_per_char":
        return nats_per_char(model, load_text(dataset_of(name)), "val")
    return evaluate(model, load_dataset(dataset_of(name)).loader("test", EVAL_BATCH))["accuracy"]


def meets_target(name: str, value: float) -> bool:
    """Accuracy at least its target; nats per character at most its ceiling."""
    return value <= TARGETS[name] if metric(name) == "val_nats_per_char" else value >= TARGETS[name]


def describe(name: str, value: float) -> tuple[str, str]:
    """The score and its target as printed: ('98.21% test accuracy', '98.2%'), ('1.404 val nats/char', '<= 1.45')."""
    if metric(name) == "val_nats_per_char":
        return f"{value:.3f} val nats/char", f"<= {TARGETS[name]}"
    return f"{value:.2f}% test accuracy", f"{TARGETS[name]}%"


def label_of(name: str) -> str:
    """The data a checkpoint was scored on, as results name it."""
    return "Shakespeare's plays (Project Gutenberg)" if dataset_of(name) in CORPORA else dataset_label(dataset_of(name))


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


def build_architecture(name: str, options: dict) -> nn.Module:
    """An untrained model of the right shape for a checkpoint: ``build_model`` with the
    manifest's options, then Tucker-2 chains in place of the convs listed in ``tucker_ranks``."""
    options = dict(options)
    ranks = options.pop("tucker_ranks", None)
    model = build_model(architecture(name), **options)
    if ranks:  # imported here: loading the other checkpoints needs no compression technique
        from .factorization import tucker2_factorize
        model = tucker2_factorize(model, ranks={n: tuple(r) for n, r in ranks.items()}, inplace=True)
    return model


def load_pretrained(name: str, device: str | torch.device | None = None,
                    directory: Path = CHECKPOINT_DIR) -> nn.Module:
    """A checkpoint with its trained weights, in eval mode, on ``device`` (default: best available).

    The manifest records the architecture and its options (a pruned model's widths), so the
    right-sized model is built before the weights are loaded into it.
    """
    check_checkpoint_name(name)
    entry = read_manifest(directory).get(name)
    if entry is None:
        raise KeyError(f"The manifest in {directory} has no entry for {name!r}: "
                       f"retrain it with `python -m compresslab checkpoints retrain {name}`.")
    model = build_architecture(name, entry.get("options", {}))
    model.load_state_dict(load_state_dict(Path(directory) / entry["file"], entry["sha256"]))
    return model.to(get_device(device)).eval()


def train_checkpoint(name: str, seed: int = 0, device=None, progress: bool = True,
                     directory: Path = CHECKPOINT_DIR):
    """Make one checkpoint with its recipe, ``recipes.<name>``; return (model, history).

    A recipe that starts from or distils from another checkpoint reads it from ``directory``.
    """
    from . import recipes  # the compression techniques load only when something is trained

    make = recipes.BY_NAME[check_checkpoint_name(name)]
    recipe = RECIPES[name]
    if "start_from" in recipe or "teacher" in recipe:
        return make(seed=seed, device=device, progress=progress, directory=directory)
    return make(seed=seed, device=device, progress=progress)


def retrain(names=None, out_dir: Path = CHECKPOINT_DIR, force: bool = False, seed: int = 0,
            device=None, progress: bool = True) -> dict:
    """Retrain baselines, write ``<name>.pt`` and update the manifest in ``out_dir``."""
    names = list(names or RECIPES)
    out_dir = Path(out_dir)
    for name in names:
        check_checkpoint_name(name)
        if (out_dir / f"{name}.pt").exists() and not force:
            raise FileExistsError(f"{out_dir / f'{name}.pt'} exists; pass --force to replace it "
                                  "or --out DIR to write elsewhere.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir) if (out_dir / MANIFEST).exists() else {}
    for name in names:
        start = time.perf_counter()
        # A derived checkpoint starts from (or learns from) its base in out_dir if that was (re)trained there.
        base = RECIPES[name].get("start_from") or RECIPES[name].get("teacher")
        source = out_dir if base in manifest else CHECKPOINT_DIR
        model, history = train_checkpoint(name, seed, device, progress, source)
        seconds = time.perf_counter() - start
        model.to("cpu")
        state = stored_state(model, RECIPES[name].get("store", "float32"))
        if len(history) and state is None and "test_acc" in history:
            value = history["test_acc"].iloc[-1]  # fit evaluated the final model on the test set
        else:  # epochs=0, weights rounded for storage, or the language model: measure the file's weights
            model.load_state_dict(state or model.state_dict())
            value = score(name, model)
        path = out_dir / f"{name}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state or {k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        tmp.replace(path)
        manifest[name] = {
            "file": path.name, "sha256": sha256(path),
            metric(name): round(value, 2 if metric(name) == "test_accuracy" else 4),
            "model": architecture(name), "options": model_options(model, name),
            "dataset": dataset_of(name), "dataset_label": label_of(name), "seed": seed, "recipe": RECIPES[name],
            "train_seconds": round(seconds), "device": str(get_device(device)),
            "bf16_autocast": bf16_is_fast(get_device(device)), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
        }
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        write_readme(out_dir, manifest)
        print(f"{name}: {'{} (target {})'.format(*describe(name, value))}, "
              f"{seconds:.0f} s, sha256 {manifest[name]['sha256'][:12]}... -> {path}", flush=True)
    return manifest


def stored_state(model: nn.Module, store: str) -> dict | None:
    """The state_dict in float16 when the recipe says ``store="float16"`` (None: keep float32).

    Half the bytes keeps a large checkpoint (the 2.4 M-parameter MNIST teacher) small in git;
    ``load_state_dict`` casts it back into the float32 model, and the manifest's accuracy is
    measured on the rounded weights.
    """
    if store == "float32":
        return None
    if store != "float16":
        raise ValueError(f"Unknown store {store!r}: use 'float32' or 'float16'.")
    return {k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in model.state_dict().items()}


def model_options(model: nn.Module, name: str) -> dict:
    """What ``build_model`` needs besides the name to rebuild this model (a pruned CNN's widths)."""
    options = {}
    if architecture(name) == "cifar_cnn":
        blocks = {n: m for n, m in model.named_children() if isinstance(m, nn.Sequential)}  # Tucker-2 chains
        if blocks:
            options["tucker_ranks"] = {n: [b.core.out_channels, b.core.in_channels] for n, b in blocks.items()}
        widths = [b.last.out_channels if isinstance(b, nn.Sequential) else b.out_channels
                  for n, b in model.named_children() if n.startswith("conv")]
        if widths != [64, 64, 128, 128, 256, 256]:
            options["widths"] = widths
    if architecture(name) == "vit":  # heads and MLP neurons left in each block by pruning
        heads, mlp_dims = [b.attn.heads for b in model.blocks], [b.fc1.out_features for b in model.blocks]
        if heads != [6] * len(heads) or mlp_dims != [384] * len(mlp_dims):
            options.update(heads=heads, mlp_dims=mlp_dims)
    if architecture(name) == "char_gpt":  # the vocabulary is the corpus's set of characters
        options["vocab_size"] = model.tok.num_embeddings
    return options


def write_readme(out_dir: Path, manifest: dict) -> None:
    """``README.md`` beside the checkpoints, generated from the manifest (never typed by hand)."""
    lines = ["# Pretrained checkpoints", "",
             "Written by `python -m compresslab checkpoints retrain` from `manifest.json`; do not edit by hand.",
             "Each file is a plain `state_dict`, loaded with `torch.load(..., weights_only=True)`",
             "after its sha256 is checked against the manifest.", "",
             "| model | dataset | score | target | epochs | seed | wall time | device | threads | torch | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in manifest.items():
        label = e.get("dataset_label", e["dataset"])
        lines.append(f"| `{name}` | {label} | {' | '.join(describe(name, e[metric(name)]))} | "
                     f"{e['recipe']['epochs']} | {e['seed']} | {e['train_seconds'] / 60:.1f} min | "
                     f"{e['device']} | {e['cpu_threads']} | {e['torch']} | "
                     f"`python -m compresslab checkpoints retrain {name} --force --seed {e['seed']}` |")
    lines += ["", "Recipes (SGD with Nesterov momentum 0.9, one-cycle learning rate unless `schedule` says",
              "otherwise; bfloat16 autocast where the hardware runs it natively, see `bf16_autocast` in",
              "the manifest). `bn_l1`: network slimming's penalty, bn_l1 * sum |gamma| added to the loss;",
              "`start_from` + `prune_filters`: that fraction of every conv's filters (smallest L1 norm) removed",
              "from the trained checkpoint, which is then fine-tuned; `tucker`: every conv but the first",
              "Tucker-2-factorized at that fraction of its channels as ranks, then fine-tuned; `teacher` (+ `T`,",
              "`alpha`): trained with the distillation loss from that checkpoint, without class `drop_class` if",
              "given; `deep_compression`: Han et al.'s pruning in `rounds` rounds of `epochs` epochs, then k-means",
              "weight sharing (compresslab/deep_compression.py); `corpus`: the language model's text, read in",
              "`batches` random windows of `context` characters an epoch (compresslab/text.py):", ""]
    for name, e in manifest.items():
        lines.append(f"- `{name}`: {json.dumps(e['recipe'])}")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def verify(directory: Path = CHECKPOINT_DIR) -> bool:
    """Check every checkpoint's checksum and score (test accuracy, or the LM's nats); one line each."""
    ok = True
    for name in RECIPES:
        try:
            value = score(name, load_pretrained(name, "cpu", directory))
            good = meets_target(name, value)
            print(f"{'ok  ' if good else 'LOW '} {name}: {'{} (target {})'.format(*describe(name, value))}")
            ok &= good
        except Exception as e:
            print(f"FAIL {name}: {e}")
            ok = False
    return ok
