"""The notebook-11 checkers accept a right answer and reject the usual wrong ones with a hint."""

import pytest
import torch

from compresslab import grading, llm_pruning


def right(w, x, sparsity):
    """Wanda's mask as a student would write it: scores, then the k smallest of each row zeroed."""
    scores = w.abs() * x.norm(dim=0)
    k = int(sparsity * w.shape[1])
    mask = torch.ones_like(w)
    mask.scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)
    return mask


def global_threshold(w, x, sparsity):
    scores = w.abs() * x.norm(dim=0)
    return (scores > scores.flatten().kthvalue(int(sparsity * scores.numel())).values).float()


def not_implemented(*args):
    raise NotImplementedError


def test_a_right_mask_passes():
    assert "Wanda's mask" in grading.wanda_mask(right)


@pytest.mark.parametrize("fn,message", [
    (None, "no answer"),
    (not_implemented, "NotImplementedError"),
    (lambda w, x, s: right(w, torch.ones_like(x), s), "magnitude pruning"),
    (lambda w, x, s: right(w, x ** 2, s), "not its square"),
    (global_threshold, "within one output row"),
    (lambda w, x, s: right(w, x, s) * 2, "only 0 and 1"),
    (lambda w, x, s: right(w, x, s)[:, :-1], "shape"),
    (lambda w, x, s: llm_pruning.row_mask(llm_pruning.wanda_scores(w, x), s), "off limits"),
    (lambda w, x, s: right(w, x.flip(1), s), "other weights"),
])
def test_wrong_masks_are_rejected(fn, message):
    with pytest.raises(AssertionError, match=message):
        grading.wanda_mask(fn)


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"),
    ({"method": "rtn", "bits": 4}, "group_size"),
    ({"method": "hqq", "bits": 3, "group_size": 64}, "choose one of"),
    ({"method": "rtn", "bits": 1, "group_size": 64}, "between 2 and 8"),
    ({"method": "rtn", "bits": 3, "group_size": 128}, "divide 192"),
    ({"method": "gptq", "bits": 4, "group_size": 64}, "at most 3.6"),
])
def test_bits_plans_that_break_the_rules_are_rejected_before_any_evaluation(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.bits_plan(plan)


@pytest.mark.slow
def test_two_bits_fail_the_perplexity_bound_and_gptq_at_three_bits_passes():
    with pytest.raises(AssertionError, match="perplexity is"):
        grading.bits_plan({"method": "rtn", "bits": 2, "group_size": 64})
    assert "bits per weight" in grading.bits_plan({"method": "gptq", "bits": 3, "group_size": 64})
