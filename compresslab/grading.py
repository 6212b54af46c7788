"""Checks for the exercises where the student writes a function: run it on many cases, compare
with the package's reference, and say *what* is wrong without printing the answer.

Each checker raises ``AssertionError`` with a hint on the first failing case and returns a
short report when every case passes.
"""
from __future__ import annotations

import torch

from . import integer


def integer_linear_cases(seed: int = 0):
    """Random int8 layers with uint8 inputs, in shapes the student did not pick: (q_x, q_w, b_q,
    z_x, m0, n, z_y), including multipliers that make the rounding matter and outputs that clip."""
    g = torch.Generator().manual_seed(seed)
    for n_in, n_out, m in [(16, 4, 0.004), (27, 8, 0.0123), (64, 10, 0.0009), (5, 3, 0.25), (300, 6, 2e-5)]:
        q_x = torch.randint(0, 256, (7, n_in), generator=g, dtype=torch.int32)
        q_w = torch.randint(-127, 128, (n_out, n_in), generator=g, dtype=torch.int8)
        b_q = torch.randint(-20_000, 20_000, (n_out,), generator=g, dtype=torch.int32)
        z_x, z_y = int(torch.randint(0, 256, (), generator=g)), int(torch.randint(0, 256, (), generator=g))
        m0, n = integer.fixed_point_multiplier(m * (0.5 + torch.rand(n_out, generator=g, dtype=torch.float64)))
        yield q_x, q_w, b_q, z_x, m0, n, z_y


def reference_linear(q_x, q_w, b_q, z_x, m0, n, z_y, *, centre=True, rounding=True, clamp=True):
    """The reference, and the usual mistakes (no zero-point correction, a floor shift, no clamp)."""
    acc = b_q.long() + (q_x.long() - (z_x if centre else 0)) @ q_w.long().T          # (N, O) int64
    t = acc * m0.long()
    y = (integer.rounding_shift(t, n) if rounding else t >> n) + z_y                  # M acc, rounded or floored
    return y.clamp(0, 255) if clamp else y


def integer_linear(fn) -> str:
    """Check ``fn(q_x, q_w, b_q, z_x, m0, n, z_y) -> q_y`` (uint8 codes (N, O) as an integer
    tensor): the integer-only linear layer of notebook 06a, on five random layers."""
    for i, case in enumerate(integer_linear_cases()):
        q_x, q_w, b_q, z_x, m0, n, z_y = case
        got = fn(*(c.clone() if torch.is_tensor(c) else c for c in case))
        assert torch.is_tensor(got), f"Return a tensor of codes, got {type(got).__name__}."
        assert not got.dtype.is_floating_point, (
            f"The codes came back as {got.dtype}: keep the data path in integers (int32 / int64 "
            "tensors: an int64 product M_0 * acc and a right shift, no division, no float).")
        assert got.shape == (q_x.shape[0], q_w.shape[0]), \
            f"Shape {tuple(got.shape)}: one code per (input row, output channel), {(q_x.shape[0], q_w.shape[0])}."
        want = reference_linear(*case)
        if torch.equal(got.long(), want):
            continue
        for mistake, hint in [(dict(centre=False), "subtract the input zero point: Σ q_w (q_x - Z_x), "
                                                   "or Σ q_w q_x - Z_x Σ q_w"),
                              (dict(rounding=False), "round the shift: (t + 2^(n-1)) >> n, not t >> n"),
                              (dict(clamp=False), "clamp the result to the uint8 grid [0, 255]")]:
            if torch.equal(got.long(), reference_linear(*case, **mistake)):
                raise AssertionError(f"Case {i + 1}: almost: {hint}.")
        wrong = (got.long() != want)
        raise AssertionError(f"Case {i + 1}: {int(wrong.sum())} of {want.numel()} codes differ. Check the "
                             "order: acc = b_q + Σ q_w (q_x - Z_x) in int64, then (M_0 acc + 2^(n-1)) >> n, "
                             "then + Z_y, then the clamp.")
    return "all 5 random layers give the reference codes, in integers"
