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


def test_the_packages_layer_is_no_shortcut():
    def shortcut(q_x, q_w, b_q, z_x, m0, n, z_y):
        return I.IntegerLayer(q_w, b_q, z_x, m0, n, z_y)(q_x)
    with pytest.raises(AssertionError, match="switched off"):
        grading.integer_linear(shortcut)
    q_x, q_w, b_q, z_x, m0, n, z_y = next(grading.integer_linear_cases())
    assert torch.equal(shortcut(q_x, q_w, b_q, z_x, m0, n, z_y).long(),
                       grading.reference_linear(q_x, q_w, b_q, z_x, m0, n, z_y))  # restored afterwards


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



# 06a, exercise 1: scale and zero point
X = torch.tensor([-0.65, 1.9, 0.9, 2.4, -1.1])
S_RIGHT = (2.4 + 1.1) / 15
Z_RIGHT = round(1.1 / S_RIGHT)
Q_RIGHT = torch.clamp(torch.round(X / S_RIGHT) + Z_RIGHT, 0, 15)


def test_the_right_scale_zero_point_and_codes_pass():
    assert "right" in grading.scale_zero_point(X, S_RIGHT, Z_RIGHT, Q_RIGHT)
    assert "right" in grading.scale_zero_point(X, torch.tensor(S_RIGHT), Z_RIGHT, Q_RIGHT.int())


@pytest.mark.parametrize("S,Z,q,message", [
    (None, Z_RIGHT, Q_RIGHT, "no answer"),
    (3.5 / 16, Z_RIGHT, Q_RIGHT, "2\\^b - 1"),
    (2.4 / 7, 0, Q_RIGHT, "symmetric"),
    (S_RIGHT, 1.1 / S_RIGHT, Q_RIGHT, "integer"),
    (S_RIGHT, -Z_RIGHT, Q_RIGHT, "sign"),
    (S_RIGHT, int(1.1 / S_RIGHT), Q_RIGHT, "truncate"),
    (S_RIGHT, Z_RIGHT, torch.round(X / S_RIGHT), "zero point"),
    (S_RIGHT, Z_RIGHT, torch.floor(X / S_RIGHT) + Z_RIGHT, "nearest"),
    (S_RIGHT, Z_RIGHT, [5, 12, 9, 15, 0], "torch.Tensor"),
    (S_RIGHT, Z_RIGHT, Q_RIGHT[:4], "shape"),
])
def test_wrong_scales_zero_points_and_codes_are_rejected(S, Z, q, message):
    with pytest.raises(AssertionError, match=message):
        grading.scale_zero_point(X, S, Z, q)


