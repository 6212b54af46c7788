"""The notebook-09 checkers accept a right answer and reject the usual wrong ones with a hint."""
import numpy as np
import pytest
import torch

from compresslab import coding, grading


def right_gaps(mask, index_bits):
    skip = 2 ** index_bits - 1
    positions = torch.nonzero(mask.flatten()).flatten()
    gaps = torch.diff(positions, prepend=torch.tensor([-1]))
    out = []
    for d in gaps.tolist():
        out += [0] * ((d - 1) // skip) + [d - (d - 1) // skip * skip]
    return out


def test_scalar_exercises():
    assert "3 fillers" in grading.filler_count((124 - 1) // (2 ** 5 - 1))
    assert "15 bits" in grading.huffman_length(5 * 1 + 2 * 2 + 1 * 3 + 1 * 3)


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (4, "own entry"), (123 / 31, "whole"),
                                            (2, "do not bridge"), ("3", "number")])
def test_filler_count_rejects(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.filler_count(answer)


def test_filler_count_names_the_paper_span():
    with pytest.raises(AssertionError, match="2\\^5 - 1 = 31"):
        grading.filler_count((96 - 1) // 32, gap=96)   # 95 // 31 = 3 fillers; 95 // 32 = 2


@pytest.mark.parametrize("answer,message", [(None, "no answer"), (18, "fixed-length"), (47, "table"),
                                            (9, "number of symbols"), (15.6, "entropy"), (16, "merge")])
def test_huffman_length_rejects(answer, message):
    with pytest.raises(AssertionError, match=message):
        grading.huffman_length(answer)


def test_the_reference_gaps_are_the_packages():
    for mask, b in grading.gap_cases():
        assert grading.reference_gaps(mask, b) == coding.relative_indices(mask, b).tolist() == right_gaps(mask, b)


@pytest.mark.parametrize("answer", [right_gaps, lambda m, b: np.array(right_gaps(m, b), dtype=np.int64),
                                    lambda m, b: torch.tensor(right_gaps(m, b), dtype=torch.long)])
def test_right_gap_encodings_pass(answer):
    assert "all 8 masks" in grading.gap_encoding(answer)


def stub(mask, index_bits):
    raise NotImplementedError


@pytest.mark.parametrize("wrong,message", [
    (stub, "NotImplementedError"),
    (lambda m, b: None, "list"),
    (lambda m, b: grading.reference_gaps(m, b, skip=2 ** b), "2\\^b - 1"),
    (lambda m, b: grading.reference_gaps(m, b, first_plus_one=False), "first gap"),
    (lambda m, b: grading.reference_gaps(m, b, fill_at_max=True), "still fits"),
    (lambda m, b: grading.reference_gaps(m, b, fillers=False), "fillers"),
    (lambda m, b: torch.nonzero(m.flatten()).flatten().tolist(), "positions|fit"),
    (lambda m, b: torch.tensor(right_gaps(m, b), dtype=torch.float32), "whole numbers"),
    (lambda m, b: coding.relative_indices(m, b), "off limits"),
])
def test_wrong_gap_encodings_are_rejected(wrong, message):
    with pytest.raises(AssertionError, match=message):
        grading.gap_encoding(wrong)


REFERENCE_PLAN = {"amounts": {"fc1": 0.7, "fc2": 0.5, "fc3": 0.5}, "bits": {"fc1": 4, "fc2": 4, "fc3": 4}}


def test_a_good_size_plan_passes():
    assert "KB" in grading.size_plan(REFERENCE_PLAN)


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"),
    ({"amounts": {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}, "bits": {"fc1": 8, "fc2": 8, "fc3": 8}}, "at most 60 KB"),
    ({"amounts": {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, "bits": {"fc1": 6, "fc2": 6, "fc3": 6}}, "validation points"),
    ({"amounts": {"fc1": 70, "fc2": 50, "fc3": 50}, "bits": {"fc1": 4, "fc2": 4, "fc3": 4}}, "percentage"),
    ({"amounts": {"fc1": 0.7, "fc2": 0.5, "fc3": 0.5}, "bits": {"fc1": 16, "fc2": 4, "fc3": 4}}, "1 to 8 bits"),
    ({"amounts": {"fc1": 0.7, "fc2": 0.5}, "bits": {"fc1": 4, "fc2": 4, "fc3": 4}}, "no entry"),
    ([0.7, 0.5, 0.5], "dict"),
])
def test_bad_size_plans_are_rejected(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.size_plan(plan)
