"""A property-based sweep of the public API with bad and edge-case inputs.

Every call either returns a correct result (an invariant is checked) or raises the error the
rule of ``compresslab.checks`` prescribes, with a message that names the argument: TypeError
for a wrong type (a string where a number belongs, a bool where an integer belongs), ValueError
for a wrong value (out of range, unknown choice, NaN). Never accepted: an error from deep
inside torch, NaN / inf results, or a silently wrong model.
"""
import copy
import math
from collections import OrderedDict

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from compresslab import coding, deep_compression as dc, distillation as kd, factorization as fz
from compresslab import checks, metrics, pruning, quantization as Q, structured

FAST = settings(max_examples=60, deadline=None)
FEW = settings(max_examples=20, deadline=None)
NAN, INF = float("nan"), float("inf")

# Any Python value a caller might pass where a number is expected.
odd_values = st.sampled_from([None, "0.5", True, False, NAN, INF, -INF, [0.5], torch.tensor(0.5)])
amounts = st.one_of(st.floats(-0.5, 1.5), st.integers(-3, 40), odd_values,
                    st.sampled_from([0.0, 1.0, 0, -1e-9, 1 + 1e-9]))
bit_widths = st.one_of(st.integers(-2, 20), st.sampled_from([8.0, 4.5, "8", None, True, NAN]))
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def pruned_count(amount, n):
    """The documented meaning of ``amount``: a float is a fraction in [0, 1] (rounded as torch
    rounds), an int a count in [0, n]; anything else is refused (None here)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        return None
    if isinstance(amount, int):
        return amount if 0 <= amount <= n else None
    return round(amount * n) if 0 <= amount <= 1 else None


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_integer(v):
    return isinstance(v, int) and not isinstance(v, bool)


def amount_error(amount, n):
    """The error a bad ``amount`` must raise (None: it is a valid amount for n weights)."""
    if not is_number(amount):
        return TypeError
    return None if pruned_count(amount, n) is not None else ValueError


def first(*errors):
    """Checks run in order: the first failing one decides the exception."""
    return next((e for e in errors if e is not None), None)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(6, 5)), ("relu", nn.ReLU()), ("fc2", nn.Linear(5, 3))]))


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(2, 4, 3)), ("bn1", nn.BatchNorm2d(4)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 5, 3)), ("bn2", nn.BatchNorm2d(5)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(5 * 2 * 2, 3)),
    ])).eval()


def distinct(n, seed=0):
    """n distinct nonzero magnitudes with random signs, in random order (no ties to break)."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.arange(1, n + 1, dtype=torch.float32) * 0.25)[torch.randperm(n, generator=g)]
    return w * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)


def not_pruned(model):
    return not any(hasattr(m, "weight_mask") for m in model.modules())

# ---------------------------------------------------------------- the shared checks themselves


