"""Storage coding, the last stage of Deep Compression (Han, Mao & Dally 2016); the bytes of
every stage are counted in ``deep_compression.storage_table``.

After pruning and weight sharing, a layer is stored as three things:

1. **relative indices**: the positions of the surviving weights, as the *gap* from the previous
   one (in the flattened weight), each in ``index_bits`` bits. A gap too long for that many
   bits is bridged with *fillers*, in one of two ways (see ``relative_indices``): ours, a
   free symbol 0, or the paper's, a stored zero weight;
2. **codebook indices**: for every stored weight, which shared value it takes,
   in ``bits`` bits;
3. **the codebook**: up to 2^bits float32 values (plus the biases).

Both index streams are far from uniform (small gaps and central codebook entries are common),
so **Huffman coding** (1952) them saves another 20-30%: a prefix code in which frequent symbols
get short bit strings. Given symbol frequencies f_s, Huffman's code minimizes sum_s f_s len(s);
its average length lies within one bit of the entropy H = -sum_s p_s log2 p_s.

Everything here is exact: ``decode(encode(x)) == x``; ``huffman_bits`` charges a code table as
one code length per symbol.

Production tools: Deep Compression's format was never standardized; in practice sparse weights
ship as zip/zstd-compressed checkpoints (zlib itself uses Huffman codes), and hardware formats
(NVIDIA 2:4 sparsity, llama.cpp's k-quants) pick layouts that decode fast over ones that are
smallest.
"""
from __future__ import annotations

import heapq
from collections import Counter
from typing import Hashable, Sequence

import numpy as np
import torch

from . import checks

# ---------------------------------------------------------------- 1. Huffman coding


def huffman_code(symbols: Sequence[Hashable]) -> dict:
    """A prefix code {symbol: bit string} with the shortest total length for these symbols.

    Repeatedly merge the two least frequent subtrees; a symbol's code is its path from the
    root (0 = left, 1 = right). Ties are broken by insertion order, so the code is
    deterministic. A single distinct symbol still gets one bit.
    """
    counts = Counter(symbols)
    if not counts:
        raise ValueError("Cannot build a Huffman code for an empty sequence.")
    if len(counts) == 1:
        return {next(iter(counts)): "0"}
    # heap entries: (frequency, tie-breaker, {symbol: code so far})
    heap = [(f, i, {s: ""}) for i, (s, f) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        f1, _, left = heapq.heappop(heap)
        f2, _, right = heapq.heappop(heap)
        merged = {s: "0" + c for s, c in left.items()} | {s: "1" + c for s, c in right.items()}
        heapq.heappush(heap, (f1 + f2, tie, merged))
        tie += 1
    return heap[0][2]


def huffman_encode(symbols: Sequence[Hashable], code: dict) -> tuple[bytes, int]:
    """The symbols' codes concatenated and packed into bytes; returns (bytes, number of bits)."""
    missing = set(symbols) - set(code)
    if missing:
        raise ValueError(f"Symbols {sorted(map(str, missing))[:5]} have no code: build the code from these symbols.")
    bits = "".join(code[s] for s in symbols)
    packed = np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")) if bits else np.zeros(0, np.uint8)
    return packed.tobytes(), len(bits)


def huffman_decode(data: bytes, n_bits: int, code: dict) -> list:
    """Read the bit stream left to right; a prefix code needs no separators."""
    if n_bits > 8 * len(data):
        raise ValueError(f"The stream holds {8 * len(data)} bits, fewer than the {n_bits} announced.")
    lookup = {c: s for s, c in code.items()}
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n_bits]
    out, prefix = [], ""
    for b in bits:
        prefix += "1" if b else "0"
        if prefix in lookup:
            out.append(lookup[prefix])
            prefix = ""
    if prefix:
        raise ValueError("The bit stream ends in the middle of a code: it is truncated or was coded with another table.")
    return out


def entropy_bits(symbols: Sequence[Hashable]) -> float:
    """Shannon's lower bound on the bits of any symbol-by-symbol code: n * H."""
    counts = np.array(list(Counter(symbols).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def huffman_bits(symbols: Sequence[Hashable]) -> int:
    """Bits of the Huffman-coded stream plus its table (one 8-bit code length per symbol used,
    as a canonical Huffman code needs no more to rebuild the code)."""
    code = huffman_code(symbols)
    counts = Counter(symbols)
    return sum(counts[s] * len(c) for s, c in code.items()) + 8 * len(code)

# ---------------------------------------------------------------- 2. sparse positions as gaps


FILLERS = ("symbol", "zero")


def relative_indices(mask: torch.Tensor, index_bits: int, filler: str = "symbol") -> np.ndarray:
    """The nonzero positions of a flattened mask as gaps, each fitting in ``index_bits`` bits.

    A gap is the distance from the previous stored entry (the first: its position + 1), so it
    is at least 1. A gap too long for b = ``index_bits`` bits is bridged by *fillers*:

    * ``filler="symbol"`` (ours): gaps 1 .. 2^b - 1 are stored as they are; a filler is the
      otherwise unused symbol 0, "skip 2^b - 1 positions, no weight here": a gap, no value.
    * ``filler="zero"`` (Han et al. 2016, Section 2 and Figure 2): a gap d is stored as d - 1
      (the authors' released decoder rebuilds positions as cumsum(stored + 1) - 1), so b bits
      span gaps 1 .. 2^b; a longer gap gets a *filler zero*, an entry 2^b positions on that
      holds the weight 0 and is stored like every other entry: a gap and a value.
      Returned as the gaps d (all >= 1); the fillers are the entries whose weight is 0.
    """
    index_bits = checks.integer(index_bits, "index_bits", 1, 16, must="be an integer between 1 and 16", example=5)
    checks.tensor(mask, "mask")
    checks.one_of(filler, "filler", FILLERS)
    positions = torch.nonzero(mask.flatten()).flatten().numpy()
    gaps = np.diff(positions, prepend=-1)
    longest = 2 ** index_bits - (filler == "symbol")   # the longest gap one entry holds
    fillers = (gaps - 1) // longest  # fillers needed before each entry
    out = np.full(int(fillers.sum()) + len(gaps), 0 if filler == "symbol" else longest, dtype=np.int64)
    out[np.cumsum(fillers + 1) - 1] = gaps - fillers * longest  # the entries, after their fillers
    return out


def positions_from_gaps(gaps: np.ndarray, index_bits: int, filler: str = "symbol") -> np.ndarray:
    """Undo ``relative_indices``: the flattened positions of the nonzero entries (with
    ``filler="zero"``: of every stored entry, the filler zeros included)."""
    checks.one_of(filler, "filler", FILLERS)
    gaps = np.asarray(gaps)
    if filler == "zero":
        return np.cumsum(gaps) - 1
    steps = np.where(gaps == 0, 2 ** index_bits - 1, gaps)
    return (np.cumsum(steps) - 1)[gaps != 0]
