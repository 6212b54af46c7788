"""Checkers for notebook 09 (Deep Compression's storage and a compression plan): the fillers a
long gap needs, a Huffman code's length by hand, the relative indices of a sparse layer written
by the student, and a prune + share plan for LeNet-300-100 under a size budget.

Relative indices (``coding.relative_indices``, our convention): the nonzero positions of the
flattened mask as gaps d >= 1 (the first: its position + 1); with b-bit gaps, d <= 2^b - 1 is
stored as it is, and a longer gap is preceded by fillers, the symbol 0 = "skip 2^b - 1
positions", so a gap d needs floor((d - 1) / (2^b - 1)) fillers and then d minus what they
skipped.
"""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import torch
from torch import nn

from .. import coding, deep_compression as dc
from .common import call, switched_off, expect, fraction, mapping, number, pretrained_val_accuracy, val_accuracy, whole

__all__ = ["filler_count", "huffman_length", "gap_cases", "reference_gaps", "gap_encoding",
           "SIZE_PLAN_TARGET", "apply_size_plan", "size_plan"]


def filler_count(fillers, gap: int = 124, index_bits: int = 5) -> str:
    """``fillers``: how many filler symbols a gap of ``gap`` positions needs with b-bit gaps
    (each filler skips 2^b - 1 positions; the last stretch, 1 .. 2^b - 1, is the entry itself)."""
    x = number(fillers, "fillers")
    skip = 2 ** index_bits - 1
    want = (gap - 1) // skip
    expect(x == int(x), f"`fillers` = {x:g}: fillers are counted, a whole number (round down, and mind the "
                        "stretch the entry itself covers).")
    x = int(x)
    if x == want:
        return f"a gap of {gap} = {want} fillers x {skip} + an entry of {gap - want * skip}"
    expect(x != want + 1, f"{x} fillers would skip {x * skip} positions, leaving {gap - x * skip} for the entry; "
                          f"an entry holds a gap of 1 .. {skip}: is the weight's own entry counted as a filler?")
    expect(x != (gap - 1) // (skip + 1) or want == (gap - 1) // (skip + 1),
           f"With the symbol-0 filler a {index_bits}-bit gap holds at most 2^{index_bits} - 1 = {skip} positions, not {skip + 1}.")
    raise AssertionError(f"{x} fillers do not bridge a gap of {gap}: each skips 2^b - 1 = {skip} positions, and the "
                         f"entry after them holds the rest, 1 .. {skip}.")


def huffman_length(total_bits, symbols="aaaaabbcd") -> str:
    """``total_bits``: the length of the Huffman-coded sequence (the stream alone, no table)."""
    x = number(total_bits, "total_bits")
    counts = Counter(symbols)
    code = coding.huffman_code(list(symbols))
    want = sum(counts[s] * len(c) for s, c in code.items())
    expect(x == int(x), f"`total_bits` = {x:g} is not whole: a code's bits are whole (that value looks like the "
                        "entropy, the bound; the Huffman code's length is an integer above it).")
    x = int(x)
    if x == want:
        return f"{x} bits for {len(symbols)} symbols, against {len(symbols) * 2} with a fixed 2-bit code"
    fixed = len(symbols) * int(np.ceil(np.log2(len(counts))))
    for wrong, hint in [(fixed, "that is the fixed-length code (2 bits per symbol); Huffman gives frequent symbols shorter codes"),
                        (len(symbols), "that is the number of symbols; each costs its code's length in bits"),
                        (want + 8 * len(code), "the stream alone was asked, without the code table"),
                        (len(code), "count bits per occurrence: count(symbol) x length(code)")]:
        expect(x != wrong, f"{x} bits: {hint}.")
    raise AssertionError(f"{x} bits: merge the two rarest subtrees until one is left; a symbol's code length is its "
                         "depth, and the total is sum count x length.")

# ---------------------------------------------------------------- the student's relative indices


