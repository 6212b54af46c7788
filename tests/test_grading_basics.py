"""Notebook 00's checkers accept the reference answers and reject the usual wrong ones with a hint."""
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresslab import grading, metrics, zoo


def test_parameters_by_hand():
    assert "right" in grading.lenet5_parameters(
        (20 * 1 * 5 * 5 + 20) + (50 * 20 * 5 * 5 + 50) + (500 * 800 + 500) + (10 * 500 + 10))
    for wrong, hint in [(None, "no answer"), (20 * 25 + 50 * 20 * 25 + 500 * 800 + 10 * 500, "weights only"),
                        ((20 * 25 + 20) + (50 * 500 + 50) + (500 * 1250 + 500) + (10 * 500 + 10), "4x4"),
                        (431_081, "not LeNet-5"), (431_080.5, "whole"), ("431080", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.lenet5_parameters(wrong)


def test_flops_by_hand():
    assert "right" in grading.lenet300_flops(64 * 2 * (784 * 300 + 300 * 100 + 100 * 10))
    for wrong, hint in [(None, "no answer"), (64 * (784 * 300 + 300 * 100 + 100 * 10), "multiply-add"),
                        (2 * (784 * 300 + 300 * 100 + 100 * 10), "batch size"),
                        (64 * 2 * (784 * 300 + 300 * 100 + 100 * 10 + 410), "biases"), (1.0, "not it"),
                        ([34_078_720], "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.lenet300_flops(wrong)


def test_break_even():
    assert "right" in grading.csr_break_even(1 - 32 / 48)
    for wrong, hint in [(None, "no answer"), (32 / 48, "kept"), (0.5, "32-bit"), (0.33, "rounded"),
                        (100 / 3, "percentage"), (0.1, "compare"), (torch.ones(2), "one number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.csr_break_even(wrong)


def right_csr(w):
    nz = w != 0
    values, columns = w[nz], nz.nonzero()[:, 1]
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), nz.sum(1).cumsum(0)])
    index = torch.uint8 if w.shape[1] <= 256 else torch.int16
    return values, columns.to(index), ptr.to(torch.int32)


def test_a_right_csr_encoder_passes_and_matches_torch():
    assert "all 5" in grading.csr_encoding(right_csr)
    w = next(iter(grading.csr_cases()))
    values, columns, ptr = right_csr(w)
    ref = w.to_sparse_csr()
    assert torch.equal(values, ref.values()) and torch.equal(columns.long(), ref.col_indices())


def not_implemented(w):
    raise NotImplementedError


@pytest.mark.parametrize("wrong,hint", [
    (not_implemented, "NotImplementedError"),
    (lambda w: None, "tuple"),
    (lambda w: (w.flatten(), torch.arange(w.numel()), torch.arange(w.shape[0] + 1)), "non-zeros only"),
    (lambda w: (lambda v, c, p: (v, c, p[1:]))(*right_csr(w)), "rows \\+ 1"),
    (lambda w: (lambda v, c, p: (v, c.long(), p))(*right_csr(w)), "bytes"),
    (lambda w: (lambda v, c, p: (v, c, p.long()))(*right_csr(w)), "int32"),
    (lambda w: (lambda v, c, p: (v, c.flip(0), p))(*right_csr(w)), "decod"),
    (lambda w: (lambda v, c, p: (v.double(), c, p))(*right_csr(w)), "float32"),
])
def test_wrong_csr_encoders_are_rejected(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        grading.csr_encoding(wrong)


def global_pruned(amount):
    m = zoo.load_pretrained("lenet300", "cpu")
    prune.global_unstructured([(l, "weight") for l in metrics.prunable_layers(m).values()],
                              prune.L1Unstructured, amount=amount)
    return m


def test_small_file_design():
    assert "on target" in grading.small_file(global_pruned(0.8))
    for wrong, hint in [(None, "no answer"), (zoo.load_pretrained("lenet300", "cpu"), "prune more"),
                        (global_pruned(0.95), "prune less"), (torch.zeros(3), "Module"),
                        ({"fc1.weight": torch.zeros(3)}, "state_dict"), (nn.Linear(3, 2), "does not run")]:
        with pytest.raises(AssertionError, match=hint):
            grading.small_file(wrong)
