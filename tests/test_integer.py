"""Integer-only inference: BN folding, fixed-point requantization, integer conv / linear layers,
checked code by code against ONNX Runtime's int8 kernels, and the AVX2 16-bit pair saturation."""
from collections import OrderedDict
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import compresslab as cl
from compresslab import deploy, integer as I

FAST = settings(max_examples=60, deadline=None)


def randomize_bn(model, seed=0, negative=True):
    """BatchNorms with running statistics and γ far from their defaults (some γ < 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.2)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g) if negative else torch.rand(c, generator=g) + 0.1)
                m.bias.copy_(torch.randn(c, generator=g))
    return model.eval()

# ---------------------------------------------------------------- BatchNorm folding


def test_folding_every_conv_bn_pair_keeps_the_outputs():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 8, 3, bias=False)), ("bn2", nn.BatchNorm2d(8)), ("relu2", nn.ReLU()),
        ("flat", nn.Flatten()), ("fc", nn.Linear(8 * 6 * 6, 16)), ("bn3", nn.BatchNorm1d(16))])))
    x = torch.randn(5, 3, 8, 8)
    folded = I.fold_batchnorm(model)
    assert I.foldable_pairs(model) == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn3")]
    assert all(isinstance(getattr(folded, b), nn.Identity) for b in ("bn1", "bn2", "bn3"))
    assert isinstance(model.bn1, nn.BatchNorm2d), "the original model is left as it was"
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_bn_after_a_max_pool_folds_only_through_an_explicit_flag_and_only_with_gamma_nonnegative():
    model = randomize_bn(cl.cifar_cnn(widths=(4, 8, 8)), seed=1, negative=False)
    x = torch.randn(3, 3, 32, 32)
    assert [b for _, b in I.foldable_pairs(model)] == ["bn2", "bn4", "bn6"]  # the BNs behind a pool stay
    through = I.fold_batchnorm(model, through_maxpool=True)
    assert [b for _, b in I.foldable_pairs(model, through_maxpool=True)] == [f"bn{i}" for i in range(1, 7)]
    torch.testing.assert_close(through(x), model(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model.bn1.weight[0] = -0.5  # one channel with γ < 0: max-pool(a x) = a min-pool(x) there
    assert not I.commutes_with_maxpool(model.bn1)
    assert "bn1" not in [b for _, b in I.foldable_pairs(model, through_maxpool=True)]
    torch.testing.assert_close(I.fold_batchnorm(model, through_maxpool=True)(x), model(x), atol=1e-4, rtol=1e-4)
    moved = nn.Sequential(model.conv1, model.bn1, model.pool1)  # what folding it anyway would compute
    assert not torch.allclose(moved(x), model.bn1(model.pool1(model.conv1(x))), atol=1e-3)


def test_a_bn_without_running_statistics_is_refused():
    with pytest.raises(ValueError, match="running statistics"):
        I.fold_into(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))

# ---------------------------------------------------------------- fixed point


@FAST
@given(st.floats(1e-9, 2 ** 29, allow_nan=False))
def test_the_multiplier_is_an_int32_in_2_30_2_31_and_holds_m_to_2_minus_31(m):
    m0, n = I.fixed_point_multiplier(m)
    m0, n = int(m0), int(n)
    assert 2 ** 30 <= m0 < 2 ** 31 and 1 <= n <= 62
    assert abs(Fraction(m0, 2 ** n) - Fraction(m)) <= Fraction(m) * Fraction(1, 2 ** 31)


def test_multiplier_edges_and_bad_values():
    assert [int(v) for v in I.fixed_point_multiplier(0.5)] == [2 ** 30, 31]
    assert [int(v) for v in I.fixed_point_multiplier(1 - 2 ** -40)] == [2 ** 30, 30]  # f rounds up to 1
    for bad in (0.0, -0.1, float("nan"), 2.0 ** 31):
        with pytest.raises(ValueError):
            I.fixed_point_multiplier(bad)


@FAST
@given(st.integers(-2 ** 31, 2 ** 31 - 1), st.floats(1e-6, 0.99), st.integers(0, 255))
def test_requantize_is_round_half_up_of_m0_acc_2_minus_n_then_clamped(acc, m, z):
    m0, n = I.fixed_point_multiplier(m)
    got = int(I.requantize(torch.tensor([[acc]]), m0, n, z)[0, 0])
    exact = Fraction(acc * int(m0), 2 ** int(n)) + Fraction(1, 2)
    assert got == min(max(z + (exact.numerator // exact.denominator), 0), 255)


def test_a_fused_relu_clamps_at_the_zero_point():
    m0, n = I.fixed_point_multiplier(0.25)
    acc = torch.tensor([[-400, -4, 0, 4, 400, 4000]])
    assert I.requantize(acc, m0, n, 100).tolist() == [[0, 99, 100, 101, 200, 255]]
    assert I.requantize(acc, m0, n, 100, relu=True).tolist() == [[100, 100, 100, 101, 200, 255]]

# ---------------------------------------------------------------- the integer layer


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2),
                                                            (1, 1, 1, 4)])
def test_integer_accumulators_equal_the_convolution_of_centred_codes(stride, padding, dilation, groups):
    """acc = b_q + conv(q_x - Z_x, q_w), checked with a float64 conv: integer-valued, |values| < 2^53,
    so float64 is exact there. Padding with Z_x must act as padding with real zeros."""
    g = torch.Generator().manual_seed(0)
    q_x = torch.randint(0, 256, (2, 4, 9, 9), generator=g)
    q_w = torch.randint(-127, 128, (8, 4 // groups, 3, 3), generator=g)
    b_q = torch.randint(-5000, 5000, (8,), generator=g)
    layer = I.integer_layer(q_w, torch.full((8,), 0.01), b_q.int(), 0.02, 37, 0.5, 3, stride=stride,
                            padding=padding, dilation=dilation, groups=groups)
    ref = nn.functional.conv2d((q_x - 37).double(), q_w.double(), b_q.double(), stride, padding, dilation, groups)
    assert torch.equal(layer.accumulate(q_x), ref.long())


def test_integer_linear_accumulators_and_codes():
    g = torch.Generator().manual_seed(0)
    q_x, q_w = torch.randint(0, 256, (5, 21), generator=g), torch.randint(-127, 128, (6, 21), generator=g)
    b_q, s_w = torch.randint(-5000, 5000, (6,), generator=g), torch.rand(6, generator=g) / 100 + 1e-3
    layer = I.integer_layer(q_w, s_w, b_q.int(), 0.02, 37, 0.5, 3)
    acc = (q_x - 37) @ q_w.T + b_q
    assert torch.equal(layer.accumulate(q_x), acc)
    exact = torch.floor(acc.double() * 0.02 * s_w.double() / 0.5 + 0.5) + 3  # no t this close to a half
    assert torch.equal(layer(q_x), exact.clamp(0, 255).int())

# ---------------------------------------------------------------- bit for bit against ONNX Runtime


def small_cnn():
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, padding=1)), ("bn1", nn.BatchNorm2d(16)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 16, 3, stride=2, bias=False)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(16, 8, 1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8 * 7 * 7, 10))])), seed=2)


@pytest.fixture(scope="module")
def qdq_models(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("integer")
    model = small_cnn()
    fp32 = deploy.export_onnx(model, tmp / "fp32.onnx", (3, 16, 16))
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(32, 3, 16, 16, generator=g)]
    paths = {rr: deploy.quantize_onnx_int8(fp32, tmp / f"int8_rr{int(rr)}.onnx", calibration, reduce_range=rr)
             for rr in (False, True)}
    return model, paths, torch.randn(64, 3, 16, 16, generator=g)


def near_a_half(acc: torch.Tensor, p: dict) -> torch.Tensor:
    """Where t = acc M lies so close to a half-integer that the roundings of M may disagree:
    ours holds M to 2^-31, ORT's requantization computes S_x S_w / S_y and acc * M in float32
    (a few 2^-24 relative each) and rounds halves to even. 2^-20 |t| covers both."""
    m = (p["x_scale"] * p["weight_scale"].double() / p["y_scale"]).view(-1, *[1] * (acc.dim() - 2))
    t = acc.double() * m
    return (t - t.floor() - 0.5).abs() <= 2 ** -20 * t.abs().clamp(min=1)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_integer_layers_give_onnx_runtimes_codes(qdq_models, reduce_range):
    """Identical codes, except off by one where t = acc M lies within float32 rounding of a half
    (measured on the zoo's cifar_cnn: 6 of 9.2 M codes). Each layer is fed the codes ORT's
    own graph computes for it, so that the inputs are realistic, not uniform noise."""
    _, paths, x = qdq_models
    path = paths[reduce_range]
    layers = I.qdq_layer_params(path)
    assert list(layers) == ["conv1", "conv2", "conv3", "fc"]
    assert [p["op"] for p in layers.values()] == ["Conv", "Conv", "Conv", "Gemm"]
    assert "QLinearConv" in deploy.graph_ops(path, optimized=True)  # ORT runs integer kernels
    for name, p in layers.items():
        q_x = I.ort_cut(path, "input", p["input_name"], x)
        layer = I.from_qdq(p)
        acc, ours, theirs = layer.accumulate(q_x), layer(q_x), I.ort_codes(path, p, q_x)
        assert ours.shape == theirs.shape
        diff = (ours - theirs).abs()
        assert int(diff.max()) <= 1, name
        assert float((diff == 0).float().mean()) >= 0.99, name
        assert bool(near_a_half(acc, p)[diff > 0].all()), f"{name}: a code differs away from a rounding tie"
        assert 0.05 < float(((theirs > 0) & (theirs < 255)).float().mean()), f"{name}: all codes clipped"


def test_the_qdq_reader_gets_codes_that_dequantize_to_the_folded_weights(qdq_models):
    """S_w q_w is the folded weight to S_w / 2, and our b_q = round(b' / (S_x S_w)) is ORT's int32
    bias to one code (ORT divides in float32, we in float64)."""
    model, paths, _ = qdq_models
    folded = I.fold_batchnorm(model)
    for name, p in I.qdq_layer_params(paths[False]).items():
        w = getattr(folded, name).weight.detach()
        s = p["weight_scale"].view(-1, *[1] * (w.dim() - 1))
        assert p["weight"].dtype == torch.int8 and int(p["weight"].abs().max()) == 127
        assert ((p["weight"].float() * s - w).abs() <= s / 2 + 1e-6).all(), name
        if p["bias"] is not None:
            ours = I.quantize_bias(getattr(folded, name).bias, p["x_scale"], p["weight_scale"])
            assert p["bias"].dtype == torch.int32 and int((ours - p["bias"]).abs().max()) <= 1, name

# ---------------------------------------------------------------- vpmaddubsw's 16-bit pairs


def test_a_pair_of_full_8_bit_products_saturates_at_32767():
    layer = I.integer_layer(torch.full((1, 4), 127), torch.ones(1), None, 1.0, 0, 2.0 ** 20, 0)
    q_x = torch.full((1, 4), 255)
    assert int(layer.accumulate(q_x)) == 4 * 255 * 127                      # 129540 in int32
    assert int(layer.accumulate(q_x, pair_saturation=True)) == 2 * 32767    # two saturated pairs
    odd = I.integer_layer(torch.full((1, 3), 127), torch.ones(1), None, 1.0, 0, 2.0 ** 20, 0)
    assert int(odd.accumulate(q_x[:, :3], pair_saturation=True)) == 32767 + 255 * 127  # last pairs a 0


def test_7_bit_weights_never_saturate_and_8_bit_weights_do(qdq_models):
    """2 * 255 * 64 = 32640 <= 32767: with reduce_range no input can change an accumulator. With
    8-bit weights an input of 255 wherever a channel's weights are positive saturates its pairs."""
    _, paths, x = qdq_models
    for name, p in I.qdq_layer_params(paths[True]).items():
        layer = I.from_qdq(p)
        assert int(p["weight"].abs().max()) <= 64
        q_x = I.ort_cut(paths[True], "input", p["input_name"], x)
        for q in (q_x, torch.full_like(q_x, 255)):
            assert torch.equal(layer.accumulate(q, pair_saturation=True), layer.accumulate(q)), name
    p = I.qdq_layer_params(paths[False])["fc"]
    layer, w = I.from_qdq(p), p["weight"].long()
    pair_sums = (w.clamp(min=0) * 255).unflatten(1, (-1, 2)).sum(-1)                 # (O, K/2)
    channel = int(pair_sums.amax(1).argmax())
    assert int(pair_sums.max()) > 32767
    q_x = 255 * (w[channel:channel + 1] > 0).long()        # the adversarial input of that channel
    saturated, exact = layer.accumulate(q_x, pair_saturation=True), layer.accumulate(q_x)
    assert int(saturated[0, channel]) < int(exact[0, channel])
    assert not torch.equal(layer(q_x, pair_saturation=True), layer(q_x))


def test_pair_saturation_needs_u8_inputs():
    layer = I.integer_layer(torch.ones(1, 2, dtype=torch.int8), torch.ones(1), None, 1.0, 0, 1.0, 0)
    with pytest.raises(ValueError, match="uint8"):
        layer(torch.tensor([[-3, 4]]), pair_saturation=True)


@pytest.mark.slow
def test_the_zoo_cifar_cnn_in_integers_gives_onnx_runtimes_codes(tmp_path):
    """The same check on the trained CIFAR CNN and 32 test images, with both weight grids:
    codes identical or one off at a rounding tie; simulated 16-bit pairs change some codes with
    8-bit weights (the first conv, whose three input channels pair up at every tap) and none with 7."""
    pytest.importorskip("onnxruntime")
    cifar = cl.load_dataset("cifar10")
    fp32 = deploy.export_onnx(cl.load_pretrained("cifar_cnn", "cpu"), tmp_path / "fp32.onnx", (3, 32, 32))
    x = next(iter(cifar.loader("test", 32)))[0]
    for rr in (False, True):
        path = deploy.quantize_onnx_int8(fp32, tmp_path / f"int8_{rr}.onnx", cifar.loader("train", 128, subset=256),
                                         batches=2, reduce_range=rr)
        changed = 0
        for name, p in I.qdq_layer_params(path).items():
            q_x = I.ort_cut(path, "input", p["input_name"], x)
            layer = I.from_qdq(p)
            acc, ours, theirs = layer.accumulate(q_x), layer(q_x), I.ort_codes(path, p, q_x)
            diff = (ours - theirs).abs()
            assert int(diff.max()) <= 1 and float((diff == 0).float().mean()) >= 0.99, name
            assert bool(near_a_half(acc, p)[diff > 0].all()), name
            changed += int((layer(q_x, pair_saturation=True) != ours).sum())
        assert (changed == 0) == rr, f"reduce_range={rr}: {changed} codes changed by 16-bit pairs"


def dense_pair_sums(cols, w):
    """The reference: every adjacent pair of products summed and clamped to int16."""
    if cols.shape[-1] % 2:
        cols, w = nn.functional.pad(cols, (0, 1)), nn.functional.pad(w, (0, 1))
    pairs = torch.einsum("nlgjt,gojt->nlgoj", cols.unflatten(-1, (-1, 2)), w.unflatten(-1, (-1, 2)))
    return pairs.clamp(-2 ** 15, 2 ** 15 - 1).sum(-1)


@pytest.mark.parametrize("k,groups", [(27, 1), (32, 2), (9, 4)])
def test_the_sparse_saturation_equals_clamping_every_pair(k, groups):
    """Only pairs whose weights share a sign with 255 (|a| + |b|) > 32767 are clamped: the same
    sums as clamping all of them, on inputs full of 255s and weights full of +-127s."""
    g = torch.Generator().manual_seed(k)
    cols = torch.where(torch.rand(3, 5, groups, k, generator=g) < 0.5, 255,
                       torch.randint(0, 256, (3, 5, groups, k), generator=g))
    w = torch.where(torch.rand(groups, 6, k, generator=g) < 0.4, 127 * torch.randint(-1, 2, (groups, 6, k), generator=g),
                    torch.randint(-127, 128, (groups, 6, k), generator=g))
    reference = dense_pair_sums(cols, w)
    assert torch.equal(I.dot(cols, w, pair_saturation=True), reference)
    assert not torch.equal(I.dot(cols, w), reference)  # the data do saturate
