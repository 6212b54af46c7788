"""The notebook-08 checkers accept a right answer and reject the usual wrong ones with a hint."""

import pytest
import torch
from torch import nn

from compresslab import factorization as fz, grading


def right_svd(layer, r):
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    first, second = nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(vh[:r])
        second.weight.copy_(u[:, :r] * s[:r])
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def variant(layer, r, first_w, second_w, bias1=False, rank=None):
    """Two layers with the given factor weights (functions of u, s, vh)."""
    rank = r if rank is None else rank
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    a, b = first_w(u, s, vh, rank), second_w(u, s, vh, rank)
    first = nn.Linear(a.shape[1], a.shape[0], bias=bias1)
    second = nn.Linear(b.shape[1], b.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if layer.bias is not None and second.bias.shape == layer.bias.shape:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


V = lambda u, s, vh, r: vh[:r]
US = lambda u, s, vh, r: u[:, :r] * s[:r]


def test_scalar_exercises():
    assert "216" in grading.factorization_pays((300 * 784 - 1) // (300 + 784))
    s = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5])   # energies 16, 9, 4, 1, 0.25: 90% needs rank 3
    assert "rank 3" in grading.energy_rank(3, s, 0.9)
    conv = nn.Conv2d(128, 256, 3)
    assert "114,688" in grading.tucker2_weights(128 * 64 + 64 * 128 * 9 + 128 * 256, conv, (128, 64))


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (217, "more than"), (215, "so does"),
                                            (216.9, "whole"), ("216", "number")])
def test_factorization_pays_rejects(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.factorization_pays(answer)


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (2, "less than"), (5, "smallest"),
                                            (0.9, "fraction"), (99, "not a rank")])
def test_energy_rank_rejects(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.energy_rank(answer, torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5]), 0.9)


def test_energy_rank_names_the_amplitude_mistake():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5])   # sum s reaches 90% at rank 4, sum s^2 at rank 3
    with pytest.raises(AssertionError, match="not of sum s_i"):
        grading.energy_rank(4, s, 0.9)


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (128 * 64 + 64 * 128 + 128 * 256, "k x k"),
                                            (128 * 128 + 64 * 128 * 9 + 64 * 256, "swapped"),
                                            (128 * 64 + 64 * 128 * 9 + 128 * 256 + 256, "biases"),
                                            (256 * 128 * 9, "original"), (12345, "not the chain")])
def test_tucker2_weights_rejects(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.tucker2_weights(answer, nn.Conv2d(128, 256, 3), (128, 64))


def test_tucker2_weights_wants_a_conv():
    with pytest.raises(AssertionError, match="Conv2d"):
        grading.tucker2_weights(1, torch.zeros(3, 3), (1, 1))


def test_the_reference_svd_is_the_packages():
    for layer, r in grading.svd_layer_cases():
        x = torch.randn(3, layer.in_features)
        assert torch.allclose(right_svd(layer, r)(x), fz.svd_linear(layer, r)(x), atol=1e-4)


def test_a_right_truncated_svd_passes():
    assert "all 5" in grading.truncated_svd(right_svd)


def stub(layer, r):
    raise NotImplementedError


@pytest.mark.parametrize("wrong,message", [
    (stub, "NotImplementedError"),
    (lambda layer, r: None, "nn.Sequential"),
    (lambda layer, r: variant(layer, r, lambda u, s, vh, r: (u[:, :r] * s[:r]).T, lambda u, s, vh, r: vh[:r].T), "swapped"),
    (lambda layer, r: variant(layer, r, V, lambda u, s, vh, r: u[:, :r]), "singular values are missing"),
    (lambda layer, r: variant(layer, r, V, US, bias1=True), "bias"),
    (lambda layer, r: variant(layer, r, V, US, rank=r + 1), "off by one"),
    (lambda layer, r: variant(layer, r, V, US, rank=r - 1) if r > 1 else variant(layer, r, V, US, rank=2), "off by one"),
    (lambda layer, r: variant(layer, r, lambda u, s, vh, r: vh[-r:], lambda u, s, vh, r: u[:, -r:] * s[-r:]), "smallest"),
    (lambda layer, r: variant(layer, r, lambda u, s, vh, r: s[:r, None] * vh[:r], US), "both"),
    (lambda layer, r: fz.svd_linear(layer, r), "off limits"),
])
def test_wrong_truncated_svds_are_rejected(wrong, message):
    with pytest.raises(AssertionError, match=message):
        grading.truncated_svd(wrong)


def test_a_bias_left_out_is_named():
    def no_bias(layer, r):
        m = right_svd(layer, r)
        m[1].bias = None
        return m
    with pytest.raises(AssertionError, match="no bias"):
        grading.truncated_svd(no_bias)


def test_the_package_is_restored_after_the_check():
    with pytest.raises(AssertionError):
        grading.truncated_svd(lambda layer, r: fz.svd_linear(layer, r))
    assert isinstance(fz.svd_linear(nn.Linear(4, 3), 2), nn.Sequential)


def test_a_good_rank_plan_passes():
    assert "fewer weights" in grading.rank_plan({"fc1": 50, "fc2": 24, "fc3": None})


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"),
    ({"fc1": None, "fc2": None, "fc3": None}, "fewer; at least"),           # nothing factorized
    ({"fc1": 32, "fc2": 12, "fc3": 8}, "validation points"),              # too low
    ({"fc1": 301, "fc2": 24, "fc3": None}, "between 1 and 300"),
    ({"fc1": 50, "fc2": 24}, "no entry"),
    (torch.tensor([50, 24, 10]), "dict"),
])
def test_bad_rank_plans_are_rejected(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.rank_plan(plan)
