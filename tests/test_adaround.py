from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compresslab import quantization as Q
from compresslab.quantization import adaround as A


def smooth_inputs(n=32, c=4, size=8, seed=0):
    """Correlated, non-negative inputs (neighbouring pixels alike, as after a ReLU): the case
    where rounding each weight to nearest is not the best rounding for the output."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, c, size // 2, size // 2, generator=g), scale_factor=2, mode="bilinear")
    return (x + 0.3 * torch.randn(n, c, size, size, generator=g)).relu()


def scaled(layer, qp):
    s, _ = qp.shaped_like(layer.weight)
    return layer.weight.detach() * (1.0 / s), s


def output_error(layer, w, x):
    """Σ_n ||W x_n - W' x_n||² over the calibration inputs, computed by running the layer."""
    ref = layer(x) - (layer.bias.view(1, -1, *[1] * (x.dim() - 2)) if layer.bias is not None else 0)
    run = F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups) \
        if isinstance(layer, nn.Conv2d) else F.linear(x, w)
    return (run - ref).pow(2).sum().item()


LAYERS = [
    (lambda: nn.Conv2d(4, 6, 3, padding=1), (32, 4, 8, 8)),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False), (32, 4, 8, 8)),
    (lambda: nn.Conv1d(4, 6, 3, padding=1), (32, 4, 10)),
    (lambda: nn.Linear(12, 5), (64, 12)),
]


@pytest.mark.parametrize("make, shape", LAYERS)
def test_patches_times_weight_rows_is_the_layer_output(make, shape):
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)
    cols = A.patches(layer, x)                                   # (groups, K, N)
    groups = getattr(layer, "groups", 1)
    w = A.rows(layer.weight.detach(), groups)                     # (groups, C_out / groups, K)
    out = layer(x) - (layer.bias.view(1, -1, *[1] * (x.dim() - 2)) if layer.bias is not None else 0)
    by_rows = (w @ cols).reshape(out.shape[1], -1)                # (C_out, N)
    expected = out.transpose(0, 1).reshape(out.shape[1], -1)
    assert torch.allclose(by_rows, expected, atol=1e-5)


@pytest.mark.parametrize("make, shape", LAYERS)
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hard_rounding_stays_within_floor_and_ceil(make, shape, bits):
    torch.manual_seed(bits)
    layer, x = make(), torch.randn(shape)
    q, qp = A.adaround_layer(layer, bits, x, iters=60, lr=0.05, lam=0.3)
    ws, _ = scaled(layer, qp)
    assert q.shape == layer.weight.shape
    assert torch.equal(q, q.round())
    assert ((q == torch.floor(ws)) | (q == torch.ceil(ws))).all()
    assert q.min() >= qp.qmin and q.max() <= qp.qmax


def test_mse_range_keeps_clipped_weights_at_the_grid_ends():
    torch.manual_seed(0)
    layer = nn.Linear(256, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 256) ** 3)              # heavy tails: the MSE range clips a few
    x = torch.randn(512, 256)
    q, qp = A.adaround_layer(layer, 3, x, iters=60, lr=0.05, lam=0.3, method="mse")
    ws, _ = scaled(layer, qp)
    clipped = (ws > qp.qmax) | (ws < qp.qmin)
    assert clipped.any()
    assert ((q == torch.floor(ws)) | (q == torch.ceil(ws)) | clipped).all()
    assert torch.equal(q[clipped], ws[clipped].clamp(qp.qmin, qp.qmax).round())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_learned_rounding_has_a_lower_output_error_than_round_to_nearest(bits):
    torch.manual_seed(0)
    layer, x = nn.Conv2d(4, 8, 3, padding=1), smooth_inputs()
    q, qp = A.adaround_layer(layer, bits, x, iters=200, lr=0.03, lam=0.3)
    _, s = scaled(layer, qp)
    rtn = Q.dequantize(Q.quantize(layer.weight.detach(), qp), qp)
    ada_err, rtn_err = output_error(layer, q * s, x), output_error(layer, rtn, x)
    assert ada_err < 0.9 * rtn_err
    assert (q != torch.round(layer.weight.detach() * (1.0 / s))).any()   # some weights rounded the other way


def test_initial_v_reproduces_the_fractional_part():
    frac = torch.cat([torch.tensor([0.0, 0.5, 0.999]), torch.rand(1000)])
    assert torch.allclose(A.rectified_sigmoid(A.initial_v(frac)), frac, atol=1e-5)
    w = torch.randn(50) * 3
    v = A.initial_v(w - torch.floor(w))
    assert torch.allclose(torch.floor(w) + A.rectified_sigmoid(v), w, atol=1e-5)


def test_rectified_sigmoid_reaches_zero_and_one():
    h = A.rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    assert h[0] == 0 and h[2] == 1 and abs(h[1] - 0.5) < 1e-6


def test_beta_is_off_during_the_warm_up_then_anneals_from_20_to_2():
    assert A.beta_at(0, 100) is None and A.beta_at(19, 100) is None
    assert A.beta_at(20, 100) == pytest.approx(20)
    assert A.beta_at(100, 100) == pytest.approx(2)
    betas = [A.beta_at(t, 100) for t in range(20, 101)]
    assert all(a >= b for a, b in zip(betas, betas[1:]))


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 8, 3, padding=1)), ("bn", nn.BatchNorm2d(8)), ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 10)),
    ])).eval()


def loader(n=3, size=16):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n)]


def test_adaround_model_writes_grid_weights_into_a_copy():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = A.adaround_model(model, 3, loader(), iters=30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the original is unchanged
    for name in ("conv", "fc"):
        w, w0 = getattr(out, name).weight.detach(), getattr(model, name).weight.detach()
        qp = Q.qparams(w0, 3, symmetric=True, axis=0)
        s, _ = qp.shaped_like(w0)
        codes = w / s
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert ((codes.round() == torch.floor(w0 / s)) | (codes.round() == torch.ceil(w0 / s))).all()
        assert torch.equal(getattr(out, name).bias, getattr(model, name).bias)
    assert out(loader()[0][0]).shape == (16, 10)


def test_bad_inputs_give_clear_errors():
    layer, x = nn.Linear(4, 3), torch.randn(8, 4)
    with pytest.raises(ValueError, match="too few"):
        A.adaround_layer(layer, 1, x)
    with pytest.raises(TypeError, match="bits"):
        A.adaround_layer(layer, True, x)
    with pytest.raises(ValueError, match="calibration inputs"):
        A.adaround_layer(layer, 4, [])
    with pytest.raises(ValueError, match="iters"):
        A.adaround_layer(layer, 4, x, iters=0)
    with pytest.raises(TypeError, match="nn.Linear"):
        A.patches(nn.ConvTranspose2d(2, 2, 3), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="padding"):
        A.patches(nn.Conv2d(2, 2, 3, padding="same"), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="too few"):
        A.adaround_model(net(), 1, loader())
    with pytest.raises(ValueError, match="no batch"):
        A.adaround_model(net(), 3, [])
    with pytest.raises(ValueError, match="parametrization"):
        A.adaround_model(Q.quantize_model(net(), 4), 3, loader())
