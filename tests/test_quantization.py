from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torch.nn.utils import parametrize

from compresslab import deploy, quantization as Q

FAST = settings(max_examples=40, deadline=None)

finite_floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
tensors = arrays("float32", st.tuples(st.integers(1, 6), st.integers(1, 20)), elements=finite_floats)


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 8, 3, padding=1)), ("bn", nn.BatchNorm2d(8)), ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 10)),
    ])).eval()


def batches(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]

# ---------------------------------------------------------------- uniform affine


def test_integer_grids():
    assert Q.qrange(8, symmetric=True) == (-127, 127)
    assert Q.qrange(8, symmetric=False) == (0, 255)
    assert Q.qrange(2, symmetric=True) == (-1, 1)
    assert Q.qrange(16, symmetric=False) == (0, 65535)


@FAST
@given(tensors, st.integers(2, 16), st.booleans(), st.sampled_from([None, 0]))
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(a, bits, symmetric, axis):
    x = torch.from_numpy(a)
    qp = Q.qparams(x, bits, symmetric, axis)  # min / max: every value lies inside the range
    q = Q.quantize(x, qp)
    assert q.dtype == torch.int32 and q.min() >= qp.qmin and q.max() <= qp.qmax
    s, _ = qp.shaped_like(x)
    err = (Q.dequantize(q, qp) - x).abs()
    assert torch.all(err <= s / 2 * (1 + 1e-5) + 1e-6)


@FAST
@given(tensors, st.integers(2, 16), st.sampled_from([None, 0]))
def test_symmetric_zero_point_is_zero_and_asymmetric_stores_zero_exactly(a, bits, axis):
    x = torch.from_numpy(a)
    assert torch.all(Q.qparams(x, bits, True, axis).zero_point == 0)
    qp = Q.qparams(x, bits, False, axis)
    zero = torch.zeros_like(x)
    assert torch.equal(Q.dequantize(Q.quantize(zero, qp), qp), zero)


def test_symmetric_scale_is_max_abs_over_qmax_and_asymmetric_spans_min_to_max():
    x = torch.tensor([-1.0, 0.5, 3.0])
    assert float(Q.qparams(x, 8, True).scale) == pytest.approx(3.0 / 127)
    qp = Q.qparams(x, 8, False)
    assert float(qp.scale) == pytest.approx(4.0 / 255)
    assert int(qp.zero_point) == round(1.0 / (4.0 / 255))
    lo, hi = qp.real_range()
    assert float(lo) == pytest.approx(-1.0, abs=float(qp.scale) / 2) and float(hi) == pytest.approx(3.0, abs=float(qp.scale) / 2)


def test_per_channel_scales_follow_each_output_channel():
    w = torch.randn(6, 4, 3, 3)
    w[2] *= 10
    qp = Q.qparams(w, 8, True, axis=0)
    assert qp.scale.shape == (6,)
    expected = w.abs().amax(dim=(1, 2, 3)) / 127
    assert torch.allclose(qp.scale, expected)
    w2 = w.clone()
    w2[4] *= 3   # only channel 4's scale may change
    changed = Q.qparams(w2, 8, True, axis=0).scale != qp.scale
    assert changed.tolist() == [False, False, False, False, True, False]
    # per tensor: one scale, set by the largest channel
    assert Q.qparams(w, 8, True).scale.shape == () and Q.qparams(w, 8, True).scale == expected.max()


@FAST
@given(tensors, st.integers(2, 16), st.booleans())
def test_equals_torch_fake_quantize_per_tensor(a, bits, symmetric):
    x = torch.from_numpy(a)
    qp = Q.qparams(x, bits, symmetric)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
    assert torch.equal(Q.fake_quantize(x, qp), theirs)


@FAST
@given(tensors, st.integers(2, 16), st.booleans())
def test_equals_torch_fake_quantize_per_channel(a, bits, symmetric):
    x = torch.from_numpy(a)
    qp = Q.qparams(x, bits, symmetric, axis=0)
    theirs = torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
    assert torch.equal(Q.fake_quantize(x, qp), theirs)