# 06a, exercise 2: BatchNorm folding
def conv_bn():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(6, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(1e-4, 1e-3)  # small variances: forgetting eps shows
    return conv, bn.eval()


def folded(conv, bn, eps=True, axis=0, mean=True):
    a = bn.weight / torch.sqrt(bn.running_var + (bn.eps if eps else 0))
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    return conv.weight * a.view(shape), bn.bias - (bn.running_mean * a if mean else 0)


def test_the_right_folding_passes():
    conv, bn = conv_bn()
    assert "all 6 channels" in grading.folded_batchnorm(*folded(conv, bn), conv, bn)


@pytest.mark.parametrize("kw,message", [(dict(eps=False), "eps"), (dict(axis=1), "output"), (dict(mean=False), "mean")])
def test_wrong_foldings_are_rejected(kw, message):
    conv, bn = conv_bn()
    with pytest.raises(AssertionError, match=message):
        grading.folded_batchnorm(*folded(conv, bn, **kw), conv, bn)


def test_a_folding_stub_or_a_wrong_shape_is_rejected():
    conv, bn = conv_bn()
    w_f, b_f = folded(conv, bn)
    with pytest.raises(AssertionError, match="no answer"):
        grading.folded_batchnorm(None, b_f, conv, bn)
    with pytest.raises(AssertionError, match="shape"):
        grading.folded_batchnorm(w_f, b_f[:, None], conv, bn)


# 06b, exercise 1: bytes of a 4-bit LeNet-300-100
SHAPES = [(300, 784), (100, 300), (10, 100)]


def test_the_right_byte_count_passes():
    total = sum(o * i * 4 / 8 + o * 4 + o * 4 for o, i in SHAPES)
    assert "bytes" in grading.packed_bytes(total)


@pytest.mark.parametrize("total,message", [
    (None, "no answer"), ("133k", "number"),
    (sum(o * i * 4 / 8 for o, i in SHAPES), "scales"),
    (sum(o * i * 4 / 8 + o * 4 for o, i in SHAPES), "scale \\*and\\* a float32 bias"),
    (sum(o * i * 4 + o * 32 + o * 32 for o, i in SHAPES), "bits"),
    (sum(o * i * 4 / 8 + i * 4 + o * 4 for o, i in SHAPES), "output"),
    (sum(o * i * 4 + o * 4 for o, i in SHAPES), "fp32"),
    (sum(o * i * 4 / 8 + o * 4 + o * 4 for o, i in SHAPES) + 1, "too high"),
])
def test_wrong_byte_counts_are_rejected(total, message):
    with pytest.raises(AssertionError, match=message):
        grading.packed_bytes(total)


# 06b, exercise 2: a k-means codebook
def nearest(w, c):
    return (w[:, None] - c[None, :]).abs().argmin(1)


def kmeans(w, k, iters=30, start=None, labels_before=False):
    c = torch.linspace(float(w.min()), float(w.max()), k) if start is None else start(w, k)
    labels = nearest(w, c)
    for _ in range(iters):
        labels = nearest(w, c)
        counts = torch.bincount(labels, minlength=k)
        c = torch.where(counts > 0, torch.zeros(k).index_add_(0, labels, w) / counts.clamp(min=1), c)
    return c, labels if labels_before else nearest(w, c)


def test_a_right_kmeans_passes_and_reports_the_error_next_to_uniform():
    torch.manual_seed(1)
    assert "all 4 cases" in grading.kmeans_1d(kmeans, torch.randn(2000))
    assert "all 3 cases" in grading.kmeans_1d(kmeans)


def no_iterations(w, k, iters=30):
    return kmeans(w, k, 0)


def random_start(w, k, iters=30):
    return kmeans(w, k, iters, start=lambda w, k: w[torch.randperm(len(w))[:k]].sort().values)


def nan_for_empty(w, k, iters=30):
    c, labels = kmeans(w, k, iters)
    counts = torch.bincount(labels, minlength=k)
    return torch.where(counts > 0, c, torch.tensor(float("nan"))), labels


def stub(w, k, iters=30):
    raise NotImplementedError


@pytest.mark.parametrize("fn,message", [
    (stub, "NotImplementedError"), (None, "no answer"),
    (no_iterations, "evenly spaced start"),
    (lambda w, k, iters=30: kmeans(w, k, iters, labels_before=True), "before the last update"),
    (random_start, "at random"),
    (lambda w, k, iters=30: kmeans(w, k, iters + 1), "one round off"),
    (nan_for_empty, "empty cluster"),
    (lambda w, k, iters=30: kmeans(w, k, iters)[0], "pair"),
    (lambda w, k, iters=30: (kmeans(w, k, iters)[0].tolist(), kmeans(w, k, iters)[1]), "torch.Tensor"),
])
def test_wrong_kmeans_are_rejected(fn, message):
    with pytest.raises(AssertionError, match=message):
        grading.kmeans_1d(fn)


# The design tasks: scored on 2,000 validation images (an evaluation takes 2-3 s: the failing
# evaluations are `slow`; every other wrong plan is refused before any evaluation)
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]


def test_the_fewest_activation_bits_pass():
    assert "fewest" in grading.activation_bits({"act_bits": 5, "calibration_batches": 1})


@pytest.mark.slow
def test_a_narrower_activation_width_loses_too_much():
    with pytest.raises(AssertionError, match="loses"):
        grading.activation_bits({"act_bits": 4, "calibration_batches": 1})


@pytest.mark.slow
def test_a_wider_activation_width_than_needed_is_refused():
    """8 bits stays within a point, but so does 7 (measured): the check asks for fewer bits."""
    with pytest.raises(AssertionError, match="7-bit activations .* also stay within.*scan fewer bits"):
        grading.activation_bits({"act_bits": 8, "calibration_batches": 2})


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"), ({"act_bits": 5}, "no entry"), ({"act_bits": 5, "calibration_batches": 64}, "32 batches"),
    ({"act_bits": 5.5, "calibration_batches": 2}, "whole"), ([5, 4], "dict"),
])
def test_wrong_activation_plans_are_rejected_before_any_evaluation(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.activation_bits(plan)


def test_a_mixed_plan_under_the_budget_and_within_the_drop_passes():
    plan = {n: 4 for n in LAYERS} | {"conv6": 3, "fc": 3}
    assert "bits per weight" in grading.mixed_precision(plan)


@pytest.mark.slow
def test_uniform_3_bits_meets_the_budget_but_loses_too_much():
    with pytest.raises(AssertionError, match="points lost"):
        grading.mixed_precision({n: 3 for n in LAYERS})


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"), ({n: 32 for n in LAYERS}, "2 to 8"), ({n: 4 for n in LAYERS}, "averages"),
    ({n: 4 for n in LAYERS[:-1]}, "no entry"), ({n: 3.5 for n in LAYERS}, "whole"),
    (torch.full((7,), 3), "dict"),
])
def test_wrong_mixed_plans_are_rejected_before_any_evaluation(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.mixed_precision(plan)
