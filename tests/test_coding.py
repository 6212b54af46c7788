import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from compresslab import coding, deep_compression as dc


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
def test_huffman_round_trips_exactly(symbols):
    code = coding.huffman_code(symbols)
    data, n_bits = coding.huffman_encode(symbols, code)
    assert coding.huffman_decode(data, n_bits, code) == symbols
    assert len(data) == math.ceil(n_bits / 8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=2, max_size=300))
def test_huffman_is_a_prefix_code_within_one_bit_of_the_entropy(symbols):
    code = coding.huffman_code(symbols)
    words = sorted(code.values())
    assert not any(b.startswith(a) for a, b in zip(words, words[1:])), "no code is a prefix of another"
    counts = Counter(symbols)
    total = sum(counts[s] * len(c) for s, c in code.items())
    h = coding.entropy_bits(symbols)
    assert h - 1e-9 <= total <= h + len(symbols) + 1e-9


def test_huffman_textbook_example():
    """Frequencies 45, 13, 12, 16, 9, 5 (CLRS): code lengths 1, 3, 3, 3, 4, 4; 224 bits."""
    symbols = [s for s, f in zip("abcdef", (45, 13, 12, 16, 9, 5)) for _ in range(f)]
    code = coding.huffman_code(symbols)
    assert {s: len(c) for s, c in code.items()} == {"a": 1, "b": 3, "c": 3, "d": 3, "e": 4, "f": 4}
    assert coding.huffman_encode(symbols, code)[1] == 224


def test_huffman_bad_input():
    with pytest.raises(ValueError, match="empty"):
        coding.huffman_code([])
    assert coding.huffman_code([7, 7, 7]) == {7: "0"}
    code = coding.huffman_code([1, 2, 2])
    with pytest.raises(ValueError, match="have no code"):
        coding.huffman_encode([3], code)
    data, n = coding.huffman_encode([1, 2, 2, 1], code)
    with pytest.raises(ValueError, match="fewer than"):
        coding.huffman_decode(data, n + 9, code)
    with pytest.raises(ValueError, match="middle of a code"):
        coding.huffman_decode(bytes([0b10000000]), 1, {"b": "10", "c": "11"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=400), st.integers(1, 8))
def test_relative_indices_round_trip_with_fillers(mask, index_bits):
    mask = torch.tensor(mask)
    gaps = coding.relative_indices(mask, index_bits)
    assert gaps.min(initial=0) >= 0 and gaps.max(initial=0) <= 2 ** index_bits - 1
    assert (gaps != 0).sum() == mask.sum()
    np.testing.assert_array_equal(coding.positions_from_gaps(gaps, index_bits), torch.nonzero(mask).flatten().numpy())


def test_relative_indices_han_figure_2():
    """Han et al.'s example: 3-bit gaps, nonzeros at positions 1, 4 and 15 (gap 11): one filler.
    Ours skips 7 (symbol 0); the paper's is a zero entry 8 positions on, at position 12."""
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 4, 15]] = True
    assert coding.relative_indices(mask, 3).tolist() == [2, 3, 0, 4]
    paper = coding.relative_indices(mask, 3, filler="zero")
    assert paper.tolist() == [2, 3, 8, 3]
    assert coding.positions_from_gaps(paper, 3, filler="zero").tolist() == [1, 4, 12, 15]
    with pytest.raises(ValueError, match="index_bits"):
        coding.relative_indices(mask, 0)
    with pytest.raises(ValueError, match="filler"):
        coding.relative_indices(mask, 3, filler="pad")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=400), st.integers(1, 8))
def test_paper_fillers_are_stored_zeros_and_never_more_than_ours(mask, index_bits):
    mask = torch.tensor(mask)
    gaps = coding.relative_indices(mask, index_bits, filler="zero")
    assert gaps.min(initial=1) >= 1 and gaps.max(initial=1) <= 2 ** index_bits, "d - 1 fits in index_bits bits"
    positions = coding.positions_from_gaps(gaps, index_bits, filler="zero")
    np.testing.assert_array_equal(positions[mask[positions].numpy()], torch.nonzero(mask).flatten().numpy())
    fillers = positions[~mask[positions].numpy()]
    assert (np.diff(np.concatenate([[-1], positions]))[~mask[positions].numpy()] == 2 ** index_bits).all(), \
        "a filler sits the longest gap on"
    ours = int((coding.relative_indices(mask, index_bits) == 0).sum())
    assert len(fillers) <= ours, "b bits span 2^b under the paper's convention, 2^b - 1 under ours"