def test_straight_through_gradient_is_one_inside_and_zero_where_clipped():
    x = torch.linspace(-2, 2, 81)
    qp = Q.qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), 4, symmetric=False)
    ours = x.clone().requires_grad_()
    Q.fake_quantize(ours, qp).sum().backward()
    lo, hi = qp.real_range()
    inside = (x > lo + qp.scale) & (x < hi - qp.scale)
    outside = (x < lo - qp.scale) | (x > hi + qp.scale)
    assert torch.allclose(ours.grad[inside], torch.ones(int(inside.sum())))
    assert torch.all(ours.grad[outside] == 0) and outside.any()
    theirs = x.clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(theirs, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax).sum().backward()
    assert torch.allclose(ours.grad, theirs.grad)


def test_percentile_and_mse_clip_outliers_and_mse_lowers_the_error():
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[:5] = 40.0   # a few outliers stretch the min / max grid
    qp_mm = Q.qparams(x, 4, True, method="minmax")
    qp_pc = Q.qparams(x, 4, True, method="percentile", percentile=99.9)
    qp_mse = Q.qparams(x, 4, True, method="mse")
    assert qp_pc.scale < qp_mm.scale / 5 and qp_mse.scale < qp_mm.scale / 2
    err = {k: (Q.fake_quantize(x, qp) - x).pow(2).mean() for k, qp in
           {"minmax": qp_mm, "mse": qp_mse}.items()}
    assert err["mse"] < err["minmax"] / 2
    w = torch.randn(4, 50)
    assert Q.qparams(w, 4, False, axis=0, method="mse").scale.shape == (4,)


def test_constant_tensors_round_trip_exactly_and_zero_gets_eps_scale():
    for c in (-2.5, 0.3, 7.0):
        x = torch.full((5, 3), c)
        for symmetric in (True, False):
            qp = Q.qparams(x, 8, symmetric)
            assert torch.allclose(Q.dequantize(Q.quantize(x, qp), qp), x, rtol=1e-6, atol=0)
    zeros = torch.zeros(4, 3)
    qp = Q.qparams(zeros, 8, False, axis=0)
    assert torch.all(qp.scale == Q.EPS)
    out = Q.fake_quantize(zeros, qp)
    assert torch.isfinite(out).all() and torch.equal(out, zeros)

# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bits", [0, 17, -3])
def test_bits_outside_1_to_16_are_refused(bits):
    with pytest.raises(ValueError, match="between 1 and 16"):
        Q.qparams(torch.randn(5), bits)


