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


def test_relative_indices_han_figure_3():
    """Han et al.'s example: 3-bit gaps, nonzeros at positions 1, 4 and 15 (gap 11 > 7): one filler."""
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 4, 15]] = True
    assert coding.relative_indices(mask, 3).tolist() == [2, 3, 0, 4]
    with pytest.raises(ValueError, match="index_bits"):
        coding.relative_indices(mask, 0)


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