def test_layer_storage_counts_every_bit():
    w = torch.zeros(4, 25)
    w[0, 0], w[1, 3], w[3, 24] = 0.5, -0.5, 0.5  # 3 weights, 2 shared values
    bias = torch.zeros(4)
    s = dc.layer_storage(w, bias, bits=2, index_bits=4, bias_bits=32)
    # positions 0, 28, 99: gaps 1, 28 = 15 + 13, 71 = 4 * 15 + 11 (4-bit gaps, a filler skips 15)
    gaps = coding.relative_indices(w != 0, 4).tolist()
    assert gaps == [1, 0, 13, 0, 0, 0, 0, 11]
    assert s["nonzero"] == 3 and s["fillers"] == 5
    assert s["dense"] == 4 * 100 + 16
    assert s["pruned"] == (8 * 4 + 3 * 32) / 8 + 16
    assert s["quantized"] == (8 * 4 + 3 * 2 + 2 * 32) / 8 + 16
    assert s["huffman"] == (coding.huffman_bits(gaps) + coding.huffman_bits([1, 0, 1]) + 64) / 8 + 16
    with pytest.raises(ValueError, match="share weights first"):
        dc.layer_storage(torch.arange(1.0, 10.0), None, bits=3, index_bits=4)


def test_layer_storage_paper_convention_by_hand():
    """Survivors at 0, 16 and 47 (gaps 1, 16, 31), 4-bit gaps. Ours: symbol-0 fillers skip 15,
    so 16 = 15 + 1 and 31 = 15 + 15 + 1: three fillers, no values. The paper's span 16: one
    filler zero at 32, stored with a gap and a value; the codebook has all 2^2 entries, the zero
    among them (3 used)."""
    w = torch.zeros(48)
    w[0], w[16], w[47] = 0.5, -0.5, 0.5
    bias = torch.zeros(4)
    ours = dc.layer_storage(w, bias, bits=2, index_bits=4)
    paper = dc.layer_storage(w, bias, bits=2, index_bits=4, convention="paper")
    assert (ours["fillers"], paper["fillers"]) == (3, 1) and (ours["codebook"], paper["codebook"]) == (2, 4)
    assert ours["dense"] == paper["dense"] == 4 * (48 + 4)
    assert ours["pruned"] == (6 * 4 + 3 * 32) / 8 + 16 == 31
    assert paper["pruned"] == (4 * 4 + 4 * 32) / 8 + 16 == 34                       # the filler's 32-bit zero
    assert ours["quantized"] == (6 * 4 + 3 * 2 + 2 * 32) / 8 + 4 * 2 == 19.75         # float16 biases
    assert paper["quantized"] == (4 * 4 + 4 * 2 + 4 * 32) / 8 + 4 * 4 == 35           # 4 entries, float32 biases
    # Huffman: gaps 1, 16, 16, 15 and codes 2, 0, 1, 2 (0.5, -0.5, the filler's 0, 0.5): one symbol
    # twice, two once, so codes of 1, 2, 2 bits: 6 bits, plus the table's 8 bits per symbol
    assert paper["huffman"] == ((6 + 24) + (6 + 24) + 4 * 32) / 8 + 16 == 39.5
    assert ours["huffman"] == (coding.huffman_bits([1, 0, 1, 0, 0, 1]) + coding.huffman_bits([1, 0, 1]) + 2 * 32) / 8 + 8
    with pytest.raises(ValueError, match="convention"):
        dc.layer_storage(w, bias, bits=2, index_bits=4, convention="han")


def test_paper_convention_needs_a_bit_more_when_the_zero_does_not_fit():
    w = torch.zeros(60)
    w[[0, 1, 2, 40]] = torch.tensor([1.0, 2.0, 3.0, 4.0])   # 2^2 values: a 2-bit codebook is full
    assert dc.layer_storage(w, None, 2, 4)["code bits"] == 2
    paper = dc.layer_storage(w, None, 2, 4, convention="paper")   # gap 38 = 16 + 16 + 6: two filler zeros
    assert (paper["fillers"], paper["codebook"], paper["code bits"]) == (2, 5, 3)
    assert paper["quantized"] == (6 * 4 + 6 * 3 + 5 * 32) / 8
    w[40] = 0.0
    w[10] = 4.0                                              # gap 8: no filler, no zero to store
    assert dc.layer_storage(w, None, 2, 4, convention="paper")["code bits"] == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0, 0.0, 1.0, -1.0]), min_size=1, max_size=200), st.integers(2, 6))
