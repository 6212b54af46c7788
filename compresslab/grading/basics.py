"""Checkers for notebook 00 (setup and baselines): counting parameters and FLOPs by hand, the
break-even sparsity of CSR storage, a CSR encoder written from scratch, and a first design task
(a LeNet-300-100 whose CSR file is a third of the dense one, scored on the validation split).

CSR (compressed sparse row) stores a matrix ``W`` (rows x cols) as three arrays: the ``nnz``
non-zero ``values`` row by row, their ``columns``, and ``rows + 1`` row pointers ``ptr`` with
``ptr[0] = 0`` and row ``i``'s entries at positions ``ptr[i]:ptr[i+1]``. Its bytes are
``nnz * (value bytes + index bytes) + 4 * (rows + 1)`` (:func:`compresslab.metrics.csr_bytes`).
"""
from __future__ import annotations

import torch

from .. import metrics
from .common import call, expect, fraction, module, pretrained_val_accuracy, val_accuracy, whole

__all__ = ["lenet5_parameters", "lenet300_flops", "csr_break_even", "csr_cases", "csr_decode",
           "csr_encoding", "small_file"]


def lenet5_parameters(value) -> str:
    """``value`` = LeNet-5's parameter count, weights and biases of its four layers."""
    from ..models import build_model
    n = whole(value, "lenet5_params")
    want = metrics.count_parameters(build_model("lenet5"))
    if n == want:
        return f"right: LeNet-5 has {n:,d} parameters"
    biases = 20 + 50 + 500 + 10
    expect(n != want - biases, "That counts the weights only: add one bias per output channel / output unit.")
    expect(n != want - 500 * 800 + 500 * 1250,
           "fc1 sees the flattened output of the second pool, 50 maps of 4x4, not of 5x5.")
    raise AssertionError(f"{n:,d} is not LeNet-5's count: add c_out c_in k^2 + c_out for each conv and "
                         "n_out n_in + n_out for each linear layer (conv1, conv2, fc1, fc2).")