@pytest.mark.parametrize("call,error,message", [
    (lambda: checks.fraction("0.5", "amount"), TypeError, "amount must be a fraction in [0, 1], e.g. 0.5; got '0.5'."),
    (lambda: checks.fraction(1.5, "amount"), ValueError, "amount must be a fraction in [0, 1], e.g. 0.5; got 1.5."),
    (lambda: checks.fraction(NAN, "amount"), ValueError, "amount must be a fraction in [0, 1], e.g. 0.5; got nan."),
    (lambda: checks.number(None, "T", 0.01, 100, example=4), TypeError, "T must be a number in [0.01, 100], e.g. 4; got None."),
    (lambda: checks.number(0, "p", 0, low_open=True), ValueError, "p must be a number > 0; got 0."),
    (lambda: checks.integer(True, "bits", 1, 16, example=8), TypeError, "bits must be an integer in [1, 16], e.g. 8; got True."),
    (lambda: checks.integer(4.0, "bits", 1, 16), TypeError, "bits must be an integer in [1, 16]; got 4.0."),
    (lambda: checks.integer(17, "bits", 1, 16), ValueError, "bits must be an integer in [1, 16]; got 17."),
    (lambda: checks.integer(0, "grid", 1), ValueError, "grid must be an integer >= 1; got 0."),
    (lambda: checks.one_of("log", "scheme", ("uniform", "pow2")), ValueError,
     "scheme must be one of 'uniform', 'pow2', e.g. 'uniform'; got 'log'."),
    (lambda: checks.one_of(3, "scheme", ("uniform", "pow2")), TypeError, "scheme must be one of 'uniform', 'pow2'"),
    (lambda: checks.tensor([0.5], "x"), TypeError, "x must be a torch.Tensor, e.g. torch.tensor([0.5, -1.0]); got [0.5]."),
    (lambda: checks.module(nn.ReLU(), "layer", nn.Linear), TypeError, "layer must be a nn.Linear; got a ReLU."),
    (lambda: checks.finite(torch.tensor([1.0, NAN]), "weight"), ValueError, "The weight holds 1 NaN or inf value(s)"),
    (lambda: checks.finite([1.0], "weight"), TypeError, "weight must be a torch.Tensor"),
    (lambda: checks.not_empty(torch.ones(0), "weight"), ValueError, "The weight is empty (shape (0,)); it must hold"),
])
def test_checks_raise_by_the_rule_and_name_the_fix(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error and str(info.value).startswith(message)


def test_checks_return_the_checked_value():
    assert checks.fraction(1, "amount") == 1.0 and checks.integer(True + 2, "bits") == 3
    assert checks.number(float("inf"), "p", 0, low_open=True) == INF
    assert checks.one_of("mse", "method", ("minmax", "mse")) == "mse"
    x = torch.ones(2)
    assert checks.finite(x) is x and checks.not_empty(x) is x and checks.tensor(x) is x

# ---------------------------------------------------------------- pruning amounts


@FAST
@given(n=st.integers(0, 30), amount=amounts, seed=st.integers(0, 5))
def test_mask_lowest_removes_exactly_the_lowest_amount(n, amount, seed):
    scores = distinct(n, seed).abs()
    k = pruned_count(amount, n)
    if k is None:
        with pytest.raises(amount_error(amount, n), match="amount|Cannot prune"):
            pruning.mask_lowest(scores, amount)
        return
    mask = pruning.mask_lowest(scores, amount)
    assert mask.shape == scores.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == k
    if 0 < k < n:
        assert scores[mask == 0].max() < scores[mask == 1].min()


@FAST
@given(amount=amounts, scope=st.sampled_from(["global", "layerwise"]))
def test_prune_model_prunes_the_fraction_asked_or_refuses_and_leaves_the_model(amount, scope):
    model = mlp()
    sizes = {"fc1": 30, "fc2": 15}
    counts = [pruned_count(amount, 45)] if scope == "global" else [pruned_count(amount, n) for n in sizes.values()]
    if None in counts:
        error = amount_error(amount, 45) if scope == "global" else first(amount_error(amount, 30), amount_error(amount, 15))
        with pytest.raises(error, match="amount|Cannot prune"):
            pruning.prune_model(model, amount, scope=scope)
        assert not_pruned(model)
        return
    pruning.prune_model(model, amount, scope=scope)
    zeros = {n: int((m.weight == 0).sum()) for n, m in metrics.prunable_layers(model).items()}
    if scope == "global":
        assert sum(zeros.values()) == counts[0]
    else:
        assert zeros == {n: pruned_count(amount, s) for n, s in sizes.items()}


@FAST
@given(a1=amounts, a2=amounts)
def test_prune_per_layer_checks_every_amount_before_pruning_any(a1, a2):
    model = mlp()
    k1, k2 = pruned_count(a1, 30), pruned_count(a2, 15)
    if k1 is None or k2 is None:
        with pytest.raises(first(amount_error(a1, 30), amount_error(a2, 15)), match="amount|Cannot prune"):
            pruning.prune_per_layer(model, {"fc1": a1, "fc2": a2})
        assert not_pruned(model)
        return
    pruning.prune_per_layer(model, {"fc1": a1, "fc2": a2})
    assert int((model.fc1.weight == 0).sum()) == k1 and int((model.fc2.weight == 0).sum()) == k2


@FAST
@given(p=st.one_of(st.floats(0.25, 8), st.sampled_from([INF, 0, -1, -INF, NAN, None, "2", True])),
       amount=st.floats(0, 1), n=st.integers(1, 25))
def test_norm_scores_rank_like_magnitude_for_every_valid_p(p, amount, n):
    w = distinct(n)
    if not (is_number(p) and p > 0):
        error = ValueError if is_number(p) else TypeError
        with pytest.raises(error, match="p must be a positive number"):
            pruning.norm_scores(w, p)
        with pytest.raises(error, match="p must be a positive number"):
            structured.filter_norms(w.view(n, 1), p)
        return
    s = pruning.norm_scores(w, p)
    assert torch.isfinite(s).all()
    assert torch.equal(pruning.mask_lowest(s, amount), pruning.mask_lowest(w.abs(), amount))


@FAST
@given(shape=st.sampled_from([(0,), (7,), (3, 4), (2, 3, 2)]), amount=st.floats(0, 1))
def test_random_scores_prune_the_right_count_of_any_shape(shape, amount):
    w = torch.randn(shape)
    mask = pruning.mask_lowest(pruning.random_scores(w, torch.Generator().manual_seed(0)), amount)
    assert mask.shape == w.shape and int((mask == 0).sum()) == round(amount * w.numel())


@FAST
@given(final=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([NAN, INF, 0.0, 1.0])),
       step=st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.0, -0.1, NAN, INF])),
       rounds=st.one_of(st.integers(-1, 6), st.sampled_from([2.5, NAN, None])))