def gap_cases(seed: int = 0):
    """Masks and gap widths the student did not pick: gaps of exactly 2^b - 1 and 2^b, a first
    entry far from the start, random sparse vectors and matrices, and an empty mask."""
    g = torch.Generator().manual_seed(seed)
    hand = torch.zeros(80, dtype=torch.bool)
    hand[[6, 7, 14, 15, 30, 62, 79]] = True     # 3 bits: gaps 7, 1, 7, 1, 15, 32, 17
    yield hand, 3
    far = torch.zeros(200, dtype=torch.bool)
    far[[150, 151, 181]] = True                 # a first entry 151 positions in
    yield far, 5
    yield torch.rand(300, generator=g) < 0.05, 4
    yield torch.rand(40, 60, generator=g) < 0.08, 5
    yield torch.rand(12, 30, generator=g) < 0.3, 2
    yield torch.zeros(7, 9, dtype=torch.bool), 5
    yield torch.ones(10, dtype=torch.bool), 3


def reference_gaps(mask, index_bits, *, skip=None, first_plus_one=True, fillers=True, fill_at_max=False):
    """The package's gaps, and the usual mistakes: another skip per filler, the first gap as a
    bare position, no fillers, a filler already at gap 2^b - 1."""
    skip = 2 ** index_bits - 1 if skip is None else skip
    positions = torch.nonzero(torch.as_tensor(mask).flatten()).flatten().tolist()
    out, previous = [], -1 if first_plus_one else 0
    for p in positions:
        d = p - previous
        while fillers and (d > skip or (fill_at_max and d >= skip)):
            out.append(0)
            d -= skip
        out.append(d)
        previous = p
    return out


def as_symbols(got, i: int) -> list:
    if isinstance(got, torch.Tensor):
        expect(got.numel() == 0 or not got.dtype.is_floating_point, f"Case {i}: return whole numbers (an integer tensor, a NumPy "
                                                f"int array or a list of ints), got {got.dtype}.")
        got = got.tolist()
    elif isinstance(got, np.ndarray):
        expect(got.size == 0 or np.issubdtype(got.dtype, np.integer), f"Case {i}: return whole numbers, got a {got.dtype} array.")
        got = got.tolist()
    expect(isinstance(got, (list, tuple)), f"Case {i}: return the gaps as a list, a NumPy array or a tensor, "
                                           f"got a {type(got).__name__}.")
    expect(all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in got),
           f"Case {i}: every gap is a whole number; got {[type(x).__name__ for x in got][:3]}.")
    expect(all(not isinstance(x, list) for x in got), f"Case {i}: return one flat sequence of gaps.")
    return [int(x) for x in got]


def gap_encoding(fn) -> str:
    """Check ``fn(mask, index_bits) -> gaps``: the relative indices with symbol-0 fillers, as
    ``coding.relative_indices`` stores them, on seven masks; then their bytes on a sparse
    300 x 784 layer against ``deep_compression.layer_storage``."""
    reference = coding.relative_indices
    hint = "write it with torch / NumPy: coding.relative_indices is off limits here"
    cases = list(gap_cases()) + [(None, 5)]
    layer = nn.Linear(784, 300)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # 8% of the weights kept, 16 shared values
        layer.weight.copy_(torch.randint(-8, 8, (300, 784), generator=g) / 64 * (torch.rand(300, 784, generator=g) < 0.08))
    for i, (mask, b) in enumerate(cases, 1):
        mask = layer.weight != 0 if mask is None else mask
        want = reference(mask, b).tolist()
        with switched_off(coding, ["relative_indices"], hint):
            got = as_symbols(call(fn, "relative_gaps", mask.clone(), b), i)
        if got == want:
            continue
        expect(any(got) or not want, f"Case {i}: only zeros: a gap is the distance to the previous entry, >= 1.")
        for mistake, why in [(dict(skip=2 ** b), f"a symbol-0 filler skips 2^b - 1 = {2 ** b - 1} positions (2^b would "
                                                 f"need a {b + 1}-th bit for the entry after it)"),
                             (dict(first_plus_one=False), "the first gap is the first position + 1 (position 0 is gap 1)"),
                             (dict(fill_at_max=True), f"a gap of exactly 2^b - 1 = {2 ** b - 1} still fits: no filler before it"),
                             (dict(fillers=False), "gaps longer than 2^b - 1 need fillers first")]:
            if got == reference_gaps(mask, b, **mistake):
                raise AssertionError(f"Case {i}: almost: {why}.")
        expect(max(got, default=0) < 2 ** b, f"Case {i}: a gap of {max(got)} does not fit in {b} bits: "
                                             f"a longer gap needs fillers (the symbol 0).")
        positions = torch.nonzero(mask.flatten()).flatten().tolist()
        expect(got != positions, f"Case {i}: those are the positions; store the gaps between them.")
        expect(len(got) == len(want), f"Case {i}: {len(got)} entries, the mask needs {len(want)} (its "
                                      f"{len(positions)} nonzeros and their fillers).")
        first = next(j for j, (a, c) in enumerate(zip(got, want)) if a != c)
        raise AssertionError(f"Case {i} ({b}-bit gaps): entry {first} differs; count each gap from the previous "
                             "nonzero and put the fillers before the entry they lead to.")
    n, nnz = len(want), int(mask.sum())
    stored = dc.layer_storage(layer.weight, layer.bias, 4, 5)["pruned"]
    mine = (n * 5 + nnz * 32) / 8 + 4 * layer.bias.numel()
    expect(abs(stored - mine) < 1e-9, "Your gaps count differently from deep_compression.layer_storage.")
    return (f"all {len(cases)} masks give the package's gaps; a 300 x 784 layer with {nnz:,} weights stores "
            f"{n:,} 5-bit entries ({n * 5 / 8:,.0f} bytes of positions, as dc.layer_storage counts)")

