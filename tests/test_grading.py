"""The exercise checkers accept a right answer and reject the usual wrong ones with a hint."""
import pytest
import torch

from compresslab import grading, integer as I


def right(q_x, q_w, b_q, z_x, m0, n, z_y):
    acc = b_q.long() + (q_x.long() - z_x) @ q_w.long().T
    return (((acc * m0 + (1 << (n - 1))) >> n) + z_y).clamp(0, 255)


def test_the_reference_is_the_packages_integer_layer():
    for q_x, q_w, b_q, z_x, m0, n, z_y in grading.integer_linear_cases():
        layer = I.IntegerLayer(q_w, b_q, z_x, m0, n, z_y)
        assert torch.equal(layer(q_x).long(), grading.reference_linear(q_x, q_w, b_q, z_x, m0, n, z_y))


def test_a_right_integer_linear_layer_passes():
    assert "all 5" in grading.integer_linear(right)


@pytest.mark.parametrize("wrong,message", [
    (lambda q_x, q_w, b_q, z_x, m0, n, z_y: right(q_x, q_w, b_q, 0, m0, n, z_y), "zero point"),
    (lambda q_x, q_w, b_q, z_x, m0, n, z_y: ((b_q.long() + (q_x.long() - z_x) @ q_w.long().T) * m0 >> n) + z_y,
     "clamp|round"),
    (lambda q_x, q_w, b_q, z_x, m0, n, z_y: right(q_x, q_w, b_q, z_x, m0, n, z_y).float(), "integers"),
    (lambda q_x, q_w, b_q, z_x, m0, n, z_y: right(q_x, q_w, torch.zeros_like(b_q), z_x, m0, n, z_y), "differ"),
    (lambda q_x, q_w, b_q, z_x, m0, n, z_y: right(q_x, q_w, b_q, z_x, m0, n, z_y).T, "Shape"),
    (lambda *args: None, "tensor"),
])
def test_wrong_layers_are_rejected_with_a_hint(wrong, message):
    with pytest.raises(AssertionError, match=message):
        grading.integer_linear(wrong)

