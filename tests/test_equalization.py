"""Cross-layer equalization, bias correction and BN re-estimation (quantization/equalization.py)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from compresslab.models import cifar_cnn_dws
from compresslab.quantization import equalization as eq
from compresslab.quantization import quantize_model


def trained_looking_dws(seed=0):
    """A small cifar_cnn_dws with BN statistics and channel scales spread over orders of
    magnitude (as training leaves them), in eval mode."""
    torch.manual_seed(seed)
    model = cifar_cnn_dws(widths=(8, 16, 16))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.1, 4)
            m.weight.data = 10 ** torch.empty(c).uniform_(-2, 1)   # gamma from 0.01 to 10, > 0
            m.bias.data.normal_(0, 0.5)
        elif isinstance(m, nn.Conv2d):
            m.weight.data *= 10 ** torch.empty(m.weight.shape[0], 1, 1, 1).uniform_(-1.5, 1.5)
    return model.eval()


def test_fold_batchnorm_keeps_the_function_and_removes_the_bns():
    model = trained_looking_dws()
    x = torch.randn(4, 3, 32, 32)
    folded = eq.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())   # the original is left alone
    ref = model(x)
    assert (folded(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_fold_across_a_max_pool_refuses_a_negative_scale():
    model = trained_looking_dws()
    model.bn1.weight.data[3] = -0.5   # conv1 -> pool1 -> bn1: max(a z) = a min(z) for a < 0
    with pytest.raises(ValueError, match="max-pool"):
        eq.fold_batchnorm(model)
    model.bn2.weight.data[0] = -0.5   # pw2 -> bn2 directly: a negative scale folds fine
    model.bn1.weight.data[3] = 0.5
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    assert (eq.fold_batchnorm(model)(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_cle_leaves_the_float_function_unchanged():
    folded = eq.fold_batchnorm(trained_looking_dws())
    before = {n: m.weight.detach().clone() for n, m in folded.named_children() if hasattr(m, "weight")}
    x = torch.randn(8, 3, 32, 32)
    ref = folded(x)
    eq.cross_layer_equalization(folded)
    out = folded(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    moved = max(float((folded.get_submodule(n).weight.detach() / w).log().abs().max())
                for n, w in before.items())
    assert moved > 1.0   # the weights changed by factors of e and more, the function did not


def test_after_cle_paired_ranges_are_equal():
    folded = eq.cross_layer_equalization(eq.fold_batchnorm(trained_looking_dws()), tol=1e-7)
    todo = eq.pairs(folded)
    assert ("conv1", "dw2") in todo and ("dw2", "pw2") in todo and ("pw6", "fc") in todo
    for a, b in todo:
        r1 = eq.output_ranges(folded.get_submodule(a))
        r2 = eq.input_ranges(folded.get_submodule(b), len(r1))
        assert torch.allclose(r1, r2, rtol=1e-4), (a, b)


def test_cle_spread_of_channel_ranges_shrinks():
    folded = eq.fold_batchnorm(trained_looking_dws())
    before = eq.range_table(folded)
    after = eq.range_table(eq.cross_layer_equalization(folded))
    assert before["zero at int8"].sum() > 10 and after["zero at int8"].sum() == 0
    assert (after["max / median"] < before["max / median"] / 10)[["pw3", "pw6"]].all()


def test_equalize_pair_with_grouped_convs_and_a_flatten():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("c1", nn.Conv2d(3, 6, 3, padding=1)), ("r1", nn.ReLU()),
        ("c2", nn.Conv2d(6, 4, 3, padding=1, groups=2)), ("r2", nn.ReLU()), ("p", nn.MaxPool2d(2)),
        ("flat", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, 5))])).eval()
    with torch.no_grad():
        model.c1.weight.mul_(torch.tensor([100., 1, 0.01, 3, 0.3, 30]).view(-1, 1, 1, 1))
    x = torch.randn(5, 3, 8, 8)
    ref = model(x)
    eq.cross_layer_equalization(model, tol=1e-7)
    assert (model(x) - ref).abs().max() <= 1e-4 * ref.abs().max()
    r1, r2 = eq.output_ranges(model.c1), eq.input_ranges(model.c2, 6)
    assert torch.allclose(r1, r2, rtol=1e-4)
    r1, r2 = eq.output_ranges(model.c2), eq.input_ranges(model.fc, 4)
    assert torch.allclose(r1, r2, rtol=1e-4)


def test_cle_refuses_unfolded_batchnorm_and_a_relu6_breaks_the_chain():
    with pytest.raises(ValueError, match="fold_batchnorm"):
        eq.cross_layer_equalization(trained_looking_dws())
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert eq.pairs(model) == [("2", "4")]


def test_range_table_counts_channels_that_round_to_zero():
    layer = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 0.5, 0.003, 0.001]).view(4, 1, 1, 1))
    table = eq.range_table(nn.Sequential(OrderedDict(c=layer)))
    assert table.loc["c", "zero at int8"] == 2          # step 1/127: 0.003 and 0.001 < step / 2
    assert table.loc["c", "max / min"] == pytest.approx(1000)


def test_bias_correction_removes_the_mean_output_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, bias=False)).eval()
    data = [torch.rand(16, 3, 8, 8) + 0.5 for _ in range(4)]      # inputs with a positive mean
    with torch.no_grad():
        ref = [model(x) for x in data]
        quantize_model(model, 3, per_channel=False)
        mean_error = lambda: torch.stack([(model(x) - r).mean(dim=(0, 2, 3)) for x, r in zip(data, ref)]
                                         ).mean(0).abs().mean()
        before = mean_error()
        eq.correct_bias(model, data, batches=4)
        after = mean_error()
    assert model[2].bias is not None
    assert after < before / 3, (before, after)


def test_bias_correction_needs_a_quantized_model():
    with pytest.raises(ValueError, match="quantize_model"):
        eq.correct_bias(nn.Sequential(nn.Linear(3, 2)), [torch.randn(2, 3)])


def test_reestimate_bn_recovers_the_datas_mean_and_variance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)).eval()
    model[1].running_mean.fill_(7.0)   # stale statistics, as after pruning
    model[1].running_var.fill_(9.0)
    x = torch.randn(400, 5) * 3 + 1
    with torch.no_grad():
        h = model[0](x)
    eq.reestimate_bn(model, [x[i:i + 100] for i in range(0, 400, 100)], batches=4)
    assert not model.training and model[1].momentum == 0.1
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)
    batch_vars = torch.stack([h[i:i + 100].var(0) for i in range(0, 400, 100)]).mean(0)
    assert torch.allclose(model[1].running_var, batch_vars, rtol=1e-4)       # mean of batch variances
    assert torch.allclose(model[1].running_var, h.var(0), rtol=0.1)          # close to the data's
    eq.reestimate_bn(model, [x], batches=1)
    assert torch.allclose(model[1].running_var, h.var(0), rtol=1e-4)        # one batch: exactly it


def test_cle_undoes_any_rescaling_of_the_channels():
    """Scale-equivalent networks (the same function) equalize to the same weights."""
    folded = eq.fold_batchnorm(trained_looking_dws())
    spread = eq.fold_batchnorm(trained_looking_dws())
    g = torch.Generator().manual_seed(1)
    for a, b in eq.pairs(spread):
        layer1 = spread.get_submodule(a)
        s = 10 ** (4 * torch.rand(layer1.weight.shape[0], generator=g) - 2)   # 0.01 to 100
        eq.rescale_pair(layer1, spread.get_submodule(b), s)
    x = torch.randn(4, 3, 32, 32)
    assert (spread(x) - folded(x)).abs().max() <= 1e-4 * folded(x).abs().max()
    eq.cross_layer_equalization(folded, tol=1e-7)
    eq.cross_layer_equalization(spread, tol=1e-7)
    for (n, m), m2 in zip(folded.named_children(), spread.children()):
        if hasattr(m, "weight"):
            w = m.weight.detach()
            assert torch.allclose(w, m2.weight, rtol=1e-3, atol=1e-6 * float(w.abs().max())), n
