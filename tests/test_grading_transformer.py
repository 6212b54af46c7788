"""The notebook-10 checkers accept a right answer and reject the usual wrong ones with a hint."""

import pytest
import torch

from compresslab import grading, tome
from compresslab.grading.transformer import merge_cases, reference_merge


def right(x, size, keys, r):
    """A merge step written as a student would: one image at a time, with index_add."""
    a, b = torch.nn.functional.normalize(keys[:, ::2], dim=-1), torch.nn.functional.normalize(keys[:, 1::2], dim=-1)
    best, partner = (a @ b.transpose(-1, -2)).max(-1)
    order = best.argsort(-1, descending=True)
    xs_out, sizes_out = [], []
    for i in range(x.shape[0]):
        src, dst = x[i, ::2] * size[i, ::2, None], x[i, 1::2] * size[i, 1::2, None]
        s_src, s_dst = size[i, ::2], size[i, 1::2]
        moving, into = order[i, :r], partner[i, order[i, :r]]
        dst, s_dst = dst.index_add(0, into, src[moving]), s_dst.index_add(0, into, s_src[moving])
        stay = order[i, r:]
        s = torch.cat([s_src[stay], s_dst])
        xs_out.append(torch.cat([src[stay], dst]) / s[:, None])
        sizes_out.append(s)
    return torch.stack(xs_out), torch.stack(sizes_out)


def test_the_reference_is_the_packages_merge():
    """The checker's slow reference and tome.merge_tokens (one head: its keys are the metric) agree."""
    for x, size, keys, r in merge_cases():
        got = tome.merge_tokens(x, size, keys[:, None], r)
        assert grading.transformer.same_tokens(got, reference_merge(x, size, keys, r))


def test_a_right_merge_passes():
    assert "bipartite soft matching" in grading.merge_step(right)


def sums(x, s, k, r):
    gx, gs = right(x, s, k, r)
    return gx * gs[..., None], gs


def not_implemented(*args):
    raise NotImplementedError


@pytest.mark.parametrize("fn,message", [
    (None, "no answer"),
    (not_implemented, "NotImplementedError"),
    (lambda x, s, k, r: reference_merge(x, s, k, r, weighted=False), "size-weighted mean"),
    (lambda x, s, k, r: reference_merge(x, s, k, r, similarity="dot"), "cosine"),
    (lambda x, s, k, r: reference_merge(x, s, k, r, best=False), "highest"),
    (sums, "divide each by its new size"),
    (lambda x, s, k, r: right(x, s, k, r)[0], "pair"),
    (lambda x, s, k, r: (x[:, r:], s[:, r:]), "add up"),
    (lambda x, s, k, r: (x[:, :-1], s[:, :-1]), "should leave"),
    (lambda x, s, k, r: tome.merge_tokens(x, s, k[:, None], r), "off limits"),
])
def test_wrong_merges_are_rejected(fn, message):
    with pytest.raises(AssertionError, match=message):
        grading.merge_step(fn)


def test_a_merge_that_edits_its_input_is_rejected():
    def in_place(x, s, k, r):
        out = right(x, s, k, r)
        x.zero_()
        return out
    with pytest.raises(AssertionError, match="in place"):
        grading.merge_step(in_place)


def test_attention_flops():
    assert "3,145,728" in grading.attention_flops(2 * 2 * 64 * 64 * 6 * 32)


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (2 * 64 * 64 * 6 * 32, "two products"),
                                            (4 * 64 * 6 * 32, "N\\^2"), (4 * 64 * 64 * 32, "one head"),
                                            (4 * 64 * 64 * 192 * 6, "H d is the width"), (123, "not the count"),
                                            (1.5, "whole")])
def test_wrong_attention_flops_are_rejected(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.attention_flops(answer)


@pytest.mark.slow
def test_a_good_tome_plan_passes():
    assert "fewer FLOPs" in grading.tome_plan({"r": 5, "keep_heads": None})


@pytest.mark.slow
@pytest.mark.parametrize("plan,message", [
    (None, "no answer"),
    ({"r": 0, "keep_heads": None}, "at least 1.3x"),                                    # nothing removed
    ({"r": 4, "keep_heads": [[0, 1, 2]] * 6}, "validation points"),                    # half of the heads: too costly
    ({"r": 40, "keep_heads": None}, "between 0 and 32"),
    ({"r": 8, "keep_heads": [[0, 9]] + [[0]] * 5}, "keep_heads"),
    ({"r": 8}, "no entry"),
])
def test_bad_tome_plans_are_rejected(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.tome_plan(plan)
