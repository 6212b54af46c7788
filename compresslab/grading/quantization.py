"""Checks for the quantization notebooks (06a, 06b): compare the student's answer with a
reference computed here, and say *what* is wrong without printing the answer.

Each checker raises ``AssertionError`` with a hint on the first thing that is wrong (the usual
mistakes are computed and recognized) and returns a short report when everything holds.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import integer
from .common import call, switched_off, dataset, expect, mapping, module, number, pretrained_val_accuracy, tensor, \
    val_accuracy, whole

__all__ = ["scale_zero_point", "folded_batchnorm", "integer_linear_cases", "reference_linear", "integer_linear",
           "activation_bits", "packed_bytes", "kmeans_1d", "mixed_precision"]


def close(a, b, rtol: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def scale_zero_point(x, S, Z, q, bits: int = 4) -> str:
    """Check the asymmetric ``bits``-bit scale ``S``, zero point ``Z`` and codes ``q`` of ``x``
    (06a, exercise 1): S = (β - α) / (2^b - 1) over [α, β] = [min(x, 0), max(x, 0)],
    Z = -round(α / S), q = clamp(round(x / S) + Z, 0, 2^b - 1)."""
    x = tensor(x, "x", floating=True).detach().double()
    S, top = number(S, "S"), 2 ** bits - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s_ref = (hi - lo) / top
    if not close(S, s_ref):
        for wrong, hint in [((hi - lo) / 2 ** bits,
                             f"divide the range by 2^b - 1 = {top} steps (2^b codes, one step fewer)"),
                            (max(-lo, hi) / (2 ** (bits - 1) - 1), "that is the symmetric scale; the asymmetric grid "
                                                                   "spans [min(x, 0), max(x, 0)] with 2^b codes"),
                            ((float(x.max()) - float(x.min())) / top, "widen the range to contain 0 first")]:
            expect(not close(S, wrong), f"S: almost: {hint}.")
        raise AssertionError(f"S = {S:.4g} does not make the {top + 1} codes span [min(x, 0), max(x, 0)]: "
                             f"S (2^b - 1) should be the width of that range.")
    Z = number(Z, "Z")
    expect(Z == int(Z), f"Z = {Z:g}: the zero point is an integer (a code): round it.")
    z_ref = int(round(-lo / s_ref))
    expect(not (Z == -z_ref and z_ref != 0), "Z has the wrong sign: Z = -round(α / S) is a code in [0, 2^b - 1].")
    expect(Z == z_ref, f"Z = {int(Z)} does not map min(x, 0) to the code 0: Z = -round(α / S) (round, do not "
                       "truncate).")
    q = tensor(q, "q", shape=tuple(x.shape)).detach().double()
    expect(bool((q == q.round()).all()), "q should hold whole codes: round(x / S) + Z, rounded.")
    ref = torch.clamp(torch.round(x / s_ref) + z_ref, 0, top)
    if not torch.equal(q, ref):
        expect(not torch.equal(q, torch.round(x / s_ref)), "q: add the zero point: q = round(x / S) + Z.")
        expect(not torch.equal(q, torch.floor(x / s_ref) + z_ref), "q: round x / S to the nearest code, not down.")
        expect(bool(((q >= 0) & (q <= top)).all()), f"q: clamp the codes to [0, {top}].")
        raise AssertionError(f"{int((q != ref).sum())} of the {q.numel()} codes differ from "
                             "clamp(round(x / S) + Z, 0, 2^b - 1).")
    return f"S, Z and all {q.numel()} codes are right: each code stands for its value of x within S/2"


def folded_batchnorm(w_f, b_f, conv, bn) -> str:
    """Check the weight and bias of ``conv`` with the eval-mode ``bn`` after it folded in
    (06a, exercise 2): a = γ / sqrt(var + ε) per output channel, w' = a w, b' = β + (b - μ) a."""
    conv, bn = module(conv, "conv", nn.Conv2d), module(bn, "bn", nn.BatchNorm2d)
    w = conv.weight.detach().double()
    w_f = tensor(w_f, "w_f", shape=tuple(w.shape), floating=True).detach().double()
    b_f = tensor(b_f, "b_f", shape=(w.shape[0],), floating=True).detach().double()
    g, beta = bn.weight.detach().double(), bn.bias.detach().double()
    mu, var = bn.running_mean.double(), bn.running_var.double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mu)
    a = g / torch.sqrt(var + bn.eps)

    def same(x, y):
        return torch.allclose(x, y, rtol=1e-4, atol=1e-6)

    if not same(w_f, w * a.view(-1, 1, 1, 1)):
        for wrong, hint in [(w * (g / torch.sqrt(var)).view(-1, 1, 1, 1), "σ = sqrt(var + ε): add bn.eps"),
                            (w * (g / (var + bn.eps)).view(-1, 1, 1, 1),
                             "divide by σ = sqrt(var + ε), not by the variance"),
                            (w * a.view(1, -1, 1, 1), "scale the *output* channels: a.view(-1, 1, 1, 1), dimension 0"),
                            (w / a.view(-1, 1, 1, 1), "multiply by γ / σ, do not divide")]:
            expect(not same(w_f, wrong), f"w_f: almost: {hint}.")
        raise AssertionError("w_f is not the conv's weight scaled per output channel by γ / sqrt(var + ε).")
    if not same(b_f, beta + (b - mu) * a):
        for wrong, hint in [(beta, "the running mean moves the bias too: b' = β + (b - μ) γ / σ"),
                            (beta + (b + mu) * a, "subtract the running mean: (b - μ), not (b + μ)"),
                            (beta - mu, "scale the mean by γ / σ as well: β - μ γ / σ"),
                            (-mu * a, "add BatchNorm's shift β")]:
            expect(not same(b_f, wrong), f"b_f: almost: {hint}.")
        raise AssertionError("b_f is not β + (b - μ) γ / sqrt(var + ε), per output channel.")
    return f"w_f and b_f are conv + BatchNorm in one layer (all {w.shape[0]} channels)"


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
        with switched_off(integer.IntegerLayer, ["__call__", "accumulate"], "integer.IntegerLayer is switched off here: "
                          "the layer is yours to write."), switched_off(integer, ["requantize", "rounding_shift"], "integer.requantize and "
                          "rounding_shift are switched off here: write the shift and the clamp yourself."):
            got = call(fn, "integer_linear", *(c.clone() if torch.is_tensor(c) else c for c in case))
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


# Design task of 06a: the fewest activation bits with 8-bit weights, calibration batches chosen.
ACT_MAX_DROP = 1.0       # points of validation accuracy
ACT_CALIBRATIONS = (1, 4, 32)  # the narrower width must fail with each of these (and the student's own)


def w8a_drop(bits: int, batches: int) -> float:
    """Points of validation accuracy (2,000 images) the pretrained CIFAR CNN loses as W8A``bits``,
    calibrated on the first ``batches`` batches of the fixed, unshuffled 32-image loader."""
    from ..quantization import calibrate, quantize_model
    from ..zoo import load_pretrained
    calib = dataset("cifar10").loader("train", 32, subset=1024, seed=1, shuffle=False)
    model = calibrate(quantize_model(load_pretrained("cifar_cnn", "cpu"), 8, act_bits=bits), calib, batches)
    return pretrained_val_accuracy("cifar_cnn", 2000) - val_accuracy(model, "cifar10", 2000)


def activation_bits(plan) -> str:
    """Check ``plan = {"act_bits": b, "calibration_batches": n}`` (06a, design): the pretrained
    CIFAR CNN with 8-bit per-channel weights and b-bit activations, calibrated on the first n
    batches of ``loader("train", 32, subset=1024, seed=1, shuffle=False)``, must stay within 1
    point of its fp32 accuracy on 2,000 validation images, and b - 1 bits must not (measured here,
    with 1, 4 and 32 calibration batches and with n: the answer holds on the machine that checks it)."""
    plan = mapping(plan, "plan", ["act_bits", "calibration_batches"],
                   example='such as {"act_bits": 6, "calibration_batches": 2}')
    b, n = whole(plan["act_bits"], "act_bits"), whole(plan["calibration_batches"], "calibration_batches")
    expect(2 <= b <= 8, f"act_bits = {b}: choose a width from 2 to 8 bits.")
    expect(1 <= n <= 32, f"calibration_batches = {n}: the calibration loader holds 32 batches of 32 images: "
                         "choose 1 to 32.")
    drop = w8a_drop(b, n)
    expect(drop <= ACT_MAX_DROP, f"W8A{b} calibrated on {n} batches loses {drop:.2f} points on validation; at most "
                                 f"{ACT_MAX_DROP:g} is allowed: more bits, or another number of calibration batches.")
    for m in sorted({*ACT_CALIBRATIONS, n}) if b > 2 else ():
        expect(w8a_drop(b - 1, m) > ACT_MAX_DROP, f"{b - 1}-bit activations calibrated on {m} batch"
               f"{'es' * (m > 1)} also stay within {ACT_MAX_DROP:g} point of fp32: scan fewer bits.")
    return f"W8A{b}, {n} calibration batch{'es' * (n > 1)}: {-drop:+.2f} points against fp32 on 2,000 validation " \
           f"images (at most {ACT_MAX_DROP:g} lost allowed), at the fewest activation bits that stay within"


def packed_bytes(total) -> str:
    """Check the packed size of LeNet-300-100 (06b, exercise 1): 4 bits per weight, one float32
    scale per output row (symmetric per channel), float32 biases."""
    from ..models import lenet300
    total = number(total, "total")
    layers = [m for m in lenet300().modules() if isinstance(m, nn.Linear)]
    weights = sum(m.weight.numel() for m in layers)
    rows = sum(m.out_features for m in layers)
    biases = sum(m.bias.numel() for m in layers)
    right = weights * 4 / 8 + rows * 4 + biases * 4
    if total == right:
        return f"{total:,.0f} bytes: codes, scales and biases each counted at their width"
    for wrong, hint in [(weights * 4 / 8, "the scales and the biases take bytes too"),
                        (weights * 4 / 8 + rows * 4, "each output row has a float32 scale *and* a float32 bias"),
                        (right * 8, "that is bits: divide by 8 for bytes"),
                        (weights * 4 + rows * 4 * 8 + biases * 4 * 8, "that is bits: divide by 8 for bytes"),
                        (weights * 4 / 8 + sum(m.in_features for m in layers) * 4 + biases * 4,
                         "one scale per *output* row (out_features), not per input column"),
                        (weights * 4 / 8 + rows * 5 + biases * 4, "symmetric weights need no zero point"),
                        ((weights + biases) * 4, "that is the fp32 size: a weight takes 4 bits, half a byte"),
                        (weights + rows * 4 + biases * 4, "4 bits per weight is half a byte, not one")]:
        expect(not math.isclose(total, wrong, rel_tol=1e-9), f"{total:,.0f} bytes: almost: {hint}.")
    raise AssertionError(f"{total:,.0f} bytes is too {'high' if total > right else 'low'}: count the weights at "
                         "4 bits, "
                         "plus 4 bytes per output row and 4 bytes per bias, over fc1, fc2 and fc3.")


def lloyd(w: torch.Tensor, k: int, iters: int, labels_before: bool = False):
    """The reference k-means: k centroids evenly spaced on [min w, max w], then ``iters`` rounds
    of assign-to-nearest and move-to-mean (an empty cluster keeps its centroid); the labels of the
    final centroids (``labels_before``: the usual mistake, those of the centroids before)."""
    c = torch.linspace(float(w.min()), float(w.max()), k, dtype=w.dtype)
    labels = (w[:, None] - c[None, :]).abs().argmin(1)
    for _ in range(iters):
        labels = (w[:, None] - c[None, :]).abs().argmin(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(k, dtype=w.dtype).index_add_(0, labels, w)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c, labels if labels_before and iters else (w[:, None] - c[None, :]).abs().argmin(1)


def kmeans_cases(seed: int = 0):
    """(w, k, iters): one Lloyd step, heavy tails, an empty cluster (a gap in the weights)."""
    g = torch.Generator().manual_seed(seed)
    yield torch.randn(400, generator=g), 4, 1
    yield torch.randn(3000, generator=g) ** 3, 8, 10
    yield torch.cat([torch.randn(200, generator=g) * 0.05 - 1, torch.randn(200, generator=g) * 0.05 + 1,
                     torch.tensor([5.0])]), 8, 5


def kmeans_1d(fn, w=None) -> str:
    """Check ``fn(w, k, iters) -> (centroids, labels)`` (06b, exercise 2) on three small cases and,
    if given, on ``w`` (8 centroids, 30 iterations), against Lloyd's iterations from the linear
    start; on ``w`` also report its error next to the uniform grid of as many levels."""
    cases = list(kmeans_cases())
    if w is not None:
        cases.append((tensor(w, "w", floating=True).detach().flatten().float(), 8, 30))
    for i, (x, k, iters) in enumerate(cases, start=1):
        out = call(fn, "kmeans_1d", x.clone(), k, iters)
        expect(isinstance(out, (tuple, list)) and len(out) == 2, "Return a pair (centroids, labels).")
        c = tensor(out[0], "centroids", shape=(k,))
        labels = tensor(out[1], "labels", shape=tuple(x.shape), floating=False)
        c, labels = c.detach().float(), labels.long()
        expect(bool(torch.isfinite(c).all()), f"Case {i}: a centroid is not finite: an empty cluster should keep its "
                                              "centroid (no 0 / 0).")
        expect(bool(((labels >= 0) & (labels < k)).all()), f"Case {i}: labels index the k centroids: 0 to k - 1.")
        ref_c, ref_labels = lloyd(x, k, iters)
        tol = 1e-5 * float(x.max() - x.min())
        if not torch.allclose(c, ref_c, atol=tol, rtol=0):
            again = call(fn, "kmeans_1d", x.clone(), k, iters)[0]
            expect(torch.allclose(torch.as_tensor(again).float(), c), "Two runs on the same weights give different "
                   "centroids: start from torch.linspace(w.min(), w.max(), k), not at random.")
            start = torch.linspace(float(x.min()), float(x.max()), k)
            expect(not torch.allclose(c, start, atol=tol, rtol=0), f"Case {i}: the centroids are still the evenly "
                   f"spaced start: run {iters} rounds of assign and update.")
            for j in (iters - 1, iters + 1):
                expect(not torch.allclose(c, lloyd(x, k, j)[0], atol=tol, rtol=0),
                       f"Case {i}: run exactly `iters` = {iters} rounds of assign-then-update (one round off).")
            raise AssertionError(f"Case {i} ({x.numel()} weights, k = {k}, {iters} rounds): the centroids differ from "
                                 "Lloyd's: start evenly spaced on [w.min(), w.max()], assign each weight to its "
                                 "nearest centroid, move each centroid to the mean of its weights.")
        nearest = (x[:, None] - c[None, :]).abs().argmin(1)
        if (labels != nearest).float().mean() > 1e-3:
            before = lloyd(x, k, iters, labels_before=True)[1]
            expect(not torch.equal(labels, before), f"Case {i}: the labels belong to the centroids before the last "
                   "update: assign once more with the final centroids.")
            raise AssertionError(f"Case {i}: not every weight is labelled with its nearest final centroid.")
    report = f"all {len(cases)} cases give Lloyd's centroids and labels"
    if w is not None:
        from ..quantization import fake_quantize, qparams
        x, (c, labels) = cases[-1][0], out
        mse_k = float((c.float()[labels.long()] - x).pow(2).mean())
        mse_u = float((fake_quantize(x, qparams(x, 3, symmetric=False)) - x).pow(2).mean())
        report += f"; on w, 8 levels: k-means MSE {mse_k:.2e}, uniform (asymmetric, min/max) {mse_u:.2e}"
    return report


# Design task of 06b: mixed precision under an average bit width, scored on validation.
MIXED_MAX_BITS, MIXED_MAX_DROP = 3.5, 1.5


def mixed_precision(bits) -> str:
    """Check a dict layer -> weight bits for the CIFAR CNN (06b, design): the package's uniform
    quantizer (symmetric, per channel, min/max) applied to a fresh pretrained copy must average at
    most 3.5 bits per weight (weighted by each layer's weight count) and stay within 1.5 points of
    fp32 on 2,000 validation images."""
    from ..metrics import prunable_layers
    from ..quantization import quantize_model
    from ..zoo import load_pretrained
    model = load_pretrained("cifar_cnn", "cpu")
    numel = {n: m.weight.numel() for n, m in prunable_layers(model).items()}
    bits = mapping(bits, "bits", numel, example="layer -> bits, such as {'conv1': 4, ..., 'fc': 4}")
    bits = {n: whole(b, f"bits[{n!r}]") for n, b in bits.items()}
    bad = [n for n, b in bits.items() if not 2 <= b <= 8]
    expect(not bad, f"bits for {bad}: give each layer 2 to 8 bits.")
    average = sum(numel[n] * bits[n] for n in numel) / sum(numel.values())
    expect(average <= MIXED_MAX_BITS, f"Your plan averages {average:.3f} bits per weight (each layer weighted by its "
                                      f"weight count); at most {MIXED_MAX_BITS:g} is asked: lower the large layers.")
    drop = pretrained_val_accuracy("cifar_cnn", 2000) - val_accuracy(quantize_model(model, bits), "cifar10", 2000)
    expect(drop <= MIXED_MAX_DROP, f"{average:.3f} bits per weight, but {drop:.2f} points lost on validation; at most "
                                   f"{MIXED_MAX_DROP:g} is allowed: give the sensitive layers more bits.")
    return f"{average:.3f} bits per weight on average, {-drop:+.2f} points against fp32 on 2,000 validation images " \
           f"(at most {MIXED_MAX_BITS:g} bits and {MIXED_MAX_DROP:g} points lost asked)"
