"""How each checkpoint of the model zoo was made: one plain function per checkpoint.

Each function is named after its checkpoint and reads top to bottom: the data, the model
(from scratch, or a trained checkpoint pruned or factorized), the loss, the training. It
returns ``(model, history)``, the trained model and ``fit``'s table of epochs (empty for
Deep Compression, which runs ``fit`` several times). ``python -m compresslab checkpoints
retrain NAME`` calls ``BY_NAME[NAME]`` and writes the model it returns (``zoo.retrain``).

Common arguments: ``seed`` (the model's initialization, the order of the batches, the
augmentations), ``device`` (default: best available), ``progress`` (a progress bar), and for
a recipe that starts from or learns from another checkpoint, ``directory``, where that
checkpoint is read from.

The settings here are the ones ``zoo.RECIPES`` records (the manifest copies them, the
notebooks print them); ``tests/test_recipes.py`` checks that each function trains with
exactly those. Unless a recipe says otherwise, ``fit`` trains with SGD, Nesterov momentum
0.9 and a one-cycle learning rate (``train.lr_at``).
"""
from __future__ import annotations

import pandas as pd
from torch import nn

from .data import EVAL_BATCH, load_dataset
from .deep_compression import HAN, prune_and_retrain, share_weights
from .distillation import distillation_loss_fn, hard_distillation_loss_fn
from .hinton import transfer_set_without
from .factorization import default_convs, tucker2_factorize
from .models import build_model
from .structured import bn_l1_penalty, prune_filters
from .text import lm_loss, load_text
from .train import bf16_is_fast, fit, get_device
from .zoo import CHECKPOINT_DIR, load_pretrained

CIFAR_SHAPE = (3, 32, 32)

# ---------------------------------------------------------------- the steps recipes share


def loaders(dataset: str, batch_size: int, augment: bool, seed: int):
    """The shuffled training loader (its own generator, seeded with ``seed``) and the test
    loader in batches of 1000."""
    ds = load_dataset(dataset)
    return ds.loader("train", batch_size, augment=augment, seed=seed), ds.loader("test", EVAL_BATCH)


def fit_checkpoint(name: str, model: nn.Module, train, test, epochs: int, lr: float, *,
                   seed: int, device, progress: bool, **options):
    """``fit`` as every recipe runs it: tested after each epoch, seeded with ``seed``,
    bfloat16 autocast where the hardware runs it natively, the progress bar named ``name``.
    ``options`` go to ``fit`` (weight_decay, label_smoothing, schedule, loss_fn)."""
    device = get_device(device)
    history = fit(model, train, epochs, lr, test_loader=test, seed=seed, device=device,
                  mixed_precision=bf16_is_fast(device), desc=name, progress=progress, **options)
    return model, history


def prune_every_conv(model: nn.Module, fraction: float) -> nn.Module:
    """L1-filter pruning (Li et al. 2017): ``fraction`` of the filters of every conv, those
    of smallest L1 norm, physically removed (and the next layer's matching inputs)."""
    convs = [n for n, m in model.named_children() if isinstance(m, nn.Conv2d)]
    return prune_filters(model, dict.fromkeys(convs, fraction), CIFAR_SHAPE)


def tucker2_every_conv(model: nn.Module, keep: float) -> nn.Module:
    """Tucker-2 (Kim et al. 2016): every conv but the first as 1x1 -> 3x3 core -> 1x1, with
    ranks ``keep`` x its output and input channels, initialized by 2 HOOI iterations."""
    ranks = {n: (max(1, round(keep * getattr(model, n).out_channels)),
                 max(1, round(keep * getattr(model, n).in_channels)))
             for n in default_convs(model)}
    return tucker2_factorize(model, ranks=ranks, n_iter=2)