def test_schedules_are_increasing_fractions_ending_at_the_target(final, step, rounds):
    if 0 < step <= final <= 1:
        steps = pruning.iterative_steps(final, step)
        assert all(0 < a < b <= 1 for a, b in zip(steps, steps[1:])) and steps[-1] == final
    else:
        with pytest.raises(ValueError, match="step <= final <= 1"):
            pruning.iterative_steps(final, step)
    if 0 <= final < 1 and isinstance(rounds, int) and rounds >= 1:
        steps = pruning.geometric_steps(final, rounds)
        assert len(steps) == rounds and all(0 <= s < 1 for s in steps)
        assert all(a <= b for a, b in zip(steps, steps[1:])) and math.isclose(steps[-1], final, abs_tol=1e-12)
    else:
        with pytest.raises(ValueError if is_integer(rounds) else TypeError, match="final < 1 and an integer rounds >= 1"):
            pruning.geometric_steps(final, rounds)


@FAST
@given(s_i=st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.5, NAN])),
       s_f=st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.5, NAN])),
       n=st.integers(-1, 5), dt=st.integers(-1, 3), t=st.integers(-5, 30))
def test_agp_sparsity_stays_between_its_endpoints(s_i, s_f, n, dt, t):
    if not (0 <= s_i <= s_f <= 1 and n >= 1 and dt >= 1):
        with pytest.raises(ValueError, match="Need"):
            pruning.agp_sparsity(t, s_i, s_f, 0, n, dt)
        with pytest.raises(ValueError, match="Need"):
            pruning.GradualPruner(mlp(), s_f, n, dt, s_initial=s_i)
        return
    s = pruning.agp_sparsity(t, s_i, s_f, 0, n, dt)
    assert s_i - 1e-12 <= s <= s_f + 1e-12
    if t <= 0 or t >= n * dt:
        assert math.isclose(s, s_i if t <= 0 else s_f, abs_tol=1e-12)


@FEW
@given(amount=amounts)
def test_soft_pruner_refuses_a_bad_amount_up_front(amount):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    if pruned_count(amount, 45) is None:
        with pytest.raises(amount_error(amount, 45), match="amount|Cannot prune"):
            pruning.SoftPruner(model, amount)
        return
    pruning.SoftPruner(model, amount)()
    zeros = sum(int((m.weight == 0).sum()) for m in metrics.prunable_layers(model).values())
    assert zeros == pruned_count(amount, 45) and model.fc1.bias.equal(before["fc1.bias"])

# ---------------------------------------------------------------- structured pruning


@FAST
@given(n=st.integers(0, 12), amount=amounts)
def test_keep_strongest_keeps_the_rest_and_at_least_one(n, amount):
    scores = distinct(n).abs()
    k = pruned_count(amount, n)
    if k is None or k >= n:
        with pytest.raises(amount_error(amount, n) or ValueError, match="amount|Cannot prune|leave none"):
            structured.keep_strongest(scores, amount)
        return
    keep = structured.keep_strongest(scores, amount)
    assert len(keep) == n - k and torch.equal(keep, keep.sort().values) and len(keep.unique()) == len(keep)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[keep] = False
    if dropped.any():
        assert scores[dropped].max() < scores[keep].min()


@FEW
@given(a1=amounts, a2=amounts)
def test_prune_filters_shrinks_to_the_masked_model_or_refuses(a1, a2):
    model = conv_net()
    k1, k2 = pruned_count(a1, 4), pruned_count(a2, 5)
    if k1 is None or k2 is None or k1 >= 4 or k2 >= 5:
        error = first(amount_error(a1, 4), ValueError if k1 == 4 else None, amount_error(a2, 5), ValueError)
        with pytest.raises(error, match="amount|Cannot prune|leave none"):
            structured.prune_filters(model, {"conv1": a1, "conv2": a2}, (2, 6, 6))
        return
    small = structured.prune_filters(model, {"conv1": a1, "conv2": a2}, (2, 6, 6))
    assert (small.conv1.out_channels, small.conv2.out_channels) == (4 - k1, 5 - k2)
    plan = structured.channel_plan(model, {"conv1": a1, "conv2": a2})
    masked = structured.mask_channels(copy.deepcopy(model), plan).eval()
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)


@FAST
@given(keep=st.lists(st.integers(-2, 6), max_size=6))
def test_shrink_and_mask_channels_refuse_a_plan_that_is_not_a_set_of_channels(keep):
    model = conv_net()
    plan = {"conv1": torch.tensor(keep, dtype=torch.long)}
    if keep and len(set(keep)) == len(keep) and all(0 <= i < 4 for i in keep):
        small = structured.shrink(model, plan, (2, 6, 6))
        masked = structured.mask_channels(copy.deepcopy(model), plan).eval()
        x = torch.randn(2, 2, 6, 6)
        assert small.conv1.out_channels == len(keep)
        torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
        return
    with pytest.raises(ValueError, match=r"plan\['conv1'\] must list the channels to keep"):
        structured.shrink(model, plan, (2, 6, 6))
    with pytest.raises(ValueError, match=r"plan\['conv1'\] must list the channels to keep"):
        structured.mask_channels(copy.deepcopy(model), plan)


