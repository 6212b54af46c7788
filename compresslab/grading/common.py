"""What every exercise checker shares: read the answer, refuse the wrong *kind* of answer with a
sentence that says what was expected, and score a model on the validation split.

The rules every checker in :mod:`compresslab.grading` follows:

* It takes the student's answer (a number, a tensor, a model, a plan, a function) and whatever
  context the notebook holds, and compares with a reference computed *inside* the package.
* It raises ``AssertionError`` with a hint on the first thing that is wrong, and never prints the
  reference value ("your threshold removes 71% of the weights, 70% was asked" is a hint; "the
  answer is 0.4312" is not). It returns a one-line report when everything holds.
* The untouched stub fails: a value left at ``None`` (tests feed ``None`` for a value the student
  never set), a function that still raises ``NotImplementedError``.
* The wrong type or shape is an ``AssertionError`` that names what was expected, never a torch
  traceback from deep inside the check.
* Design tasks are scored on the *validation* split (``Dataset.loader("val")``: training images the
  test set never sees), never on the test set.
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers

import torch
from torch import nn


def expect(condition, hint: str) -> None:
    """``assert`` that survives ``python -O`` and always carries its hint."""
    if not condition:
        raise AssertionError(hint)


def answered(value, what: str):
    """The answer itself, or a hint that there is none yet (``None``, ``...``)."""
    expect(value is not None and value is not Ellipsis and value is not NotImplemented,
           f"`{what}` has no answer yet: replace the stub by your code.")
    return value


def number(value, what: str) -> float:
    """A finite real number (a one-element tensor or a NumPy scalar is fine; a bool is not)."""
    answered(value, what)
    if isinstance(value, torch.Tensor):
        expect(value.numel() == 1, f"`{what}` should be one number, got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    expect(isinstance(value, numbers.Real) and not isinstance(value, bool),
           f"`{what}` should be a number, got a {type(value).__name__}.")
    expect(math.isfinite(value), f"`{what}` is {value}: it should be a finite number.")
    return float(value)


def whole(value, what: str) -> int:
    """A count: a whole number (a float such as 12.0 is accepted, 12.5 is not)."""
    x = number(value, what)
    expect(x == int(x), f"`{what}` is a count, a whole number; got {x:g}.")
    return int(x)


def fraction(value, what: str) -> float:
    """A number in [0, 1]; a percentage (70 for 70%) gets its own hint."""
    x = number(value, what)
    expect(not 1 < x <= 100, f"`{what}` = {x:g} looks like a percentage: give a fraction in [0, 1].")
    expect(0 <= x <= 1, f"`{what}` should be a fraction in [0, 1], got {x:g}.")
    return x


def tensor(value, what: str, shape: tuple | None = None, floating: bool | None = None) -> torch.Tensor:
    """A torch.Tensor, of the given shape; ``floating`` asks for a float (True) or an integer /
    bool (False) dtype."""
    answered(value, what)
    expect(isinstance(value, torch.Tensor),
           f"`{what}` should be a torch.Tensor, got a {type(value).__name__}"
           + (" (wrap it in torch.as_tensor(...))." if isinstance(value, (list, tuple)) or
              type(value).__module__ == "numpy" else "."))
    if shape is not None:
        expect(tuple(value.shape) == tuple(shape),
               f"`{what}` has shape {tuple(value.shape)}; expected {tuple(shape)}.")
    if floating is True:
        expect(value.dtype.is_floating_point, f"`{what}` should hold floats, got {value.dtype}.")
    if floating is False:
        expect(not value.dtype.is_floating_point, f"`{what}` should hold integers or bools, got {value.dtype}.")
    return value


def module(value, what: str, kind: type = nn.Module) -> nn.Module:
    """A model (an ``nn.Module``, or the given subclass), not a tensor or a state_dict."""
    answered(value, what)
    hint = " (a state_dict? load it into a model first)" if isinstance(value, dict) else ""
    expect(isinstance(value, kind), f"`{what}` should be a {kind.__name__}, got a {type(value).__name__}{hint}.")
    return value


def mapping(value, what: str, keys, example: str = "") -> dict:
    """A dict with exactly the given keys (e.g. one entry per layer)."""
    answered(value, what)
    keys = list(keys)
    expect(isinstance(value, dict), f"`{what}` should be a dict {example or 'keyed by ' + ', '.join(map(repr, keys))}, "
                                    f"got a {type(value).__name__}.")
    missing, extra = [k for k in keys if k not in value], [k for k in value if k not in keys]
    expect(not missing, f"`{what}` has no entry for {missing}: it needs one for each of {keys}.")
    expect(not extra, f"`{what}` has entries {extra} that are not among {keys}.")
    return value


def call(fn, what: str, *args, **kwargs):
    """Run the student's function; its NotImplementedError or its exception becomes a hint."""
    answered(fn, what)
    expect(callable(fn), f"`{what}` should be a function, got a {type(fn).__name__}.")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"`{what}` still raises NotImplementedError: write its body first.") from None
    except Exception as e:  # the student's bug, told in one line instead of a traceback through the check
        raise AssertionError(f"`{what}` raised {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def switched_off(owner, names, hint: str):
    """``owner.<name>`` raises ``hint`` while the student's function runs: the package's version of
    the exercise cannot be the answer. Restored afterwards, whatever happens."""
    saved = {name: getattr(owner, name) for name in names}

    def refuse(*args, **kwargs):
        raise AssertionError(hint)
    try:
        for name in names:
            setattr(owner, name, refuse)
        yield
    finally:
        for name, f in saved.items():
            setattr(owner, name, f)


@functools.lru_cache(maxsize=None)
def dataset(name: str):
    from ..data import load_dataset
    return load_dataset(name)


def val_accuracy(model: nn.Module, dataset_name: str, n: int | None = None) -> float:
    """Accuracy in % on the validation split (``n`` class-balanced images; 5,000 by default),
    the split a design task is scored on: never the test set."""
    from ..data import EVAL_BATCH
    from ..train import evaluate
    module(model, "model")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    loader = dataset(dataset_name).loader("val", batch_size=EVAL_BATCH, subset=n, device=device)
    try:
        return evaluate(model, loader)["accuracy"]
    except Exception as e:
        raise AssertionError(f"Your model does not run on {dataset_name} images "
                             f"({type(e).__name__}: {e}).") from None


@functools.lru_cache(maxsize=None)
def pretrained_val_accuracy(name: str, n: int | None = None) -> float:
    """The zoo model's own validation accuracy, the level a design task's drop is measured from."""
    from ..zoo import dataset_of, load_pretrained
    return val_accuracy(load_pretrained(name, "cpu"), dataset_of(name), n)
__all__ = ["expect", "answered", "number", "whole", "fraction", "tensor", "module", "mapping", "call", "switched_off", "val_accuracy", "pretrained_val_accuracy"]
