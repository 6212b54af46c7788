"""Argument checks shared by the technique modules, with one rule for every error.

**The rule.**

* ``TypeError``: the argument has the wrong *type*: a string where a number belongs
  (``amount="0.5"``), a bool where an integer belongs (``bits=True``), a float where an
  integer belongs (``rank=2.5``), a list where a tensor belongs.
* ``ValueError``: the type is right, the *value* is not: out of range (``amount=1.5``),
  an unknown choice (``method="entropy"``), NaN or inf, an empty tensor.

Types are checked before values. Every message names the argument, says what it must be,
gives an example, and shows what it got:

    amount must be a fraction in [0, 1], e.g. 0.5; got 1.5.

Numbers are Python's ``numbers.Real`` (NumPy scalars included; bools excluded); integers are
anything with ``__index__`` (``int``, NumPy integers), again without bools.
A technique module keeps only the checks particular to it, written with these helpers.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Iterable

import torch


def message(name: str, must: str, value, example=None, hint: str = "") -> str:
    """ "<name> must <must>, e.g. <example>; got <value>. <hint>" """
    eg = f", e.g. {example}" if example is not None else ""
    return f"{name} must {must}{eg}; got {value!r}." + (f" {hint}" if hint else "")


def interval(low, high, low_open: bool = False, high_open: bool = False) -> str:
    """The range as text: "in [0, 1]", "in (50, 100]", ">= 1", "> 0"."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def outside(v, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is not None and (v <= low if low_open else v < low))
            or (high is not None and (v >= high if high_open else v > high)))


def number(value, name: str, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
           must: str | None = None, example=None, hint: str = "") -> float:
    """A real number (not a bool) in the given range; NaN is always refused. Returns a float."""
    must = must or f"be a number {interval(low, high, low_open, high_open)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(message(name, must, value, example, hint))
    if math.isnan(value) or outside(value, low, high, low_open, high_open):
        raise ValueError(message(name, must, value, example, hint))
    return float(value)


def fraction(value, name: str, *, low_open: bool = False, must: str | None = None, example=0.5,
             hint: str = "") -> float:
    """A number in [0, 1] (or (0, 1] with ``low_open``)."""
    must = must or f"be a fraction {interval(0, 1, low_open)}"
    return number(value, name, 0, 1, low_open=low_open, must=must, example=example, hint=hint)


def integer(value, name: str, low=None, high=None, *, must: str | None = None, example=None,
            hint: str = "") -> int:
    """An integer (not a bool, not a float such as 2.0) in [low, high]. Returns an int."""
    must = must or f"be an integer {interval(low, high)}".rstrip()
    if isinstance(value, bool):
        raise TypeError(message(name, must, value, example, hint))
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(message(name, must, value, example, hint)) from None
    if outside(value, low, high, False, False):
        raise ValueError(message(name, must, value, example, hint))
    return value


def one_of(value, name: str, options: Iterable, hint: str = ""):
    """One of a fixed set of choices (strings: a non-string is a TypeError)."""
    options = tuple(options)
    must = f"be one of {', '.join(map(repr, options))}"
    if all(isinstance(o, str) for o in options) and not isinstance(value, str):
        raise TypeError(message(name, must, value, repr(options[0]), hint))
    if value not in options:
        raise ValueError(message(name, must, value, repr(options[0]), hint))
    return value


def tensor(value, name: str = "tensor") -> torch.Tensor:
    """A torch.Tensor (a list or an array is a TypeError: wrap it in torch.tensor first)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(message(name, "be a torch.Tensor", value, "torch.tensor([0.5, -1.0])",
                                f"(got a {type(value).__name__}: wrap it in torch.tensor(...))"))
    return value


def module(value, name: str, kinds: type | tuple[type, ...]) -> torch.nn.Module:
    """An instance of one of the given module classes."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds):
        must = "be a " + " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise TypeError(f"{name} must {must}; got a {type(value).__name__}.")
    return value


def finite(x, what: str = "tensor") -> torch.Tensor:
    """A tensor without NaN or inf: they would poison a min / max, a scale, an SVD."""
    tensor(x, what)
    if not torch.isfinite(x).all():
        n = int((~torch.isfinite(x)).sum())
        raise ValueError(f"The {what} holds {n} NaN or inf value(s); it must hold finite numbers only: "
                         "find where they come from (a diverged training run?) first.")
    return x


def not_empty(x, what: str = "tensor") -> torch.Tensor:
    """A tensor with at least one entry (a range or a codebook needs one number)."""
    tensor(x, what)
    if x.numel() == 0:
        raise ValueError(f"The {what} is empty (shape {tuple(x.shape)}); it must hold at least one "
                         "number: there is nothing to quantize.")
    return x