def test_structured_bad_plans_shapes_and_scores():
    model = conv_net()
    for plan in ({"conv1": torch.tensor([0.0, 1.0])}, {"conv1": torch.tensor([[0, 1]])},
                 {"conv1": torch.tensor([True, False, True, True])}):
        with pytest.raises(ValueError, match="must list the channels to keep"):
            structured.shrink(model, plan, (2, 6, 6))
    with pytest.raises(ValueError, match="not one of the model's Conv2d / Linear layers"):
        structured.mask_channels(model, {"bn1": torch.tensor([0])})
    for shape in [(3, 6, 6), (2, 4, 4), (), (2, 0, 6)]:
        with pytest.raises(ValueError, match="input"):
            structured.prune_filters(model, {"conv1": 0.5}, shape)
    with pytest.raises(ValueError, match=r"scores\['conv1'\] must hold one score per output channel"):
        structured.channel_plan(model, {"conv1": 0.5}, scores={})
    with pytest.raises(ValueError, match=r"shape \(4,\), got \(9,\)"):
        structured.channel_plan(model, {"conv1": 0.5}, scores={"conv1": torch.ones(9)})


@FEW
@given(amount=amounts)
def test_slimming_keeps_one_channel_per_layer_at_any_amount(amount):
    model = conv_net()
    with torch.no_grad():
        model.bn1.weight.copy_(distinct(4, 1))
        model.bn2.weight.copy_(distinct(5, 2))
    k = pruned_count(amount, 9)
    if k is None:
        with pytest.raises(amount_error(amount, 9), match="amount|Cannot prune"):
            structured.slimming_plan(model, amount)
        return
    plan = structured.slimming_plan(model, amount)
    kept = sum(len(v) for v in plan.values())
    assert all(len(v) >= 1 for v in plan.values()) and 9 - k <= kept <= min(9, 9 - k + 2)

# ---------------------------------------------------------------- quantization: bits and grids


def bits_ok(bits, minimum=2):
    return is_integer(bits) and minimum <= bits <= 16


def bits_error(bits, minimum=2):
    """TypeError for a non-integer width (8.0, "8", None, True), ValueError outside [minimum, 16]."""
    return None if bits_ok(bits, minimum) else ValueError if is_integer(bits) else TypeError


@FAST
@given(x=arrays("float32", st.tuples(st.integers(0, 4), st.integers(0, 9)), elements=finite),
       bits=bit_widths, symmetric=st.booleans(), axis=st.sampled_from([None, 0, 1, -1, 2]),
       method=st.sampled_from(["minmax", "percentile", "mse"]))
def test_quantized_values_lie_on_the_grid_or_the_call_is_refused(x, bits, symmetric, axis, method):
    x = torch.from_numpy(x)
    if not bits_ok(bits):
        with pytest.raises(bits_error(bits), match="bit"):
            Q.qparams(x, bits, symmetric, axis, method)
        return
    if x.numel() == 0:
        with pytest.raises(ValueError, match="empty"):
            Q.qparams(x, bits, symmetric, axis, method)
        return
    if axis is not None and axis >= x.dim():
        with pytest.raises(ValueError, match="axis"):
            Q.qparams(x, bits, symmetric, axis, method)
        return
    qp = Q.qparams(x, bits, symmetric, axis, method)
    assert torch.isfinite(qp.scale).all() and (qp.scale > 0).all()
    q = Q.quantize(x, qp)
    assert q.dtype == torch.int32 and q.min() >= qp.qmin and q.max() <= qp.qmax
    assert (qp.qmin, qp.qmax) == ((-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1))
    x_hat = Q.fake_quantize(x, qp)
    assert torch.equal(x_hat, Q.dequantize(q, qp)) and torch.isfinite(x_hat).all()
    if method == "minmax":  # the range holds every value: only rounding error, at most S / 2
        s, _ = qp.shaped_like(x)
        assert ((x - x_hat).abs() <= s * 0.5 + 1e-6 * (1 + x.abs().max())).all()


@FAST
@given(lo=st.one_of(finite, st.sampled_from([NAN, INF, -INF])), hi=st.one_of(finite, st.sampled_from([NAN, INF])),
       bits=st.integers(2, 16), symmetric=st.booleans())
def test_qparams_from_range_covers_the_range_or_refuses_it(lo, hi, bits, symmetric):
    if not (math.isfinite(lo) and math.isfinite(hi)):
        with pytest.raises(ValueError, match="NaN or inf"):
            Q.qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
        return
    if lo > hi:
        with pytest.raises(ValueError, match="lo <= hi"):
            Q.qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
        return
    qp = Q.qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
    a, b = qp.real_range()
    s = float(qp.scale)
    assert math.isfinite(s) and s > 0
    assert float(a) <= min(lo, 0) + s and float(b) >= max(hi, 0) - s