def slimming_loss(lam: float, label_smoothing: float):
    """Network slimming's loss (Liu et al. 2017): cross-entropy + lam * sum |gamma| over
    every BatchNorm channel (``structured.bn_l1_penalty``)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_fn(model, x, y):
        return criterion(model(x), y) + lam * bn_l1_penalty(model)
    return loss_fn


def deep_compression(model: nn.Module, train, han: dict, rounds: int, epochs: int, lr: float,
                     weight_decay: float, seed: int, device):
    """Han et al. (2016), in place: prune to ``han["amounts"]`` in ``rounds`` rounds of
    ``epochs`` epochs of retraining, then k-means weight sharing at ``han["bits"]`` with the
    centroids fine-tuned for one epoch. Both stages read the same training loader."""
    device = get_device(device)
    prune_and_retrain(model, train, han["amounts"], rounds, epochs, lr, weight_decay, device=device, seed=seed)
    share_weights(model, train, han["bits"], device=device, seed=seed)
    return model.to(device), pd.DataFrame()  # no single fit: retrain measures the final model

# ---------------------------------------------------------------- trained from scratch


def lenet300(seed=0, device=None, progress=True):
    """LeNet-300-100 on MNIST: 20 epochs, lr 0.05, batch 128, weight decay 5e-4."""
    train, test = loaders("mnist", batch_size=128, augment=False, seed=seed)
    model = build_model("lenet300", seed=seed)
    return fit_checkpoint("lenet300", model, train, test, epochs=20, lr=0.05, weight_decay=5e-4,
                          seed=seed, device=device, progress=progress)


def lenet5(seed=0, device=None, progress=True):
    """LeNet-5 (Caffe's) on MNIST: 20 epochs, lr 0.05, batch 128, weight decay 5e-4."""
    train, test = loaders("mnist", batch_size=128, augment=False, seed=seed)
    model = build_model("lenet5", seed=seed)
    return fit_checkpoint("lenet5", model, train, test, epochs=20, lr=0.05, weight_decay=5e-4,
                          seed=seed, device=device, progress=progress)


def cifar_cnn(seed=0, device=None, progress=True):
    """The VGG-style CIFAR-10 CNN: 20 epochs, lr 0.2, batch 256, weight decay 5e-4, label
    smoothing 0.1, random crops and flips."""
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = build_model("cifar_cnn", seed=seed)
    return fit_checkpoint("cifar_cnn", model, train, test, epochs=20, lr=0.2, weight_decay=5e-4,
                          label_smoothing=0.1, seed=seed, device=device, progress=progress)


def cifar_cnn_dws(seed=0, device=None, progress=True):
    """The depthwise-separable CNN (notebook 06b's cross-layer equalization), trained like
    ``cifar_cnn``: 20 epochs, lr 0.2, batch 256, weight decay 5e-4, label smoothing 0.1."""
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = build_model("cifar_cnn_dws", seed=seed)
    return fit_checkpoint("cifar_cnn_dws", model, train, test, epochs=20, lr=0.2, weight_decay=5e-4,
                          label_smoothing=0.1, seed=seed, device=device, progress=progress)


def cifar_cnn_slim(seed=0, device=None, progress=True):
    """Network slimming (Liu et al. 2017, notebook 04): the cifar_cnn recipe with
    1.7e-3 * sum |gamma| added to the loss.

    Liu et al. train 160 epochs at batch 64 with lambda = 1e-4: the L1 term pulls every gamma
    by lambda * sum_t lr_t ~ 1e-4 * 6,600 ~ 0.66 in all. Our 20-epoch one-cycle run has
    sum_t lr_t ~ 390, so the same total pull takes lambda ~ 1.7e-3.
    """
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = build_model("cifar_cnn", seed=seed)
    loss_fn = slimming_loss(1.7e-3, label_smoothing=0.1)
    return fit_checkpoint("cifar_cnn_slim", model, train, test, epochs=20, lr=0.2, weight_decay=5e-4,
                          loss_fn=loss_fn, seed=seed, device=device, progress=progress)


def mlp1200(seed=0, device=None, progress=True):
    """Hinton et al.'s (2015) MNIST teacher (notebook 07): 784-1200-1200-10 with dropout 0.5,
    inputs jittered by up to 2 pixels (augment on MNIST: random crops, no flips); 30 epochs,
    lr 0.1, batch 128, weight decay 5e-4. Stored in float16 (same accuracy, half the bytes)."""
    train, test = loaders("mnist", batch_size=128, augment=True, seed=seed)
    model = build_model("mlp1200", seed=seed)
    return fit_checkpoint("mlp1200", model, train, test, epochs=30, lr=0.1, weight_decay=5e-4,
                          seed=seed, device=device, progress=progress)


def mlp800(seed=0, device=None, progress=True):
    """Hinton et al.'s student alone: 784-800-800-10 with no regularization at all (no
    dropout, no jitter, no weight decay); 20 epochs, lr 0.1, batch 128. Stored in float16."""
    train, test = loaders("mnist", batch_size=128, augment=False, seed=seed)
    model = build_model("mlp800", seed=seed)
    return fit_checkpoint("mlp800", model, train, test, epochs=20, lr=0.1, weight_decay=0.0,
                          seed=seed, device=device, progress=progress)

# ---------------------------------------------------------------- distilled from a checkpoint


def mlp800_kd(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """The mlp800 recipe "regularized solely by ... matching the soft targets produced by the
    large net at a temperature of 20" (Hinton et al. 2015): distilled from mlp1200, T = 20,
    alpha = 0.9. Stored in float16."""
    train, test = loaders("mnist", batch_size=128, augment=False, seed=seed)
    model = build_model("mlp800", seed=seed)
    teacher = load_pretrained("mlp1200", "cpu", directory)
    loss_fn = distillation_loss_fn(teacher, T=20, alpha=0.9)
    return fit_checkpoint("mlp800_kd", model, train, test, epochs=20, lr=0.1, weight_decay=0.0,
                          loss_fn=loss_fn, seed=seed, device=device, progress=progress)


def mlp800_kd_no3(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """mlp800_kd on a transfer set with every 3 removed: the student learns about 3s only
    from the teacher's soft targets on the other digits (Hinton et al. 2015)."""
    ds = load_dataset("mnist")
    train = transfer_set_without(ds, 3, batch_size=128, augment=False, seed=seed)
    test = ds.loader("test", EVAL_BATCH)
    model = build_model("mlp800", seed=seed)
    teacher = load_pretrained("mlp1200", "cpu", directory)
    loss_fn = distillation_loss_fn(teacher, T=20, alpha=0.9)
    return fit_checkpoint("mlp800_kd_no3", model, train, test, epochs=20, lr=0.1, weight_decay=0.0,
                          loss_fn=loss_fn, seed=seed, device=device, progress=progress)

# ---------------------------------------------------------------- compressed from a checkpoint


def cifar_cnn_pruned(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """L1-filter pruning (Li et al. 2017, notebook 02): 30% of the filters of every conv of
    the trained cifar_cnn removed (half the FLOPs), then fine-tuned on the full training set
    for 10 epochs, lr 0.05 with cosine decay, batch 256, weight decay 5e-4, label smoothing 0.1."""
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = prune_every_conv(load_pretrained("cifar_cnn", "cpu", directory), 0.3)
    return fit_checkpoint("cifar_cnn_pruned", model, train, test, epochs=10, lr=0.05, schedule="cosine",
                          weight_decay=5e-4, label_smoothing=0.1, seed=seed, device=device, progress=progress)


def cifar_cnn_pruned_kd(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """The combined pipeline (notebook 09): 40% of every conv's filters removed (L1 norm),
    about 2.8x fewer FLOPs, then the accuracy recovered by distillation from the unpruned
    cifar_cnn (T = 4, alpha = 0.9): 8 epochs, lr 0.05 with cosine decay, batch 256, weight
    decay 5e-4. (Half of the filters, 8 epochs: 86.22%, 2.1 points lost.)"""
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = prune_every_conv(load_pretrained("cifar_cnn", "cpu", directory), 0.4)
    teacher = load_pretrained("cifar_cnn", "cpu", directory)
    loss_fn = distillation_loss_fn(teacher, T=4, alpha=0.9)
    return fit_checkpoint("cifar_cnn_pruned_kd", model, train, test, epochs=8, lr=0.05, schedule="cosine",
                          weight_decay=5e-4, loss_fn=loss_fn, seed=seed, device=device, progress=progress)


def cifar_cnn_tucker(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """Tucker-2 (Kim et al. 2016, notebook 08): every conv but the first as 1x1 -> 3x3 core ->
    1x1 at half its channels as ranks (2.5x fewer FLOPs), initialized from the trained
    cifar_cnn's HOOI factors, then fine-tuned: 6 epochs, lr 0.02 with cosine decay, batch 256,
    weight decay 5e-4, label smoothing 0.1."""
    train, test = loaders("cifar10", batch_size=256, augment=True, seed=seed)
    model = tucker2_every_conv(load_pretrained("cifar_cnn", "cpu", directory), 0.5)
    return fit_checkpoint("cifar_cnn_tucker", model, train, test, epochs=6, lr=0.02, schedule="cosine",
                          weight_decay=5e-4, label_smoothing=0.1, seed=seed, device=device, progress=progress)


def lenet300_dc(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """Deep Compression (Han et al. 2016, notebook 09) of the trained lenet300: the paper's
    per-layer pruning (``deep_compression.HAN``) in 4 rounds of 3 epochs, lr 0.01, weight
    decay 5e-4, batch 128; then k-means sharing at the paper's bits. (No progress bar.)"""
    train = load_dataset("mnist").loader("train", 128, augment=False, seed=seed)
    model = load_pretrained("lenet300", "cpu", directory)
    return deep_compression(model, train, HAN["lenet300"], rounds=4, epochs=3, lr=0.01, weight_decay=5e-4,
                            seed=seed, device=device)


def lenet5_dc(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """Deep Compression of the trained lenet5: the paper's per-layer pruning in 3 rounds of 2
    epochs, lr 0.01, no weight decay, batch 128; then k-means sharing at the paper's bits
    (8 for the convs, 5 for the fully connected layers)."""
    train = load_dataset("mnist").loader("train", 128, augment=False, seed=seed)
    model = load_pretrained("lenet5", "cpu", directory)
    return deep_compression(model, train, HAN["lenet5"], rounds=3, epochs=2, lr=0.01, weight_decay=0.0,
                            seed=seed, device=device)


def vit(seed=0, device=None, progress=True):
    """The CIFAR-10 vision transformer: 30 epochs of AdamW, lr 1e-3 (one-cycle), batch 128,
    weight decay 0.05, label smoothing 0.1, random crops and flips."""
    train, test = loaders("cifar10", batch_size=128, augment=True, seed=seed)
    model = build_model("vit", seed=seed)
    return fit_checkpoint("vit", model, train, test, epochs=30, lr=1e-3, optimizer="adamw", weight_decay=0.05,
                          label_smoothing=0.1, seed=seed, device=device, progress=progress)


def vit_distilled(seed=0, device=None, progress=True, directory=CHECKPOINT_DIR):
    """DeiT-style (Touvron et al. 2021): the ``vit`` recipe, with half of the loss on the
    trained cifar_cnn's top class for each augmented image (hard-label distillation)."""
    train, test = loaders("cifar10", batch_size=128, augment=True, seed=seed)
    model = build_model("vit", seed=seed)
    loss_fn = hard_distillation_loss_fn(load_pretrained("cifar_cnn", "cpu", directory), label_smoothing=0.1)
    return fit_checkpoint("vit_distilled", model, train, test, epochs=30, lr=1e-3, optimizer="adamw",
                          weight_decay=0.05, loss_fn=loss_fn, seed=seed, device=device, progress=progress)


def char_gpt(seed=0, device=None, progress=True):
    """The character-level GPT on Shakespeare's plays: 9 epochs of 500 batches of 64 random
    windows of 128 characters, next-character cross-entropy, AdamW, lr 1.5e-3 (one-cycle),
    weight decay 0.1. No test loader: the score is the validation loss, measured afterwards."""
    corpus = load_text("shakespeare")
    train = corpus.loader("train", batch_size=64, context=128, batches=500, seed=seed)
    model = build_model("char_gpt", seed=seed, vocab_size=corpus.vocab_size, context=128)
    return fit_checkpoint("char_gpt", model, train, None, epochs=9, lr=1.5e-3, optimizer="adamw",
                          weight_decay=0.1, loss_fn=lm_loss, seed=seed, device=device, progress=progress)


# Checkpoint name -> the function that makes it (what `checkpoints retrain NAME` calls).
BY_NAME = {f.__name__: f for f in (lenet300, lenet5, cifar_cnn, cifar_cnn_dws, cifar_cnn_pruned, cifar_cnn_slim, mlp1200,
                                   mlp800, mlp800_kd, mlp800_kd_no3, cifar_cnn_tucker, cifar_cnn_pruned_kd,
                                   lenet300_dc, lenet5_dc, vit, vit_distilled, char_gpt)}
