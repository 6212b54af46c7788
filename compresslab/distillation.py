"""Knowledge distillation: a small student learns from a big teacher's outputs and features.

(About 400 lines on purpose: its three parts, the loss, the feature hints and the teacher
computed once, are read in order in notebook 07, and ``distillation_loss_fn`` joins all three;
DeiT's hard-label loss, used for notebook 10's ViT, sits next to the soft one.)

**Soft targets** (Hinton, Vinyals & Dean 2015). A softmax at temperature T,

    p_i(z; T) = exp(z_i / T) / sum_j exp(z_j / T),

spreads a confident teacher's probability mass over the wrong classes too: a "2" that looks a
bit like a "3" and a bit like a "7" says so at T = 4 or 20, while at T = 1 it is just a "2".
That relative mass on the wrong classes is the "dark knowledge" a student learns from.

**The distillation loss** mixes matching those soft targets with the usual hard labels:

    L = alpha * T^2 * KL(p(z_t; T) || p(z_s; T)) + (1 - alpha) * CE(z_s, y)

The gradient of KL(p_t || p_s) with respect to a student logit is (p_s - p_t) / T per sample;
for logits small against T that is about (z_s - z_t) / (K T^2) (K classes, zero-mean logits).
Multiplying by T^2 makes the soft term's gradient T (p_s - p_t) ~ (z_s - z_t) / K, the same
whatever T is: alpha then means the same thing at T = 2 and at T = 20.

**Feature (hint) losses.** The teacher can also pass on an intermediate representation:

* FitNets (Romero et al. 2015): MSE between the student's hint layer, mapped by a small learned
  *projection* (a 1x1 conv or a linear layer) to the teacher's width, and the teacher's;
* cosine: 1 - cos(student features, teacher features), per sample, as in PyTorch's
  knowledge-distillation tutorial; it ignores the features' scale.

Features are read with forward hooks (``feature_hooks``): the models stay as they are.
``distillation_loss_fn`` puts it all together for ``compresslab.train.fit(..., loss_fn=...)``.

Hinton et al.'s MNIST experiments (dark knowledge, the missing 3s) are in :mod:`compresslab.hinton`.

Production tools: the loss is five lines in any framework; torchdistill and
Intel's Neural Compressor package these losses with configuration files.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .data import epoch_generator, random_crop_flip
from .train import autocast, bf16_is_fast, get_device, model_device, predict

FEATURE_LOSSES = ("mse", "cosine")
# The temperatures accepted: far below 0.01, z / T overflows float32; above 100, the float32
# rounding error of the KL term, times T^2, rivals the KD loss itself (and from T ~ 1e19 it is NaN).
# Hinton et al. use T between 2 and 20.
TEMPERATURES = (0.01, 100.0)

# ---------------------------------------------------------------- checks


def check_temperature(T: float) -> float:
    low, high = TEMPERATURES
    return checks.number(T, "The temperature T", low, high, example=4,
                         must=f"be a positive number between {low:g} and {high:g}",
                         hint="(T = 1 is the ordinary softmax; Hinton et al. use T between 2 and 20.)")


def check_alpha(alpha: float) -> float:
    return checks.fraction(alpha, "alpha (the weight of the soft targets against the labels)",
                           must="lie in [0, 1]", example=0.9,
                           hint="(alpha = 0: labels only; alpha = 1: teacher only.)")


def check_same_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    s, t = student_logits.shape[-1], teacher_logits.shape[-1]
    if s != t:
        raise ValueError(f"The student has {s} outputs (classes) but the teacher has {t}: "
                         "distillation compares the two distributions class by class, so both "
                         "models must predict the same classes (give the student a last layer "
                         f"with {t} outputs).")


def check_batch(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Logits of shape (N, C), the same for both models, N >= 1; labels: N class indices in [0, C)."""
    for t, name in ((student_logits, "student_logits"), (teacher_logits, "teacher_logits"), (labels, "labels")):
        checks.tensor(t, name)
    check_same_classes(student_logits, teacher_logits)
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape or len(student_logits) == 0:
        raise ValueError(f"kd_loss needs student and teacher logits of one shape (batch, classes) with at "
                         f"least one sample, e.g. (256, 10); got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
    n, c = student_logits.shape
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be {n} integer class indices, shape ({n},), got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}.")
    if ((labels < 0) | (labels >= c)).any():
        raise ValueError(f"labels must be class indices in [0, {c - 1}], got values from "
                         f"{int(labels.min())} to {int(labels.max())}.")