@FAST
@given(bad=st.sampled_from([NAN, INF, -INF]), where=st.integers(0, 5))
def test_non_finite_values_are_refused_everywhere(bad, where):
    w = torch.randn(2, 3)
    w.view(-1)[where] = bad
    for call in (lambda: Q.qparams(w), lambda: Q.quantize(w, Q.qparams(torch.randn(2, 3))),
                 lambda: Q.binarize(w), lambda: Q.ternarize(w), lambda: Q.power_of_two(w),
                 lambda: Q.kmeans_codebook(w, 2), lambda: Q.Observer()(w),
                 lambda: fz.singular_values(w), lambda: fz.svd_linear(linear_with(w), 1)):
        with pytest.raises(ValueError, match="NaN or inf"):
            call()


def linear_with(w):
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def channels(t, per_channel):
    """The rows that share one alpha: output channels, or the whole tensor."""
    return t.flatten(1) if per_channel and t.dim() > 1 else t.flatten().unsqueeze(0)


@FAST
@given(w=arrays("float32", st.sampled_from([(0,), (5,), (3, 4), (2, 0), (2, 3, 2)]), elements=finite),
       per_channel=st.booleans(), threshold=st.one_of(st.floats(0, 2), st.sampled_from([-0.1, NAN, INF, None])))
def test_binary_and_ternary_weights_take_two_or_three_values_per_channel(w, per_channel, threshold):
    w = torch.from_numpy(w)
    b = Q.binarize(w, per_channel)
    assert b.shape == w.shape and torch.isfinite(b).all()
    assert all(len(r.abs().unique()) <= 1 for r in channels(b, per_channel))   # one alpha per channel
    assert (b * w >= 0).all()                                                # the signs of w
    if not (isinstance(threshold, float) and 0 <= threshold < INF):
        with pytest.raises(ValueError if is_number(threshold) else TypeError, match="threshold must be a finite number >= 0"):
            Q.ternarize(w, per_channel, threshold)
        return
    t = Q.ternarize(w, per_channel, threshold)
    assert t.shape == w.shape and torch.isfinite(t).all()
    assert all(len(r[r != 0].abs().unique()) <= 1 for r in channels(t, per_channel))
    assert ((t == 0) | (torch.sign(t) == torch.sign(w))).all()


@FAST
@given(w=arrays("float32", st.sampled_from([(0,), (6,), (3, 4)]), elements=finite),
       bits=st.one_of(st.integers(2, 8), bit_widths))
def test_power_of_two_levels_are_powers_of_two(w, bits):
    w = torch.from_numpy(w)
    if not bits_ok(bits):
        with pytest.raises(bits_error(bits), match="bit"):
            Q.power_of_two(w, bits)
        return
    if w.numel() == 0:
        with pytest.raises(ValueError, match="empty"):
            Q.power_of_two(w, bits)
        return
    p = Q.power_of_two(w, bits)
    nz = p[p != 0].abs()
    assert torch.isfinite(p).all() and torch.equal(torch.log2(nz), torch.log2(nz).round())
    assert len(nz.unique()) <= 2 ** (bits - 1) - 1


@FAST
@given(w=arrays("float32", st.sampled_from([(0,), (1,), (7,), (3, 5)]), elements=finite),
       bits=st.one_of(st.integers(-1, 6), st.sampled_from([2.0, True, None])), keep_zeros=st.booleans())
def test_kmeans_codebook_has_2_to_the_b_sorted_centroids(w, bits, keep_zeros):
    w = torch.from_numpy(w)
    if not bits_ok(bits, minimum=1):
        with pytest.raises(bits_error(bits, minimum=1), match="bit"):
            Q.KMeansQuantizer(w, bits, keep_zeros=keep_zeros)
        return
    if w.numel() == 0 or (keep_zeros and not w.any()):
        with pytest.raises(ValueError, match="empty|nothing to cluster"):
            Q.KMeansQuantizer(w, bits, keep_zeros=keep_zeros)
        return
    c, labels = Q.kmeans_codebook(w, bits)
    assert len(c) == 2 ** bits and labels.shape == w.shape
    assert (c[1:] - c[:-1] >= -1e-6 * (1 + c.abs().max())).all()   # sorted (up to a mean's rounding)
    assert labels.min() >= 0 and labels.max() < 2 ** bits
    assert c[labels].sub(w).abs().max() <= (w.max() - w.min()) + 1e-3  # every centroid inside the weights' range
    q = Q.KMeansQuantizer(w, bits, keep_zeros=keep_zeros)
    out = q(w)
    assert out.shape == w.shape and len(out[q.mask].unique()) <= 2 ** bits
    assert (out[~q.mask] == 0).all()


@FEW
@given(bits=st.one_of(bit_widths, st.fixed_dictionaries({"fc1": bit_widths, "fc2": st.integers(2, 8)})),
       scheme=st.sampled_from(["uniform", "kmeans", "pow2", "binary", "ternary", "int8"]),
       act_bits=st.one_of(st.none(), bit_widths), percentile=st.sampled_from([99.9, 100, 50, 120, NAN]))