def lenet300_flops(value) -> str:
    """``value`` = FLOPs of one LeNet-300-100 forward pass on a batch of 64 (2 per multiply-add)."""
    from ..models import build_model
    n = whole(value, "lenet300_flops_b64")
    want = metrics.flops(build_model("lenet300"), (1, 28, 28), batch_size=64)
    if n == want:
        return f"right: {n / 1e6:.1f} MFLOPs for a batch of 64"
    for wrong, hint in [(want // 2, "you counted multiply-adds: a multiply-add is 2 FLOPs"),
                        (want // 64, "that is one image: multiply by the batch size, 64"),
                        (want // 128, "that is the multiply-adds of one image: 2 FLOPs each, 64 images"),
                        (want + 64 * 2 * (300 + 100 + 10), "torch's counter leaves the biases out"),
                        (want + 64 * (300 + 100 + 10), "torch's counter leaves the biases out")]:
        expect(n != wrong, f"Almost: {hint}.")
    raise AssertionError(f"{n:,d} FLOPs is not it: 2 m n FLOPs per image for each of the three layers "
                         "(784->300, 300->100, 100->10), times 64 images.")


def csr_break_even(value) -> str:
    """``value`` = the sparsity above which CSR (float32 values, 16-bit column indices, row pointers
    ignored) is smaller than the dense float32 matrix: 32 n = 48 nnz."""
    x = fraction(value, "break_even")
    want = 1 - 32 / 48
    if abs(x - want) < 1e-9:
        return f"right: CSR pays off above {x:.1%} sparsity"
    expect(abs(x - (1 - want)) > 1e-9, "That is the fraction of weights *kept* at break-even (nnz / n): "
                                       "the sparsity is one minus it.")
    expect(abs(x - 0.5) > 1e-9, "That would be with 32-bit column indices: the indices here take 16 bits.")
    expect(abs(x - want) > 0.01, f"{x} is close but rounded: compute it exactly from the bits (32 and 32 + 16).")
    raise AssertionError(f"At sparsity {x:g}, compare 32 n bits (dense) with (32 + 16) nnz bits, "
                         "nnz = (1 - sparsity) n.")


def csr_cases(seed: int = 0):
    """Matrices to encode: empty rows (also the last), an all-zero matrix, fewer than 256 columns
    (8-bit indices) and fc1's 300 x 784 (16-bit indices)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.tensor([[0.0, 1.5, 0.0, 0.0, -2.0], [0.0] * 5, [3.0, 0.0, 0.0, 0.0, 0.25], [0.0] * 5])
    yield small
    yield torch.zeros(3, 4)
    for rows, cols, sparsity in [(30, 200, 0.9), (300, 784, 0.9), (8, 300, 0.2)]:
        w = torch.randn(rows, cols, generator=g)
        yield w * (torch.rand(rows, cols, generator=g) >= sparsity)


def csr_decode(values, columns, ptr, shape) -> torch.Tensor:
    """The dense matrix back from its CSR arrays."""
    w = torch.zeros(shape, dtype=values.dtype)
    for i in range(shape[0]):
        lo, hi = int(ptr[i]), int(ptr[i + 1])
        w[i, columns[lo:hi].long()] = values[lo:hi]
    return w


def csr_encoding(fn) -> str:
    """``fn(w) -> (values, columns, ptr)``: the CSR arrays of a 2-D float32 ``w``, with float32
    values, column indices in the smallest type that can name every column (8 bits up to 256
    columns, else 16) and int32 row pointers; checked by decoding, and by bytes against
    :func:`compresslab.metrics.csr_bytes`."""
    for i, w in enumerate(csr_cases()):
        rows, cols = w.shape
        nnz = int(w.count_nonzero())
        out = call(fn, "to_csr", w.clone())
        expect(isinstance(out, (tuple, list)) and len(out) == 3,
               f"`to_csr` should return a tuple (values, columns, ptr), got a {type(out).__name__}"
               + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "") + ".")
        expect(all(isinstance(t, torch.Tensor) for t in out), "`to_csr` should return three torch tensors.")
        values, columns, ptr = (t.reshape(-1) if t.dim() == 0 else t for t in out)
        case = f"Case {i + 1} ({rows}x{cols}, {nnz} non-zeros)"
        expect(values.dim() == 1 and values.numel() == nnz,
               f"{case}: `values` has {values.numel()} entries; it should hold the non-zeros only, row by row.")
        expect(columns.dim() == 1 and columns.numel() == nnz,
               f"{case}: `columns` has {columns.numel()} entries: one column index per non-zero.")
        expect(ptr.dim() == 1 and ptr.numel() == rows + 1,
               f"{case}: `ptr` has {ptr.numel()} entries; a matrix of {rows} rows needs rows + 1, starting at 0.")
        expect(not columns.dtype.is_floating_point and not ptr.dtype.is_floating_point,
               f"{case}: column indices and row pointers should be integers, got {columns.dtype} and {ptr.dtype}.")
        p = ptr.long()
        expect(int(p[0]) == 0 and int(p[-1]) == nnz and bool((p[1:] >= p[:-1]).all()),
               f"{case}: `ptr` should start at 0, never decrease and end at the number of non-zeros; "
               "row i's entries are values[ptr[i]:ptr[i+1]].")
        try:
            back = csr_decode(values.float(), columns, ptr, (rows, cols))
        except (IndexError, RuntimeError) as e:
            raise AssertionError(f"{case}: your arrays do not decode ({type(e).__name__}: {e}).") from None
        expect(torch.equal(back, w), f"{case}: decoding your arrays does not give the matrix back: "
                                     "check the column of each value and the row pointers.")
        expect(values.dtype == torch.float32, f"{case}: `values` is {values.dtype}; store float32 values.")
        got = values.numel() * values.element_size() + columns.numel() * columns.element_size() \
            + ptr.numel() * ptr.element_size()
        want = metrics.csr_bytes(w)
        expect(ptr.element_size() == 4, f"{case}: row pointers take {ptr.element_size()} bytes each; "
                                        "use torch.int32 (4 bytes).")
        expect(got == want, f"{case}: your arrays take {got:,.0f} bytes; column indices take "
                            f"{columns.element_size()} bytes each, and {cols} columns need only "
                            f"{metrics.index_bits(cols)} bits (torch.uint8 up to 256 columns, else torch.int16).")
    return "all 5 matrices decode, in as many bytes as metrics.csr_bytes counts"


def small_file(model) -> str:
    """Design: a model for MNIST whose CSR file (``metrics.model_size(model, "sparse")``) is at most
    a third of the dense float32 LeNet-300-100's, losing at most 3 points of validation accuracy
    against the pretrained LeNet-300-100 (no fine-tuning needed)."""
    from ..zoo import load_pretrained
    module(model, "small_model")
    dense = metrics.model_size(load_pretrained("lenet300", "cpu"))
    try:
        ratio = metrics.model_size(model, "sparse") / dense
    except Exception as e:
        raise AssertionError(f"Cannot measure your model's size ({type(e).__name__}: {e}).") from None
    expect(ratio <= 1 / 3, f"Your model's CSR file is {ratio:.0%} of the dense LeNet-300-100's; at most "
                           "33% is asked: prune more (and remember each kept weight also stores an index).")
    drop = pretrained_val_accuracy("lenet300") - val_accuracy(model, "mnist")
    expect(drop <= 3, f"Your model loses {drop:.2f} points of validation accuracy; at most 3 are allowed: "
                      "prune less.")
    return f"on target: CSR file {ratio:.0%} of the dense model's, {drop:.2f} points lost on validation"