def check_class(cls, n: int, where: str = "the model") -> int:
    """A class index in [0, n)."""
    must = f"be a class index in [0, {n - 1}]"
    checks.integer(cls, "cls", must=must, example=3)
    if not 0 <= cls < n:
        raise ValueError(f"Class {cls} does not exist: {where} has {n} classes; cls must {must}, e.g. 3.")
    return int(cls)

# ---------------------------------------------------------------- 1. soft targets and the KD loss


def soft_targets(logits: torch.Tensor, T: float) -> torch.Tensor:
    """softmax(z / T) over the classes: T = 1 is the usual softmax, larger T is softer."""
    return F.softmax(logits.float() / check_temperature(T), dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y).

    KL is summed over the classes and averaged over the batch ("batchmean": the true KL per
    sample); it is zero when the student's logits equal the teacher's. alpha = 0 gives plain
    cross-entropy; alpha = 1 learns from the teacher alone (no labels needed).
    """
    T, alpha = check_temperature(T), check_alpha(alpha)
    check_batch(student_logits, teacher_logits, labels)
    s, t = student_logits.float(), teacher_logits.detach().float()  # float32 even under autocast
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, labels)
    return alpha * T * T * soft + (1 - alpha) * hard

# ---------------------------------------------------------------- 2. features: hooks and hint losses


@contextlib.contextmanager
def feature_hooks(model: nn.Module, layer_names: Iterable[str]):
    """Capture the outputs of named layers during forward passes inside the ``with`` block.

    >>> with feature_hooks(model, ["relu4"]) as feats:
    ...     logits = model(x)
    >>> feats["relu4"].shape

    The hooks are removed on leaving the block, even after an error; the captured tensors keep
    their autograd graph, so a loss on them trains the layers that produced them.
    """
    names = list(layer_names)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or n == ""]
    if missing:
        raise ValueError(f"The model has no layer(s) {missing}; its layers are "
                         f"{[n for n in modules if n]}.")
    feats: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(
        lambda module, inputs, output, n=n: feats.__setitem__(n, output)) for n in names]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def hint_projection(student_shape, teacher_shape) -> nn.Module:
    """FitNets' regressor from the student's feature width to the teacher's.

    (N, C_s, H, W) -> 1x1 conv C_s -> C_t;  (N, C_s) -> linear C_s -> C_t. The spatial size
    must already agree: hook layers at the same resolution in both networks.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t) or len(s) not in (2, 4) or s[2:] != t[2:]:
        raise ValueError(f"Cannot map student features of shape {s} onto teacher features of "
                         f"shape {t}: hook layers with the same kind of output (both (N, C) or "
                         "both (N, C, H, W)) and, for images, the same resolution.")
    if len(s) == 4:
        return nn.Conv2d(s[1], t[1], kernel_size=1, bias=False)
    return nn.Linear(s[1], t[1], bias=False)


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets: mean squared error (1/n) ||r(f_s) - f_t||^2 between the (projected) student
    features and the teacher's."""
    check_feature_shapes(student_feat, teacher_feat)
    return F.mse_loss(student_feat.float(), teacher_feat.detach().float())