def test_quantize_model_quantizes_every_layer_or_none(bits, scheme, act_bits, percentile):
    model = mlp()
    widths = list(bits.values()) if isinstance(bits, dict) else [bits]
    ok = scheme != "int8" and (act_bits is None or bits_ok(act_bits)) and (
        scheme in ("binary", "ternary") or all(bits_ok(b, 1 if scheme == "kmeans" else 2) for b in widths))
    kwargs = dict(act_bits=act_bits, method="percentile", percentile=percentile) if scheme == "uniform" \
        else dict(act_bits=act_bits)
    if scheme == "uniform" and not 50 < percentile <= 100:
        ok = False
    if not ok:
        # the order of the checks: scheme, act_bits, then each layer's bits and percentile
        errors = [ValueError if scheme == "int8" else None, None if act_bits is None else bits_error(act_bits)]
        for b in widths:
            if scheme not in ("binary", "ternary"):
                errors.append(bits_error(b, 1 if scheme == "kmeans" else 2))
            if scheme == "uniform" and not 50 < percentile <= 100:
                errors.append(ValueError)
        with pytest.raises(first(*errors), match="bit|scheme|percentile"):
            Q.quantize_model(model, bits, scheme, **kwargs)
        assert not Q.quantized_layers(model) and not Q.activation_quantizers(model)
        return
    Q.quantize_model(model, bits, scheme, **kwargs)
    assert set(Q.quantized_layers(model)) == {"fc1", "fc2"}
    if act_bits is not None:
        Q.calibrate(model, [torch.randn(4, 6)], batches=1)
    assert torch.isfinite(model(torch.randn(4, 6))).all()


@FAST
@given(average_bits=st.one_of(st.floats(-1, 12), st.sampled_from([NAN, INF, 0.0])))
def test_allocate_bits_meets_the_budget_or_says_it_cannot(average_bits):
    model = mlp()
    scan = pd.DataFrame({8: [90.0, 90.0], 4: [60.0, 89.0], 2: [20.0, 80.0]}, index=["fc1", "fc2"])
    if math.isnan(average_bits) or average_bits < 0:
        with pytest.raises(ValueError, match="budget must be a number of bytes >= 0"):
            Q.allocate_bits(scan, model, average_bits=average_bits)
        return
    if average_bits < 2:
        with pytest.raises(ValueError, match="too small"):
            Q.allocate_bits(scan, model, average_bits=average_bits)
        return
    alloc = Q.allocate_bits(scan, model, average_bits=average_bits)
    assert set(alloc.values()) <= {8, 4, 2}
    assert 30 * alloc["fc1"] + 15 * alloc["fc2"] <= 45 * average_bits + 1e-9

# ---------------------------------------------------------------- factorization: ranks and energies

ranks = st.one_of(st.integers(-1, 8), st.sampled_from([2.0, None, True, "2", NAN]))


def rank_ok(r, limit):
    return is_integer(r) and 1 <= r <= limit


def rank_error(r, limit):
    """TypeError for a non-integer rank (2.0, "2", None, True), ValueError outside [1, limit]."""
    return None if rank_ok(r, limit) else ValueError if is_integer(r) else TypeError


@FAST
@given(m=st.integers(1, 5), n=st.integers(1, 5), rank=ranks, bias=st.booleans())
def test_svd_linear_is_the_best_rank_r_fit_and_exact_at_full_rank(m, n, rank, bias):
    torch.manual_seed(m * 10 + n)
    layer = nn.Linear(n, m, bias=bias)
    if not rank_ok(rank, min(m, n)):
        with pytest.raises(rank_error(rank, min(m, n)), match="[Rr]ank"):
            fz.svd_linear(layer, rank)
        return
    pair = fz.svd_linear(layer, rank)
    w_r = pair.us.weight @ pair.v.weight
    s = fz.singular_values(layer)
    err = (layer.weight - w_r).detach().double().pow(2).sum()
    assert math.isclose(float(err), float(s[rank:].pow(2).sum()), abs_tol=1e-5)   # Eckart-Young
    if rank == min(m, n):
        x = torch.randn(4, n)
        torch.testing.assert_close(pair(x), layer(x), rtol=1e-5, atol=1e-5)


@FAST
@given(keep=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([NAN, INF, 1.0, 0.0, True, "0.9"])),
       zero=st.booleans())
def test_the_energy_rank_keeps_the_energy_asked_for(keep, zero):
    torch.manual_seed(0)
    model = mlp()
    if zero:
        nn.init.zeros_(model.fc2.weight)
    if not (isinstance(keep, float) and 0 < keep <= 1):
        with pytest.raises(ValueError if is_number(keep) else TypeError,
                           match=r"kept energy must be a fraction in \(0, 1\]"):
            fz.svd_factorize(model, energy=keep)
        return
    small = fz.svd_factorize(model, energy=keep)
    for name in ("fc1", "fc2"):
        s = fz.singular_values(getattr(model, name))
        energy = fz.cumulative_energy(s)
        r = getattr(small, name).v.out_features
        assert torch.isfinite(energy).all() and 1 <= r <= len(s)
        assert energy[r - 1] >= keep - 1e-9 and (r == 1 or energy[r - 2] < keep)


