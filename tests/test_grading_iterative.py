"""The checkers of notebook 05 accept the right answers and reject the usual wrong ones with a hint."""
import pandas as pd
import pytest
import torch

import compresslab as cl
from compresslab import grading, pruning


# Exercise 1: AGP by hand
@pytest.mark.parametrize("s,message", [
    (None, "no answer"), ("0.7", "number"), (70.0, "percentage"),
    (0.8 - 0.8 * 0.5, "cubic"), (0.8 * 0.5 ** 3, "progress"), (0.8 - 0.8 * (1 - 350 / 500) ** 3, "t0"),
    (0.65, "not the AGP"),
])
def test_wrong_agp_values_are_rejected(s, message):
    with pytest.raises(AssertionError, match=message):
        grading.agp_by_hand(s)


def test_the_right_agp_value_passes():
    assert "step 350" in grading.agp_by_hand(0.8 + (0.0 - 0.8) * (1 - (350 - 100) / (10 * 50)) ** 3)


# Exercise 2: rounds of 20%
@pytest.mark.parametrize("n,message", [(None, "no answer"), (13, "more than 5%"), (15, "fewest"),
                                       (5, "shrink"), (13.4, "whole"), ([14], "number")])
def test_wrong_round_counts_are_rejected(n, message):
    with pytest.raises(AssertionError, match=message):
        grading.rounds_to_keep(n)


def test_the_right_round_count_passes():
    assert "14 rounds" in grading.rounds_to_keep(14)


# Exercise 3: limits read from a lottery table (written out: ticket holds, re-init drops at round 2)
LOTTERY = pd.DataFrame(
    [dict(round=r, remaining=0.8 ** r, init="winning ticket", seed=0, accuracy=a)
     for r, a in enumerate([95.0, 95.3, 95.2, 94.7, 94.4])]
    + [dict(round=r, remaining=0.8 ** r, init="random re-init", seed=s, accuracy=a - 0.1 * s)
       for r, a in enumerate([95.0, 94.8, 94.2, 94.0, 93.5]) for s in (0, 1, 2)])


def test_the_right_limits_pass():
    assert "ticket within" in grading.lottery_limits(0.8 ** 3, 0.8, LOTTERY)


@pytest.mark.parametrize("t,r,message", [
    (None, 0.8, "no answer"), (0.8, 0.8 ** 3, "swapped"), (1 - 0.8 ** 3, 0.8, "sparsity"),
    (51.2, 0.8, "percentage"), (0.8 ** 4, 0.8, "sparsest"), (0.8 ** 2, 0.8, "sparser round"),
    (0.8 ** 3, 0.8 ** 2, "below round 0"), (0.5, 0.8, "not one of"),
])
def test_wrong_limits_are_rejected(t, r, message):
    with pytest.raises(AssertionError, match=message):
        grading.lottery_limits(t, r, LOTTERY)


def test_a_lottery_that_is_not_a_table_is_rejected():
    with pytest.raises(AssertionError, match="lottery"):
        grading.lottery_limits(0.5, 0.8, LOTTERY.to_dict())


# Exercise 4: one prune-and-rewind round
def right(trained, init, masks, rate, share_of_remaining=True, signed=False, rewind=True, forget=False):
    new_masks, rewound = {}, {}
    for name, w in trained.items():
        alive = torch.ones_like(masks[name]) if forget else masks[name]
        k = round(rate[name] * (int(alive.sum()) if share_of_remaining else w.numel()))
        score = (w if signed else w.abs()).masked_fill(alive == 0, float("inf"))
        survivors = score[alive.bool()]
        threshold = torch.kthvalue(survivors, k).values if k else -float("inf")
        mask = ((score > threshold) & alive.bool()).float()
        new_masks[name] = mask
        rewound[name] = (init[name] if rewind else w) * mask
    return new_masks, rewound


def test_a_right_round_passes():
    assert "all 3 cases" in grading.prune_and_rewind(right)


def uses_the_package(trained, init, masks, rate):
    return {n: pruning.mask_lowest(w.abs(), 0.2) for n, w in trained.items()}, trained


def stub(trained, init, masks, rate):
    raise NotImplementedError


@pytest.mark.parametrize("fn,message", [
    (stub, "NotImplementedError"), (None, "no answer"),
    (lambda *a: right(*a, share_of_remaining=False), "remaining"),
    (lambda *a: right(*a, signed=True), "magnitude"),
    (lambda *a: right(*a, rewind=False), "rewind"),
    (lambda *a: right(*a, forget=True), "earlier rounds"),
    (lambda *a: (right(*a)[0], a[1]), "should be 0"),
    (lambda *a: right(*a)[0], "pair"),
    (lambda *a: ({n: m.tolist() for n, m in right(*a)[0].items()}, right(*a)[1]), "torch.Tensor"),
    (lambda *a: ({"fc1": right(*a)[0]["fc1"]}, right(*a)[1]), "no entry"),
    (uses_the_package, "switched off"),
])
def test_wrong_rounds_are_rejected(fn, message):
    with pytest.raises(AssertionError, match=message):
        grading.prune_and_rewind(fn)


def test_the_package_is_restored_after_the_check():
    with pytest.raises(AssertionError):
        grading.prune_and_rewind(uses_the_package)
    assert pruning.mask_lowest(torch.tensor([3.0, 1.0, 2.0]), 1).tolist() == [1.0, 0.0, 1.0]


# Exercise 5 (design): 97% sparse within 4.5 validation points
def test_a_fine_tuned_sparse_lenet_passes():
    m = pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.97)
    cl.fine_tune(m, grading.ft_subset().loader("train", 128, seed=1), 3, 0.05, progress=False)
    assert "97.0% of the weights zero" in grading.sparse_lenet(m)


@pytest.mark.parametrize("make,message", [
    (lambda: None, "no answer"), (lambda: cl.load_pretrained("lenet300", "cpu"), "at least 97%"),
    (lambda: pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.96), "at least 97%"),
    (lambda: pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.97), "points lost"),
    (lambda: cl.load_pretrained("lenet300", "cpu").state_dict(), "state_dict"),
    (lambda: cl.build_model("lenet5"), "LeNet-300-100"),
])
def test_wrong_models_are_rejected(make, message):
    with pytest.raises(AssertionError, match=message):
        grading.sparse_lenet(make())