# ---------------------------------------------------------------- the design task: a size plan

SIZE_PLAN_TARGET = dict(max_kb=60.0, max_drop=0.5)  # Deep Compression bytes (ours), validation points lost
LENET300 = ("fc1", "fc2", "fc3")


def apply_size_plan(plan: dict, model: nn.Module | None = None):
    """Prune each layer by magnitude to ``plan["amounts"]``, share its survivors with k-means in
    ``plan["bits"]`` bits (``dc.share_weights`` without fine-tuning) on a fresh pretrained
    LeNet-300-100; returns (model, storage table)."""
    from .. import pruning
    from ..zoo import load_pretrained
    model = load_pretrained("lenet300", "cpu") if model is None else copy.deepcopy(model)
    pruning.prune_per_layer(model, plan["amounts"])
    pruning.make_permanent(model)
    dc.share_weights(model, None, plan["bits"], epochs=0)
    return model, dc.storage_table(model, plan["bits"])


def size_plan(plan, n_val: int | None = None) -> str:
    """``plan``: {"amounts": {layer: fraction removed}, "bits": {layer: codebook bits}} for fc1-fc3
    of LeNet-300-100, applied without fine-tuning (``apply_size_plan``): Deep Compression bytes
    (our count, the "huffman" stage) at most ``SIZE_PLAN_TARGET["max_kb"]`` KB, at most
    ``SIZE_PLAN_TARGET["max_drop"]`` validation points lost."""
    example = '{"amounts": {"fc1": 0.5, "fc2": 0.5, "fc3": 0.2}, "bits": {"fc1": 6, "fc2": 6, "fc3": 6}}'
    plan = mapping(plan, "plan", ["amounts", "bits"], example)
    amounts = {n: fraction(a, f'plan["amounts"][{n!r}]')
               for n, a in mapping(plan["amounts"], 'plan["amounts"]', LENET300, example).items()}
    bits = {n: whole(b, f'plan["bits"][{n!r}]') for n, b in mapping(plan["bits"], 'plan["bits"]', LENET300, example).items()}
    for n, a in amounts.items():
        expect(a < 1, f'`plan["amounts"][{n!r}]` = 1 removes every weight of {n}.')
    for n, b in bits.items():
        expect(1 <= b <= 8, f'`plan["bits"][{n!r}]` = {b}: a codebook of 2^1 .. 2^8 values, so 1 to 8 bits.')
    model, table = apply_size_plan({"amounts": amounts, "bits": bits})
    kb = table.loc["total", "huffman"] / 1000
    max_kb, max_drop = SIZE_PLAN_TARGET["max_kb"], SIZE_PLAN_TARGET["max_drop"]
    expect(kb <= max_kb, f"Your plan stores {kb:.1f} KB ({table.loc['total', 'huffman x']:.1f}x); at most {max_kb:g} KB "
                         "was asked: prune fc1 harder or use fewer bits.")
    drop = pretrained_val_accuracy("lenet300", n_val) - val_accuracy(model, "mnist", n_val)
    expect(drop <= max_drop, f"Your plan stores {kb:.1f} KB but loses {drop:.2f} validation points without "
                             f"retraining, more than {max_drop:g}: prune less where it hurts, or spend bits there.")
    return f"{kb:.1f} KB ({table.loc['total', 'huffman x']:.1f}x smaller), {drop:.2f} validation points lost, no retraining"
