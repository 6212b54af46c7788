"""Hinton, Vinyals & Dean (2015)'s MNIST experiments: dark knowledge and the missing 3s.

* **Dark knowledge.** Averaged per true class, a teacher's soft targets say which classes it finds
  alike: ``class_similarity``, a K x K matrix whose off-diagonal mass is what a student learns.
* **The missing 3s.** A student distilled on a transfer set with no 3 at all
  (``transfer_set_without``) still recognises most 3s, from the soft targets on other digits;
  raising the bias of class 3 by the right amount (``raise_class_bias``, chosen with
  ``best_bias_delta`` on training data) recovers most of the rest.

The losses themselves live in :mod:`compresslab.distillation`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .distillation import check_class, soft_targets
from .train import predict


def class_similarity(logits: torch.Tensor, labels: torch.Tensor, T: float = 4.0,
                     num_classes: int | None = None) -> torch.Tensor:
    """Row c: the mean of softmax(z / T) over the samples whose true class is c.

    The off-diagonal entries are the dark knowledge: which classes the teacher finds alike
    (on MNIST, 4 and 9, 3 and 5, 7 and 9). Get the logits with ``train.predict(teacher, loader)``.
    """
    p = soft_targets(logits, T)
    k = num_classes or p.shape[1]
    labels = labels.to(p.device)
    sums = torch.zeros(k, p.shape[1], device=p.device).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=k).clamp(min=1).unsqueeze(1)
    return sums / counts


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a model: the layer whose bias shifts the logits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("The model has no nn.Linear layer whose bias could be raised.")
    return linears[-1]


def raise_class_bias(model: nn.Module, cls: int, delta: float) -> nn.Module:
    """Add ``delta`` to the final layer's bias of class ``cls`` (in place): z_cls -> z_cls + delta.

    Hinton et al.'s fix for a student that never saw a "3" in its transfer set: it learned
    what 3s look like from the soft targets, but too little prior for the class itself.
    """
    fc = final_linear(model)
    if fc.bias is None:
        raise ValueError("The final linear layer has no bias to raise; build it with bias=True.")
    cls = check_class(cls, fc.out_features)
    with torch.no_grad():
        fc.bias[cls] += delta
    return model


def bias_sweep(model: nn.Module, loader, cls: int, deltas=None) -> pd.DataFrame:
    """Accuracy (overall and on class ``cls``) for each bias increase delta, on a loader.

    Adding delta to a bias adds delta to that logit, so one pass of ``predict`` serves every
    delta. One row per delta: delta, accuracy, class_accuracy, errors, class_errors.
    """
    deltas = np.arange(0, 10.01, 0.25) if deltas is None else deltas
    logits, labels = predict(model, loader)
    cls = check_class(cls, logits.shape[1])
    is_cls, rows = labels == cls, []
    for d in deltas:
        shifted = logits.clone()
        shifted[:, cls] += float(d)
        right = shifted.argmax(1) == labels
        rows.append({"delta": float(d), "accuracy": 100.0 * right.float().mean().item(),
                     "class_accuracy": 100.0 * right[is_cls].float().mean().item() if is_cls.any() else float("nan"),
                     "errors": int((~right).sum()), "class_errors": int((~right & is_cls).sum())})
    return pd.DataFrame(rows)


def best_bias_delta(model: nn.Module, loader, cls: int, deltas=None) -> float:
    """The delta of ``bias_sweep`` with the highest overall accuracy (the smallest on ties).

    Choose it on a validation loader, not on the test set you report (Hinton et al. picked
    theirs, 3.5, on the test set).
    """
    table = bias_sweep(model, loader, cls, deltas)
    return float(table.loc[table["accuracy"].idxmax(), "delta"])


def transfer_set_without(ds, cls: int, batch_size: int = 128, augment: bool = False,
                         seed: int = 0, device="cpu"):
    """A training loader of ``ds`` with every sample of class ``cls`` left out.

    The "missing 3s" experiment: the student never sees a 3, and learns about them only
    through the teacher's soft targets on the other digits.
    """
    from .data import Loader

    cls = check_class(cls, len(ds.classes), ds.name)
    keep = ds.y_train != cls
    return Loader(ds, ds.x_train[keep], ds.y_train[keep], batch_size, True, augment, seed, device)