def test_conventions_differ_only_by_fillers_and_biases(values, index_bits):
    w, bias = torch.tensor(values), torch.zeros(3)
    ours = dc.layer_storage(w, bias, 1, index_bits)
    paper = dc.layer_storage(w, bias, 1, index_bits, convention="paper")
    f_ours, f_paper = ours["fillers"], paper["fillers"]
    assert f_paper <= f_ours
    # pruned: the paper's fillers carry a 32-bit zero, ours none; both keep float32 biases
    assert paper["pruned"] - ours["pruned"] == pytest.approx(((f_paper - f_ours) * index_bits + 32 * f_paper) / 8)
    if f_ours == 0:   # no filler in either: the biases differ (float32, float16), and the codebook
        used = len(w[w != 0].unique())   # ours: the values used; the paper's: all 2^1
        extra = (3 * (32 - 16) + 32 * ((2 if used else 0) - used)) / 8
        assert paper["quantized"] - ours["quantized"] == pytest.approx(extra)
        assert paper["huffman"] - ours["huffman"] == pytest.approx(extra)


def test_storage_table_totals_and_ratios():
    from collections import OrderedDict
    from torch import nn
    model = nn.Sequential(OrderedDict([("fc1", nn.Linear(20, 10)), ("fc2", nn.Linear(10, 3))]))
    with torch.no_grad():
        for m in model:
            m.weight.copy_(torch.where(torch.rand_like(m.weight) < 0.2, torch.sign(torch.randn_like(m.weight)), 0.0))
    t = dc.storage_table(model, {"fc1": 1, "fc2": 1})
    assert list(t.index) == ["fc1", "fc2", "total"]
    assert t.loc["total", "dense"] == 4 * (200 + 10 + 30 + 3)
    assert t.loc["fc1", "pruned"] == (t.loc["fc1", "nonzero"] * 32 + (t.loc["fc1", "nonzero"] + t.loc["fc1", "fillers"]) * 5) / 8 + 4 * 10
    assert t.loc["total", "huffman"] == t.loc["fc1", "huffman"] + t.loc["fc2", "huffman"]
    assert t.loc["fc2", "quantized"] == ((t.loc["fc2", "nonzero"] + t.loc["fc2", "fillers"]) * 5 + t.loc["fc2", "nonzero"] * 1
                                         + 32 * len(model.fc2.weight[model.fc2.weight != 0].unique())) / 8 + 2 * 3
    assert t.loc["total", "huffman x"] == pytest.approx(t.loc["total", "dense"] / t.loc["total", "huffman"])
    p = dc.storage_table(model, {"fc1": 1, "fc2": 1}, convention="paper")
    assert p.loc["total", "dense"] == t.loc["total", "dense"]
    assert p.loc["fc1", "huffman"] == dc.layer_storage(model.fc1.weight, model.fc1.bias, 1, 5, convention="paper")["huffman"]


def test_deep_compression_stages_keep_zeros_and_share_values():
    from compresslab.data import Dataset
    from compresslab.models import build_model
    g = torch.Generator().manual_seed(0)
    ds = Dataset("mnist", torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(64) % 10,
                 torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))
    model = build_model("lenet300", seed=0)
    loader = ds.loader("train", 32)
    dc.prune_and_retrain(model, loader, {"fc1": 0.9, "fc2": 0.5}, rounds=2, epochs=1, device="cpu")
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    zeros = model.fc1.weight == 0
    dc.share_weights(model, loader, {"fc1": 2, "fc2": 3}, epochs=1, device="cpu")
    assert torch.equal(model.fc1.weight == 0, zeros), "sharing keeps the pruned zeros and creates no new ones"
    assert len(model.fc1.weight[~zeros].unique()) <= 4 and len(model.fc2.weight[model.fc2.weight != 0].unique()) <= 8
    assert not any(hasattr(m, "parametrizations") for m in model.modules()), "plain weights again"
    assert torch.equal(model.fc1.bias, model.fc1.bias.half().float()), "biases as stored: float16"