def cosine_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cos(f_s, f_t), each sample's features flattened to a vector:
    0 when they point the same way, whatever their lengths (PyTorch's KD tutorial uses
    ``nn.CosineEmbeddingLoss`` with target 1, which is the same)."""
    check_feature_shapes(student_feat, teacher_feat)
    s, t = student_feat.flatten(1).float(), teacher_feat.detach().flatten(1).float()
    return (1 - F.cosine_similarity(s, t, dim=1)).mean()


def check_feature_shapes(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> None:
    checks.tensor(student_feat, "student_feat")
    checks.tensor(teacher_feat, "teacher_feat")
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"Student features {tuple(student_feat.shape)} and teacher features "
                         f"{tuple(teacher_feat.shape)} differ in shape: train a projection "
                         "(with_hint_projection) or hook layers of the same width.")


class HintStudent(nn.Module):
    """A student plus the FitNets projection of its hint layer, trained together by ``fit``.

    ``fit`` builds its optimizer from ``model.parameters()``: passing this wrapper gives it the
    projection's weights as well as the student's. (Attaching the projection to an
    ``nn.Sequential`` student instead would append it to the forward pass.) Its forward is
    the student's, so ``fit``'s test accuracy is the student's; after training keep
    ``.student`` and drop the projection, which is needed only for the loss.
    """

    def __init__(self, student: nn.Module, projection: nn.Module):
        super().__init__()
        self.student, self.projection = student, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def with_hint_projection(student: nn.Module, teacher: nn.Module, student_layer: str,
                         teacher_layer: str, example_input: torch.Tensor, seed: int = 0) -> HintStudent:
    """Wrap ``student`` with a projection from its ``student_layer`` to ``teacher_layer``'s width.

    One forward pass of both models on (the first two samples of) ``example_input``, a batch
    of the data, reads the two feature shapes; where they already agree the projection is the
    identity.
    """
    shapes = []
    for model, layer in ((student, student_layer), (teacher, teacher_layer)):
        was_training = model.training
        model.eval()
        with torch.no_grad(), feature_hooks(model, [layer]) as feats:
            model(example_input[:2].to(model_device(model)))
        model.train(was_training)
        shapes.append(feats[layer].shape)
    if shapes[0] == shapes[1]:
        projection = nn.Identity()
    else:
        with torch.random.fork_rng(devices=[]):  # a repeatable init without reseeding the caller
            torch.manual_seed(seed)
            projection = hint_projection(*shapes)
    return HintStudent(student, projection.to(model_device(student)))


def distillation_loss_fn(teacher, T: float = 4.0, alpha: float = 0.9, *,
                         hint: tuple[str, str] | None = None, beta: float = 1.0,
                         feature_loss: str = "mse"):
    """A ``loss_fn(model, x, y)`` for ``fit``: the KD loss, plus beta * a feature loss.

    loss = kd_loss(z_s, z_t, y, T, alpha) + beta * feature_loss(r(f_s), f_t)

    * logit KD only: ``hint=None`` (the default);
    * feature KD only: ``alpha=0`` (labels + features) and ``hint=("relu4", "relu4")``;
    * both: ``alpha > 0`` and a ``hint``.

    ``hint = (student_layer, teacher_layer)`` names the layers whose outputs are compared with
    ``feature_loss`` ("mse": FitNets, or "cosine"). When their widths differ, train a
    ``with_hint_projection(student, ...)`` wrapper with ``fit``; ``model.projection`` is then
    used as r. ``teacher`` is a model, run in eval mode without gradients on the student's
    device (moved there at the first batch), or a ``CachedTeacher`` whose outputs were
    computed once.
    """
    T, alpha = check_temperature(T), check_alpha(alpha)
    checks.one_of(feature_loss, "feature_loss", FEATURE_LOSSES, "(Unknown feature loss.)")
    checks.number(beta, "beta (the weight of the feature loss)", 0, math.inf, high_open=True,
                  must="be a finite number >= 0", example=1.0)
    if hint is not None:
        must = "be a pair of layer names (student_layer, teacher_layer)"
        if isinstance(hint, str) or not isinstance(hint, (tuple, list)) or not all(isinstance(n, str) for n in hint):
            raise TypeError(checks.message("hint", must, hint, '("relu4", "relu4")'))
        if len(hint) != 2:
            raise ValueError(checks.message("hint", must, hint, '("relu4", "relu4")'))
    if isinstance(teacher, CachedTeacher) and hint and hint[1] != teacher.hint_layer:
        raise ValueError(f"The cached teacher holds the features of layer {teacher.hint_layer!r}, "
                         f"not {hint[1]!r}: build it with hint_layer={hint[1]!r}.")
    compare = hint_loss if feature_loss == "mse" else cosine_loss

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_logits=None,
                teacher_feat=None) -> torch.Tensor:
        student, projection = ((model.student, model.projection) if isinstance(model, HintStudent)
                               else (model, nn.Identity()))
        if isinstance(teacher, CachedTeacher):  # its loader's batches carry the teacher's outputs
            if teacher_logits is None:
                raise ValueError("A CachedTeacher's outputs come with its own batches: train on "
                                 "cache.loader(...), whose batches are (x, y, teacher_logits, teacher_features).")
        else:
            teacher_logits, teacher_feat = teacher_outputs(teacher, x, hint and hint[1])
        with feature_hooks(student, [hint[0]] if hint else []) as s_feats:
            student_logits = student(x)
        loss = kd_loss(student_logits, teacher_logits, y, T, alpha)
        if hint:
            loss = loss + beta * compare(projection(s_feats[hint[0]]), teacher_feat)
        return loss

    return loss_fn


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: torch.Tensor, layer: str | None = None):
    """(logits, features of ``layer`` or None) of the teacher on a batch, without gradients."""
    if model_device(teacher) != x.device:
        teacher.to(x.device)
    teacher.eval()  # in case something switched it to training mode (dropout, BatchNorm)
    with feature_hooks(teacher, [layer] if layer else []) as feats:
        logits = teacher(x)
    return logits, feats.get(layer)


def hard_distillation_loss_fn(teacher: nn.Module, label_smoothing: float = 0.1):
    """DeiT's hard-label distillation (Touvron et al. 2021) as a ``loss_fn`` for ``fit``:

    loss = 1/2 CE(z_s, y) + 1/2 CE(z_s, argmax z_t)

    The teacher's top class on the very same (augmented) image is a second label; unlike the
    true one it follows the crop (a crop that lost the object gets the teacher's best guess).
    Label smoothing applies to the true label only, as in DeiT."""
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        teacher_labels = teacher_outputs(teacher, x)[0].argmax(1)
        z = model(x)
        return 0.5 * (F.cross_entropy(z, y, label_smoothing=label_smoothing) + F.cross_entropy(z, teacher_labels))
    return loss_fn

# ---------------------------------------------------------------- 3. a teacher computed once


class CachedTeacher:
    """A teacher's logits (and hint features) on ``epochs`` augmented copies of a training
    set, computed once; its ``loader`` serves one copy per epoch to ``fit``.

    Distillation runs the teacher forward on every training batch. When many students learn
    from one teacher (several seeds, several losses), that forward pass is the same work
    every time: on a 2-core CPU it costs as much as training a thin student. Here each epoch's
    augmented images (random crop + flip) are drawn once and the teacher's outputs stored
    beside them, so every student sees the very same images as its teacher did
    ("consistent teaching", Beyer et al. 2022) and no teacher runs during training. The cost
    is memory: ``epochs`` copies of the images plus float16 logits and features. With
    ``augment=False`` the images are used as they are (one copy, ``epochs=1``, is enough).

    **How a batch gets its teacher outputs.** They travel with it: ``loader`` yields
    ``(x, y, teacher_logits, teacher_features)`` (features None without a ``hint_layer``), and
    ``fit`` hands the extras to ``loss_fn(model, x, y, teacher_logits, teacher_features)``. No
    state is shared between the loader and the loss, so a loader that prefetches batches ahead
    cannot pair one batch with another's outputs.
    """

    def __init__(self, teacher: nn.Module, ds, epochs: int, hint_layer: str | None = None,
                 batch_size: int = 500, seed: int = 0, device=None, augment: bool = True):
        checks.integer(epochs, "epochs", 1, must="be at least 1", example=10)
        device = get_device(device)
        cifar = ds.name == "cifar10"
        g = torch.Generator().manual_seed(seed)
        self.ds, self.hint_layer, self.y = ds, hint_layer, ds.y_train
        # augment=False: the training images as they are (one copy is then all a student needs)
        self.images = [random_crop_flip(ds.x_train, 4 if cifar else 2, cifar, g) if augment else ds.x_train
                       for _ in range(epochs)]
        self.logits, self.features = [], []
        teacher.to(device).eval()
        nhwc = any(isinstance(m, nn.Conv2d) for m in teacher.modules())  # oneDNN's fast layout
        if nhwc:
            teacher.to(memory_format=torch.channels_last)
        for images in self.images:
            logits, feats = [], []
            for start in range(0, len(images), batch_size):
                x = ds.normalize(images[start:start + batch_size]).to(device)
                if nhwc:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, bf16_is_fast(device)):
                    z, f = teacher_outputs(teacher, x, hint_layer)
                logits.append(z.half().cpu())
                if hint_layer:
                    feats.append(f.half().cpu())
            self.logits.append(torch.cat(logits))
            self.features.append(torch.cat(feats).contiguous() if hint_layer else None)
        if nhwc:
            teacher.to(memory_format=torch.contiguous_format)

    def loader(self, batch_size: int = 256, seed: int = 0, device="cpu"):
        return _CachedLoader(self, batch_size, seed, torch.device(device))

    def accuracy(self) -> float:
        """The teacher's accuracy (%) on its own augmented copies: how good its targets are."""
        return 100.0 * float(torch.cat([(z.argmax(1) == self.y).float() for z in self.logits]).mean())


class _CachedLoader:
    """Epoch e of ``fit`` gets augmented copy e % epochs, in the order (seed, e) draws."""

    def __init__(self, cache: CachedTeacher, batch_size: int, seed: int, device: torch.device):
        self.cache, self.batch_size, self.device = cache, batch_size, device
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.cache.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        c, e = self.cache, self.epoch % len(self.cache.images)
        self.epoch += 1
        order = torch.randperm(len(c.y), generator=epoch_generator(self.seed, self.epoch - 1))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            feats = None if c.features[e] is None else c.features[e][idx]
            x, y = c.ds.normalize(c.images[e][idx]).to(self.device), c.y[idx].to(self.device)
            logits = c.logits[e][idx].to(self.device).float()
            yield x, y, logits, None if feats is None else feats.to(self.device).float()
