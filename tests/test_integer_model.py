"""A whole CNN in integers: the conversion, its errors, and its agreement with float."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import compresslab as cl
from compresslab import integer as I, integer_model as IM
from compresslab import quantization as Q

from .test_integer import randomize_bn


def small_model(negative=False):
    torch.manual_seed(0)
    return randomize_bn(cl.cifar_cnn(widths=(8, 16, 16)), seed=2, negative=negative)


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 32, 32, generator=g) for _ in range(n)]


def test_every_layer_becomes_an_integer_layer_with_its_relu_fused():
    im = IM.to_integer(small_model(), batches())
    layers = [s for s in im.steps if isinstance(s, I.IntegerLayer)]
    assert len(layers) == 7 and [s.relu for s in layers] == [True] * 6 + [False]
    assert all(s.weight.dtype == torch.int8 and s.bias.dtype == torch.int32 for s in layers)
    assert not [s for s in im.steps if isinstance(s, nn.modules.batchnorm._BatchNorm)]


def test_the_integer_model_matches_the_float_model_to_a_few_output_steps():
    """8-bit codes everywhere: the logits agree with float to a few steps S_y of the output grid,
    and the class almost always."""
    model, calib = small_model(), batches()
    im = IM.to_integer(model, calib)
    x = batches(2, seed=5)[0]
    with torch.no_grad():
        ref, got = model(x), im(x)
    assert (got - ref).abs().max() <= 8 * im.y_scale, float((got - ref).abs().max() / im.y_scale)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.8


def test_codes_in_codes_out_and_the_class_is_the_argmax_of_the_codes():
    im = IM.to_integer(small_model(), batches())
    q_x = im.quantize_input(batches(1, seed=3)[0])
    assert q_x.dtype == torch.int32 and 0 <= int(q_x.min()) and int(q_x.max()) <= 255
    codes = im.codes(q_x)
    assert codes.dtype == torch.int32 and codes.shape == (16, 10)
    logits = im.y_scale * (codes.float() - im.y_zero_point)
    assert torch.equal(codes.argmax(1), logits.argmax(1))


def test_seven_bit_weights_never_saturate_and_eight_bit_weights_can():
    model = small_model()
    calib = [x.abs() * 3 for x in batches()]  # bright inputs: large u8 codes
    x = calib[0]
    im7 = IM.to_integer(model, calib, weight_bits=7)
    assert torch.equal(im7.codes(im7.quantize_input(x), pair_saturation=True), im7.codes(im7.quantize_input(x)))
    im8 = IM.to_integer(model, calib, weight_bits=8)
    layer = im8.steps[0]
    q = im8.quantize_input(x)
    assert not torch.equal(layer(q, pair_saturation=True), layer(q))


def test_a_bn_behind_a_pool_with_a_negative_gamma_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="γ/σ < 0"):
        IM.to_integer(small_model(negative=True), batches())


def test_layers_without_an_integer_version_are_named():
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("act", nn.GELU()), ("flat", nn.Flatten())]))
    with pytest.raises(ValueError, match="act: GELU"):
        IM.to_integer(model, batches(1))
    model = nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("relu", nn.ReLU()), ("fc", nn.Linear(3072, 2))]))
    with pytest.raises(ValueError, match="relu: a ReLU"):
        IM.to_integer(model, batches(1))
    with pytest.raises(ValueError, match="weight_bits"):
        IM.to_integer(small_model(), batches(1), weight_bits=9)


def test_the_weight_codes_are_the_per_channel_symmetric_grid_of_the_folded_weights():
    model = small_model()
    im = IM.to_integer(model, batches())
    folded = I.fold_batchnorm(model, through_maxpool=True, strict=True)
    qp = Q.qparams(folded.conv1.weight.detach(), 8, symmetric=True, axis=0)
    assert torch.equal(im.steps[0].weight.int(), Q.quantize(folded.conv1.weight.detach(), qp))


@pytest.mark.slow
def test_the_zoo_cifar_cnn_in_integers_keeps_its_accuracy():
    """All 6 BNs fold (the 3 behind pools have γ >= 0); integer-only W8A8 on 1,000 test images
    within 1 point of float (the fake-quant simulation loses 0.1; 1 point leaves the sampling
    noise of a different rounding path), and it agrees with float on >= 97% of the labels."""
    cifar = cl.load_dataset("cifar10")
    cnn = cl.load_pretrained("cifar_cnn", "cpu")
    im = IM.to_integer(cnn, cifar.loader("train", 128, subset=256))
    test = cifar.loader("test", 250, subset=1000)
    (ref, labels), (got, _) = cl.predict(cnn, test), cl.predict(im, test)
    acc_f, acc_i = [100 * float((p.argmax(1) == labels).float().mean()) for p in (ref, got)]
    assert abs(acc_f - acc_i) <= 1.0, (acc_f, acc_i)
    assert float((ref.argmax(1) == got.argmax(1)).float().mean()) >= 0.97


def test_the_codes_entering_each_step_are_those_the_model_computes_on_its_way():
    im = IM.to_integer(small_model(), batches())
    q_x = im.quantize_input(batches(1, seed=4)[0])
    pairs = list(im.inputs(q_x))
    assert [s for s, _ in pairs] == im.steps and torch.equal(pairs[0][1], q_x)
    for k, (step, q) in enumerate(pairs):
        assert torch.equal(im.codes(q_x, upto=k), q)                     # the codes entering step k
        nxt = pairs[k + 1][1] if k + 1 < len(pairs) else im.codes(q_x)  # and step k maps them onward
        assert torch.equal(im.step(step, q), nxt)
    last = im.steps[-1]
    assert torch.equal(last(im.codes(q_x, upto=-1)), im.codes(q_x))
    assert torch.equal(im.codes(q_x, upto=len(im.steps)), im.codes(q_x))