def test_one_bit_is_only_for_binary_and_non_integer_bits_are_refused():
    with pytest.raises(ValueError, match="binarize"):
        Q.qparams(torch.randn(5), 1)
    with pytest.raises(TypeError):
        Q.qparams(torch.randn(5), 4.5)
    with pytest.raises(TypeError):
        Q.qparams(torch.randn(5), True)
    assert Q.WeightQuantizer("binary").bits == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_refused(bad):
    x = torch.randn(10)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        Q.qparams(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        Q.quantize(x, Q.qparams(torch.randn(10)))
    with pytest.raises(ValueError, match="NaN or inf"):
        Q.kmeans_codebook(x, 2)


def test_unknown_method_scheme_and_axis_are_refused():
    with pytest.raises(ValueError, match="range method"):
        Q.qparams(torch.randn(5), method="entropy")
    with pytest.raises(ValueError, match="scheme"):
        Q.quantize_model(small_net(), 4, scheme="log")
    with pytest.raises(ValueError, match="axis"):
        Q.qparams(torch.randn(5), axis=1)

# ---------------------------------------------------------------- observers, PTQ, QAT


def test_observer_records_running_min_max_and_ema():
    obs = Q.Observer()
    with pytest.raises(RuntimeError, match="calibrate"):
        obs.qparams()
    for x in (torch.tensor([0.0, 1.0]), torch.tensor([-3.0, 0.5]), torch.tensor([2.0])):
        obs(x)
    assert float(obs.min_val) == -3.0 and float(obs.max_val) == 2.0
    ema = Q.Observer(momentum=0.5)
    ema(torch.tensor([0.0, 4.0]))
    ema(torch.tensor([0.0, 2.0]))
    assert float(ema.max_val) == 3.0


def test_quantized_weights_take_at_most_2_to_the_bits_values_per_channel_and_remove_restores():
    model = small_net()
    original = model.conv.weight.detach().clone()
    Q.quantize_model(model, 3, per_channel=True)
    w = model.conv.weight
    assert all(len(w[c].unique()) <= 2 ** 3 - 1 for c in range(w.shape[0]))  # symmetric: 7 levels
    assert torch.equal(w, Q.fake_quantize(original, Q.qparams(original, 3, True, axis=0)))
    assert set(Q.quantized_layers(model)) == {"conv", "fc"}
    with pytest.raises(ValueError, match="already quantized"):
        Q.quantize_model(model, 4)
    Q.remove_quantization(model, keep_quantized_weights=False)
    assert torch.equal(model.conv.weight, original) and not Q.quantized_layers(model)
    Q.quantize_model(model, 3)
    Q.remove_quantization(model)  # keeps the quantized values, as a plain parameter
    assert torch.equal(model.conv.weight, w) and isinstance(model.conv.weight, nn.Parameter)


def test_qat_gradients_reach_the_float_weights_and_training_changes_the_grid():
    model = small_net().train()
    Q.quantize_model(model, 4)
    x, y = batches(1)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.conv.weight.detach().clone()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert model.conv.parametrizations.weight.original.grad.abs().sum() > 0
        opt.step()
    assert not torch.equal(model.conv.weight, before)


def test_calibrated_activation_quantization_matches_the_formula():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    model = nn.Sequential(OrderedDict([("fc", layer)]))
    w_float = layer.weight.detach().clone()
    Q.quantize_model(model, 8, act_bits=4)
    with pytest.raises(RuntimeError, match="calibrate"):
        model(torch.randn(2, 6))
    data = [torch.randn(10, 6), torch.randn(10, 6), 5 * torch.randn(10, 6)]
    Q.calibrate(model, data, batches=2)   # the third batch is not seen: it gets clipped
    seen = torch.cat(data[:2])
    assert float(model.fc.input_quantizer.observer.min_val) == float(seen.min())
    x = data[2]
    qx = Q.fake_quantize(x, Q.qparams_from_range(seen.min(), seen.max(), 4, symmetric=False))
    w = Q.fake_quantize(w_float, Q.qparams(w_float, 8, True, axis=0))
    assert torch.allclose(model(x), nn.functional.linear(qx, w, layer.bias), atol=1e-6)
    assert not torch.allclose(model(x), nn.functional.linear(x, w, layer.bias), atol=1e-3)
    Q.remove_quantization(model)
    assert not hasattr(model.fc, "input_quantizer") and not model.fc._forward_pre_hooks


def test_calibration_needs_batches_and_activation_quantizers():
    model = Q.quantize_model(small_net(), 8, act_bits=8)
    with pytest.raises(ValueError, match="at least 1 batch"):
        Q.calibrate(model, batches(), batches=0)
    with pytest.raises(ValueError, match="no batch"):
        Q.calibrate(model, [], batches=5)
    with pytest.raises(RuntimeError, match="calibrate"):
        model(batches(1)[0][0])   # quantizers enabled but never calibrated: say so
    with pytest.raises(ValueError, match="act_bits"):
        Q.calibrate(Q.quantize_model(small_net(), 8), batches())


def test_pruned_layers_must_be_made_permanent_first():
    from compresslab import pruning
    model = small_net()
    pruning.prune_model(model, 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        Q.quantize_model(model, 8)

# ---------------------------------------------------------------- non-uniform


def test_kmeans_codebook_has_2_to_the_bits_centroids_and_starts_linear():
    torch.manual_seed(0)
    w = torch.randn(16, 9)
    for bits in (1, 2, 3, 5):
        c, labels = Q.kmeans_codebook(w, bits)
        assert c.shape == (2 ** bits,) and labels.shape == w.shape
        assert labels.min() >= 0 and labels.max() < 2 ** bits
        assert torch.all(c[1:] >= c[:-1])
    c0, _ = Q.kmeans_codebook(w, 2, iters=0)
    assert torch.allclose(c0, torch.linspace(float(w.min()), float(w.max()), 4))
    c, labels = Q.kmeans_codebook(w, 2)
    # a fixed point of Lloyd's iterations: every weight sits at its nearest centroid ...
    assert torch.equal(labels, (w.unsqueeze(-1) - c).abs().argmin(-1))
    # ... and k-means fits the weights better than the evenly spaced start
    assert (c[labels] - w).pow(2).mean() < (c0[Q.assign_to_centroids(w, c0)] - w).pow(2).mean()


def test_centroid_gradient_is_the_sum_of_the_shared_weights_gradients():
    model = small_net()
    Q.quantize_model(model, 2, scheme="kmeans")
    q = model.fc.parametrizations.weight[0]
    x, y = batches(1)[0]
    with parametrize.cached():   # the weight tensor the forward pass uses, to read its gradient
        w = model.fc.weight
        w.retain_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    expected = torch.zeros(4).index_add_(0, q.labels.flatten(), w.grad.flatten())
    assert torch.allclose(q.centroids.grad, expected, atol=1e-6)


def test_kmeans_fine_tuning_changes_only_the_centroids():
    model = small_net().train()
    Q.quantize_model(model, 3, scheme="kmeans")
    fc = model.fc
    q = fc.parametrizations.weight[0]
    labels, original = q.labels.clone(), fc.parametrizations.weight.original.detach().clone()
    centroids = q.centroids.detach().clone()
    opt = torch.optim.SGD([q.centroids, model.conv.parametrizations.weight[0].centroids], lr=0.1)
    for x, y in batches(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(q.centroids, centroids)
    assert torch.equal(q.labels, labels) and torch.equal(fc.parametrizations.weight.original, original)
    assert set(fc.weight.detach().unique().tolist()) <= set(q.centroids.detach().tolist())


def test_binary_weights_are_plus_minus_the_channel_mean_abs():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    b = Q.binarize(w)
    alpha = w.abs().mean(dim=(1, 2, 3))
    for c in range(4):
        assert set(b[c].unique().tolist()) <= {alpha[c].item(), -alpha[c].item()}
        assert torch.equal(b[c] > 0, w[c] >= 0)
    assert len(Q.binarize(w, per_channel=False).unique()) == 2


def test_ternary_weights_follow_twn():
    torch.manual_seed(0)
    w = torch.randn(5, 40)
    t = Q.ternarize(w)
    delta = 0.7 * w.abs().mean(1, keepdim=True)
    assert torch.equal(t == 0, w.abs() <= delta)
    for c in range(5):
        kept = w[c].abs() > delta[c]
        alpha = w[c].abs()[kept].mean()
        assert torch.allclose(t[c][kept].abs(), alpha.expand(int(kept.sum())))
        assert len(t[c].unique()) == 3


def test_power_of_two_levels():
    torch.manual_seed(0)
    w = torch.randn(200) * 0.1
    p = Q.power_of_two(w, 3)   # 0 and ±2^e for 3 exponents
    nz = p[p != 0]
    assert torch.equal(torch.log2(nz.abs()), torch.log2(nz.abs()).round())
    assert len(p.unique()) <= 2 ** 3 - 1
    assert torch.all(torch.sign(nz) == torch.sign(w[p != 0]))
    assert (p == 0).any() and len(nz.abs().unique()) == 3


@pytest.mark.parametrize("scheme", ["pow2", "binary", "ternary"])
def test_nonuniform_schemes_wrap_layers_with_a_straight_through_gradient(scheme):
    model = small_net().train()
    Q.quantize_model(model, 4, scheme=scheme)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    assert model.fc.parametrizations.weight.original.grad.abs().sum() > 0
    assert len(model.fc.weight.unique()) <= {"pow2": 15, "binary": 2 * 10, "ternary": 2 * 10 + 1}[scheme]

# ---------------------------------------------------------------- size


def test_size_counts_codes_scales_and_codebooks():
    model = small_net()
    float_bytes = Q.quantized_size(model)
    assert float_bytes == 4 * sum(p.numel() for p in model.parameters())
    conv_w, fc_w = model.conv.weight.numel(), model.fc.weight.numel()
    Q.quantize_model(model, 8)   # symmetric per channel: a float scale per output channel
    assert Q.quantized_size(model) == float_bytes - 3 * (conv_w + fc_w) + (8 + 10) * 4
    Q.remove_quantization(model, keep_quantized_weights=False)
    Q.quantize_model(model, 4, scheme="kmeans")
    table = Q.size_table(model)
    assert table.loc["fc.weight", "code_bytes"] == fc_w * 4 / 8
    assert table.loc["fc.weight", "overhead_bytes"] == 2 ** 4 * 4   # the codebook counts
    assert table.loc["fc.bias", "bits"] == 32
    Q.remove_quantization(model, keep_quantized_weights=False)
    Q.quantize_model(model, 4, per_channel=False, symmetric=False)
    assert Q.size_table(model).loc["conv.weight", "overhead_bytes"] == (32 + 4) / 8

# ---------------------------------------------------------------- mixed precision


def test_sensitivity_scan_restores_the_model():
    model = small_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scan = Q.sensitivity_scan(model, batches(2), bits=(8, 2))
    assert list(scan.index) == ["conv", "fc"] and list(scan.columns) == [8, 2]
    assert scan.notna().all().all() and "float_accuracy" in scan.attrs
    assert not Q.quantized_layers(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_greedy_allocation_spends_bits_where_they_matter_and_respects_the_budget():
    import pandas as pd
    model = small_net()   # conv: 216 weights, fc: 1280 weights
    scan = pd.DataFrame({8: [90.0, 90.0], 4: [60.0, 89.5], 2: [20.0, 80.0]}, index=["conv", "fc"])
    alloc = Q.allocate_bits(scan, model, average_bits=5)
    assert alloc == {"conv": 8, "fc": 4}   # the sensitive small layer keeps its bits
    assert (216 * alloc["conv"] + 1280 * alloc["fc"]) / 8 <= (216 + 1280) * 5 / 8
    assert Q.allocate_bits(scan, model, budget_bytes=10**6) == {"conv": 8, "fc": 8}
    with pytest.raises(ValueError, match="too small"):
        Q.allocate_bits(scan, model, average_bits=1)
    with pytest.raises(ValueError, match="exactly one"):
        Q.allocate_bits(scan, model)

# ---------------------------------------------------------------- int8 ONNX


def test_int8_onnx_export_runs_and_agrees_with_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    model = small_net(seed=1)
    fp32 = deploy.export_onnx(model, tmp_path / "fp32.onnx", (3, 8, 8))
    int8 = deploy.quantize_onnx_int8(fp32, tmp_path / "int8.onnx", batches(4, 32, seed=1))
    weights = [t for t in onnx.load(str(int8)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "the int8 model should store int8 weights"
    x = torch.randn(128, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    float_logits = deploy.OnnxModel(fp32)(x)
    assert torch.allclose(float_logits, ref, atol=1e-4)
    int8_logits = deploy.OnnxModel(int8)(x)
    assert (int8_logits.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert not torch.allclose(int8_logits, ref, atol=1e-4)   # it really is quantized


def test_int8_path_names_the_unsupported_layer_and_needs_batches(tmp_path):
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 4)), ("act", nn.GELU())]))
    with pytest.raises(deploy.UnsupportedLayerError, match="'act' \\(GELU\\)"):
        deploy.export_onnx(model, tmp_path / "m.onnx", (4,))
    with pytest.raises(ValueError, match="zero batches"):
        deploy.quantize_onnx_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", [])


def test_kmeans_keep_zeros_shares_only_the_surviving_weights():
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    w[w.abs() < 0.8] = 0  # a pruned layer
    fc = nn.Linear(8, 6)
    with torch.no_grad():
        fc.weight.copy_(w)
    Q.quantize_model(nn.Sequential(fc), 2, scheme="kmeans", keep_zeros=True)
    q = fc.parametrizations.weight[0]
    shared = fc.weight.detach()
    assert torch.equal(shared == 0, w == 0), "pruned weights stay exactly zero, survivors never become zero"
    assert set(shared[w != 0].unique().tolist()) <= set(q.centroids.detach().tolist())
    assert q.storage_bits(w) == (int((w != 0).sum()) * 2, 4 * 32)
    with pytest.raises(ValueError, match="nothing to cluster"):
        Q.KMeansQuantizer(torch.zeros(3, 3), 2, keep_zeros=True)