@pytest.mark.parametrize("shape", [(), (5,), (0,)])
def test_singular_values_need_a_matrix(shape):
    with pytest.raises(ValueError, match="need a matrix"):
        fz.singular_values(torch.ones(shape))


@FAST
@given(ranks_=st.one_of(ranks, st.tuples(ranks, ranks), st.sampled_from([(2, 2, 2), (1,), [3, 2], "ab"])))
def test_tucker2_ranks_are_checked_and_full_ranks_are_exact(ranks_):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    pair = (ranks_, ranks_) if isinstance(ranks_, int) and not isinstance(ranks_, bool) else ranks_
    valid = isinstance(pair, (tuple, list)) and len(pair) == 2 and rank_ok(pair[0], 4) and rank_ok(pair[1], 3)
    if not valid:
        if isinstance(ranks_, int):   # one integer for both ranks (True included: a bool is refused as a rank)
            error = first(rank_error(ranks_, 4), rank_error(ranks_, 3))
        elif not isinstance(ranks_, (tuple, list)):
            error = TypeError
        elif len(ranks_) != 2:
            error = ValueError
        else:
            error = first(rank_error(ranks_[0], 4), rank_error(ranks_[1], 3))
        with pytest.raises(error, match="[Rr]ank"):
            fz.tucker2_conv(conv, ranks_)
        return
    chain = fz.tucker2_conv(conv, ranks_)
    assert (chain.first.out_channels, chain.last.in_channels) == (pair[1], pair[0])
    core, factors = fz.tucker2(conv.weight, tuple(pair))
    assert core.shape == (pair[0], pair[1], 3, 3) and torch.isfinite(core).all()
    x = torch.randn(2, 3, 5, 5)
    assert chain(x).shape == conv(x).shape


def test_tucker2_at_full_ranks_is_the_conv_and_needs_a_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fz.tucker2_conv(conv, (4, 3))(x), conv(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="conv kernel"):
        fz.tucker2(torch.randn(4, 3), (2, 2))
    with pytest.raises(ValueError, match="between 1 and 4"):
        fz.tucker2(torch.randn(4, 3, 3, 3), (0, 2))


@FAST
@given(rank=ranks)
def test_separable_rank_is_checked_and_full_rank_is_exact(rank):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    if not rank_ok(rank, 6):
        with pytest.raises(rank_error(rank, 6), match="[Rr]ank"):
            fz.separable_conv(conv, rank)
        return
    pair = fz.separable_conv(conv, rank)
    x = torch.randn(2, 2, 5, 5)
    out = pair(x)
    assert out.shape == conv(x).shape and torch.isfinite(out).all()
    if rank == 6:
        torch.testing.assert_close(out, conv(x), rtol=1e-4, atol=1e-5)

# ---------------------------------------------------------------- distillation: T, alpha, shapes

temperatures = st.one_of(st.floats(1e-3, 200),
                         st.sampled_from([0.01, 100.0, 0.0, -1.0, NAN, INF, 1e-30, 1e30, True, "4"]))
alphas = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, NAN, INF, None]))


def temperature_ok(T):
    return isinstance(T, float) and 0.01 <= T <= 100


@FAST
@given(T=temperatures, alpha=alphas, scale=st.sampled_from([0.0, 1.0, 30.0, 1e3]), seed=st.integers(0, 3))
def test_kd_loss_is_finite_and_non_negative_or_the_setting_is_refused(T, alpha, scale, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = scale * torch.randn(6, 5, generator=g), scale * torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    if not temperature_ok(T):
        error = ValueError if is_number(T) else TypeError
        with pytest.raises(error, match="temperature T must be a positive number between 0.01 and 100"):
            kd.kd_loss(s, t, y, T, 0.5)
        with pytest.raises(error, match="temperature T"):
            kd.distillation_loss_fn(nn.Linear(2, 2), T=T)
        return
    if not (isinstance(alpha, float) and 0 <= alpha <= 1):
        with pytest.raises(ValueError if is_number(alpha) else TypeError, match=r"alpha .* must lie in \[0, 1\]"):
            kd.kd_loss(s, t, y, T, alpha)
        return
    loss = kd.kd_loss(s, t, y, T, alpha)
    assert torch.isfinite(loss) and loss >= -1e-6 * max(1.0, T * T)   # KL >= 0, up to float32 rounding
    assert float(kd.kd_loss(t, t, y, T, 1.0)) == pytest.approx(0.0, abs=1e-6 * max(1.0, T * T))


@FAST
@given(T=temperatures,
       shape=st.sampled_from([(5,), (3, 4), (2, 3, 4), (0, 4), (4, 1)]), scale=st.sampled_from([1.0, 1e4]))
def test_soft_targets_are_a_distribution_at_every_temperature(T, shape, scale):
    z = scale * torch.randn(shape)
    if not temperature_ok(T):
        with pytest.raises(ValueError if is_number(T) else TypeError,
                           match="temperature T must be a positive number between 0.01 and 100"):
            kd.soft_targets(z, T)
        return
    p = kd.soft_targets(z, T)
    assert p.shape == z.shape and torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(shape[:-1]))
    assert torch.equal(p.gather(-1, z.argmax(-1, keepdim=True)), p.amax(-1, keepdim=True))  # monotone in z


