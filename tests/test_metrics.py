import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresslab import metrics
from compresslab.models import build_model


def sparse_linear():
    """A 4x5 linear layer with 6 non-zero weights and a bias of 4."""
    layer = nn.Linear(5, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = layer.weight[1, 2] = layer.weight[1, 3] = 1.0
        layer.weight[2, 4] = layer.weight[3, 0] = layer.weight[3, 1] = -2.0
        layer.bias.fill_(0.5)
    return layer


def test_counts_and_sparsity_of_a_known_sparse_matrix():
    layer = sparse_linear()
    assert metrics.count_parameters(layer) == 24
    assert metrics.count_nonzero(layer) == 10
    assert metrics.sparsity(layer.weight) == pytest.approx(14 / 20)
    table = metrics.layer_table(nn.Sequential(layer))
    assert table.loc["0", "nonzero"] == 6 and table.loc["0", "kept_%"] == pytest.approx(30.0)


def test_sizes_of_a_known_sparse_matrix():
    layer = sparse_linear()
    assert metrics.model_size(layer, "dense") == 24 * 4
    assert metrics.model_size(layer, "dense", bits=8) == 24
    # CSR: 6 values * (32 + 8 index bits) / 8 + 5 row pointers * 4 bytes; bias dense 4 * 4.
    assert metrics.model_size(layer, "sparse") == 6 * 5 + 5 * 4 + 16
    assert metrics.model_size(layer, "gzip") < metrics.model_size(layer, "dense") + 64
    with pytest.raises(ValueError, match="Unknown storage"):
        metrics.model_size(layer, "zip")


def test_index_bits():
    assert metrics.index_bits(5) == 8 and metrics.index_bits(256) == 8
    assert metrics.index_bits(257) == 16 and metrics.index_bits(800) == 16
    assert metrics.index_bits(70_000) == 32


def test_pruned_weights_are_counted_through_torch_prune():
    layer = nn.Linear(10, 10)
    prune.l1_unstructured(layer, "weight", amount=0.3)
    assert metrics.count_parameters(layer) == 110
    assert metrics.count_nonzero(layer) == 110 - 30


def test_linear_flops_by_hand():
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    # a multiply-add is 2 FLOPs; torch's counter counts the matrix products
    assert metrics.flops(model, (784,)) == 2 * (784 * 300 + 300 * 10)
    assert metrics.flops(model, (784,), batch_size=8) == 8 * 2 * (784 * 300 + 300 * 10)


def test_conv_flops_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 20, 5))
    assert metrics.flops(model, (1, 28, 28)) == 2 * 20 * 24 * 24 * 25


def test_effective_flops_scale_with_density():
    model = nn.Sequential(nn.Linear(100, 100))
    dense = metrics.flops(model, (100,))
    prune.l1_unstructured(model[0], "weight", amount=0.75)
    assert metrics.effective_flops(model, (100,)) == pytest.approx(dense / 4)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(3, 32, 32\)"):
        metrics.flops(build_model("lenet5"), (3, 32, 32))
    with pytest.raises(ValueError, match="input_shape must be"):
        metrics.latency(build_model("lenet5"), (0, 28, 28))


def test_latency_and_compare_table():
    models = {"lenet300": build_model("lenet300"), "lenet5": build_model("lenet5")}
    lat = metrics.latency(models["lenet5"], (1, 28, 28), batch_size=4, min_run_time=0.05)
    assert lat["median_ms"] > 0 and lat["runs"] >= 1
    table = metrics.compare(models, (1, 28, 28), latency_batches=(1,), min_run_time=0.05)
    assert list(table.index) == ["lenet300", "lenet5"]
    assert table.loc["lenet300", "params"] == 266_610
    assert table.loc["lenet5", "dense_KB"] == pytest.approx(431_080 * 4 / 1000)
    assert table.loc["lenet5", "MFLOPs"] > table.loc["lenet300", "MFLOPs"]


def test_speed_table_compares_with_the_first_model():
    small = build_model("lenet300")
    models = {"lenet5": build_model("lenet5"), "lenet300": small, "lenet300 fp16": copy.deepcopy(small).half()}
    table = metrics.speed_table(models, (1, 28, 28), batch_sizes=(1, 8), rounds=2, min_run_time=0.02)
    assert len(table) == 8 and set(table.batch) == {1, 8}  # 3 models and the A/A control
    first = table[table.model == "lenet5"]
    assert (first["speed-up x"] == 1).all() and (first["speed-up / FLOP reduction"] == 1).all()
    row = table[(table.model == "lenet300") & (table.batch == 8)].iloc[0]
    assert row["speed-up x"] == pytest.approx(first[first.batch == 8]["best ms"].item() / row["best ms"])
    assert (table["spread ms"] >= 0).all()


def test_confusion_matrix():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 1.0]])
    labels = torch.tensor([0, 1, 2, 2])
    cm = metrics.confusion_matrix(logits, labels, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_speed_table_times_an_aa_control_and_judges_against_its_noise():
    models = {"lenet5": build_model("lenet5"), "lenet300": build_model("lenet300")}
    table = metrics.speed_table(models, (1, 28, 28), batch_sizes=(1, 8), rounds=3, min_run_time=0.02)
    control = table[table.model == metrics.aa_name("lenet5")]
    assert len(table) == 6 and len(control) == 2
    assert (table["speed-up lo"] <= table["speed-up hi"]).all()
    assert (table["noise +/-"] >= 0).all()
    # The A/A ratios define the noise band, so the control itself is never "faster" or "slower".
    for b in (1, 8):
        assert metrics.verdict(table, metrics.aa_name("lenet5"), b).startswith("a tie")
    assert "lenet5 again" not in metrics.speed_table(models, (1, 28, 28), (1,), 1, 0.02, control=False).model.values


def test_verdict_calls_a_speed_up_inside_the_noise_a_tie():
    speed = pd.DataFrame({"model": ["a", "b", "c", "d"], "batch": [1] * 4, "speed-up x": [1.0, 1.1, 1.3, 0.7],
                          "noise +/-": [0.15] * 4})
    assert metrics.verdict(speed, "b", 1).startswith("a tie")
    assert metrics.verdict(speed, "c", 1) == "1.30x faster"
    assert metrics.verdict(speed, "d", 1) == "0.70x (slower)"


def test_binomial_standard_error():
    assert metrics.binomial_se(88.0, 2000) == pytest.approx(0.7266, abs=1e-3)
    assert metrics.binomial_se(100.0, 10) == 0.0
    with pytest.raises(ValueError):
        metrics.binomial_se(50.0, 0)