@FAST
@given(data=st.data(), n_s=st.integers(0, 3), c_s=st.integers(1, 4), one_d=st.booleans())
def test_kd_loss_checks_the_shapes_of_logits_and_labels(data, n_s, c_s, one_d):
    # mostly matching shapes and labels, sometimes one thing off
    n_t = data.draw(st.one_of(st.just(n_s), st.integers(0, 3)))
    c_t = data.draw(st.one_of(st.just(c_s), st.integers(1, 4)))
    labels = data.draw(st.one_of(st.lists(st.integers(0, c_s - 1), min_size=n_s, max_size=n_s),
                                 st.lists(st.integers(-1, 5), max_size=4)))
    s = torch.randn(c_s) if one_d else torch.randn(n_s, c_s)
    t = torch.randn(c_t) if one_d else torch.randn(n_t, c_t)
    y = torch.tensor(labels, dtype=torch.long)
    valid = not one_d and n_s == n_t >= 1 and c_s == c_t and len(labels) == n_s and all(0 <= v < c_s for v in labels)
    if not valid:
        with pytest.raises(ValueError, match="logits|labels|outputs"):
            kd.kd_loss(s, t, y, 4.0, 0.5)
        return
    loss = kd.kd_loss(s, t, y, 4.0, 0.5)
    assert torch.isfinite(loss) and loss >= -1e-5


@pytest.mark.parametrize("labels", [torch.zeros(3), torch.zeros(3, dtype=torch.bool),
                                    torch.zeros(3, 4, dtype=torch.long)])
def test_kd_loss_wants_integer_class_indices(labels):
    with pytest.raises(ValueError, match="labels must be 3 integer class indices"):
        kd.kd_loss(torch.randn(3, 4), torch.randn(3, 4), labels)


@pytest.mark.parametrize("beta,error", [(-1.0, ValueError), (NAN, ValueError), (INF, ValueError),
                                        (None, TypeError), ("1", TypeError)])
def test_distillation_loss_fn_refuses_a_bad_beta(beta, error):
    with pytest.raises(error, match="beta .* must be a finite number >= 0"):
        kd.distillation_loss_fn(nn.Linear(2, 2), beta=beta)

# ---------------------------------------------------------------- storage: bits and index bits


@FAST
@given(amount=st.floats(0, 1), bits=st.one_of(st.integers(1, 3), bit_widths),
       index_bits=st.one_of(st.integers(-1, 18), st.sampled_from([2.5, None, True])))
def test_layer_storage_counts_any_pruned_layer(amount, bits, index_bits):
    torch.manual_seed(0)
    w = torch.randint(-2, 3, (6, 7)).float()     # 5 shared values at most (0 among them)
    w = w * pruning.mask_lowest(w.abs() + torch.rand(6, 7) * 0.1, amount)
    if not bits_ok(bits, minimum=1):
        with pytest.raises(bits_error(bits, minimum=1), match="bit"):
            dc.layer_storage(w, None, bits, 5)
        return
    if not bits_ok(index_bits, minimum=1):
        with pytest.raises(bits_error(index_bits, minimum=1), match="index_bits must be an integer between 1 and 16"):
            dc.layer_storage(w, None, bits, index_bits)
        return
    nonzero = w[w != 0].unique()
    if len(nonzero) > 2 ** bits:
        with pytest.raises(ValueError, match="codebook"):
            dc.layer_storage(w, None, bits, index_bits)
        return
    row = dc.layer_storage(w, torch.ones(7), bits, index_bits)
    assert row["nonzero"] == int((w != 0).sum()) and row["weights"] == 42
    assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("dense", "pruned", "quantized", "huffman"))
    gaps = coding.relative_indices(w != 0, index_bits)
    assert coding.positions_from_gaps(gaps, index_bits).tolist() == torch.nonzero(w.flatten()).flatten().tolist()


@FAST
@given(bits=st.one_of(st.integers(-1, 40), st.sampled_from([NAN, 8.0])),
       storage=st.sampled_from(["dense", "sparse", "gzip", "zip"]))
def test_model_size_scales_with_bits(bits, storage):
    model = mlp()
    if not 1 <= bits <= 32:
        with pytest.raises(ValueError, match="bits must be between 1 and 32"):
            metrics.model_size(model, storage, bits)
        return
    if storage == "zip":
        with pytest.raises(ValueError, match="Unknown storage"):
            metrics.model_size(model, storage, bits)
        return
    size = metrics.model_size(model, storage, bits)
    assert math.isfinite(size) and size > 0
    if storage == "dense":
        assert size == metrics.count_parameters(model) * bits / 8
