import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresslab import structured
from compresslab.metrics import count_parameters
from compresslab.models import build_model


def with_running_stats(model, shape, seed=0):
    """Give the BatchNorms non-trivial statistics, as a trained model has."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
    return model.eval()


@pytest.mark.parametrize("amount", [0.25, 0.5, 3])
def test_filter_selection_matches_ln_structured(amount):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    keep = structured.keep_strongest(structured.filter_norms(conv.weight, p=1), amount)
    prune.ln_structured(conv, "weight", amount=amount, n=1, dim=0)
    kept_by_torch = conv.weight_mask.flatten(1).any(1).nonzero().squeeze(1)
    assert torch.equal(keep, kept_by_torch)


@pytest.mark.parametrize("name,shape,amounts", [
    ("cifar_cnn", (3, 32, 32), {"conv1": 0.5, "conv2": 0.25, "conv3": 0.5, "conv4": 0.3, "conv5": 0.6, "conv6": 0.5}),
    ("lenet5", (1, 28, 28), {"conv1": 0.5, "conv2": 0.6, "fc1": 0.7}),
])
def test_shrunk_model_computes_what_the_masked_model_computes(name, shape, amounts):
    model = with_running_stats(build_model(name, seed=1), shape)
    plan = structured.channel_plan(model, amounts)
    small = structured.shrink(model, plan, shape)
    masked = structured.mask_channels(model, plan).eval()
    x = torch.randn(8, *shape)
    torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)
    assert count_parameters(small) < count_parameters(build_model(name)) * 0.8
    assert not any(hasattr(m, "weight_mask") for m in small.modules())


def test_shrunk_shapes():
    model = build_model("cifar_cnn")
    small = structured.prune_filters(model, {"conv1": 0.5, "conv6": 0.75}, (3, 32, 32))
    assert small.conv1.weight.shape == (32, 3, 3, 3) and small.bn1.num_features == 32
    assert small.conv2.weight.shape == (64, 32, 3, 3)
    assert small.conv6.weight.shape == (64, 256, 3, 3) and small.fc.weight.shape == (10, 64)


def residual_net():
    return nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(3, 8, 3, padding=1)), ("bn0", nn.BatchNorm2d(8)), ("relu0", nn.ReLU()),
        ("block", structured.ResidualBlock(8, hidden=6)),
        ("gpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 4)),
    ]))


def test_residual_block_channels_are_pruned_together():
    model = with_running_stats(residual_net(), (3, 12, 12))
    plan = structured.channel_plan(model, {"conv0": 0.5, "block.conv1": 0.5})
    small = structured.shrink(model, plan, (3, 12, 12))
    assert small.block.conv2.out_channels == 4 and small.block.conv1.out_channels == 3
    # the masked equivalent: the stream's channels are zeroed where produced and where added
    masked = structured.mask_channels(model, {**plan, "block.conv2": plan["conv0"]}).eval()
    x = torch.randn(5, 3, 12, 12)
    torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)


def test_residual_block_with_other_channels_is_refused():
    model = residual_net()
    plan = {"conv0": torch.tensor([0, 1, 2, 3]), "block": torch.tensor([4, 5, 6, 7])}
    with pytest.raises(ValueError, match="Residual block 'block'.*addition"):
        structured.shrink(model, plan, (3, 12, 12))


def test_bad_inputs():
    model = build_model("cifar_cnn")
    with pytest.raises(ValueError, match="leave none"):
        structured.channel_plan(model, {"conv1": 1.0})
    with pytest.raises(ValueError, match="fraction in"):
        structured.channel_plan(model, {"conv1": 1.5})
    with pytest.raises(ValueError, match="not a Conv2d or Linear"):
        structured.channel_plan(model, {"bn1": 0.5})
    odd = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("gru", nn.GRU(4, 4))]))
    with pytest.raises(ValueError, match="'gru'.*not supported"):
        structured.shrink(odd, {"conv": torch.tensor([0, 1])}, (3, 8, 8))


def test_same_shapes_and_parameter_count_as_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    ratios = {"conv1": 0.25, "conv2": 0.5, "conv3": 0.25, "conv4": 0.5, "conv5": 0.25, "conv6": 0.5}
    ours = structured.prune_filters(build_model("cifar_cnn", seed=0), ratios, (3, 32, 32))
    theirs = build_model("cifar_cnn", seed=0)
    pruner = tp.pruner.MetaPruner(
        theirs, torch.randn(1, 3, 32, 32), importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio_dict={getattr(theirs, n): r for n, r in ratios.items()}, ignored_layers=[theirs.fc])
    pruner.step()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert count_parameters(ours) == count_parameters(theirs)


def test_make_permanent_folds_every_mask_in():
    model = with_running_stats(build_model("cifar_cnn", seed=2), (3, 32, 32))
    masked = structured.mask_channels(model, structured.channel_plan(model, {"conv1": 0.5}))
    x = torch.randn(4, 3, 32, 32)
    expected = masked(x)
    from compresslab.pruning import make_permanent
    make_permanent(masked)
    assert not any(m._forward_pre_hooks for m in masked.modules())
    assert int((masked.bn1.weight == 0).sum()) == 32
    torch.testing.assert_close(masked(x), expected)


def test_bn_l1_penalty_is_the_sum_of_absolute_scales():
    model = build_model("cifar_cnn", seed=0)
    for bn in (model.bn1, model.bn4):
        nn.init.uniform_(bn.weight, -1, 1)
    expected = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(structured.bn_l1_penalty(model), expected)
    structured.bn_l1_penalty(model).backward()
    assert torch.equal(model.bn1.weight.grad, model.bn1.weight.sign())


def test_slimming_plan_uses_one_global_threshold():
    model = build_model("cifar_cnn", seed=0)
    gammas = {}
    for name, bn in structured.conv_batchnorm_pairs(model).items():
        bn.weight.data = torch.rand(bn.num_features) + (0.5 if name == "conv6" else 0.0)
        gammas[name] = bn.weight.detach().abs()
    plan = structured.slimming_plan(model, 0.3)
    everything = torch.cat(list(gammas.values()))
    threshold = everything.sort().values[round(0.3 * everything.numel())]
    for name, keep in plan.items():
        expected = (gammas[name] >= threshold).nonzero().squeeze(1)
        assert torch.equal(keep, expected), name
    assert len(plan["conv6"]) == 256  # all its scales sit above the global threshold
    small = structured.shrink(model, plan, (3, 32, 32))
    assert small.bn6.num_features == 256 and small.conv1.out_channels == len(plan["conv1"])


def test_slimming_keeps_one_channel_per_layer():
    model = build_model("cifar_cnn", seed=0)
    model.bn2.weight.data.zero_()  # the whole layer below any threshold
    plan = structured.slimming_plan(model, 0.2)
    assert len(plan["conv2"]) == 1
    with pytest.raises(ValueError, match="no convolution followed by a BatchNorm"):
        structured.slimming_plan(build_model("lenet5"), 0.5)
    with pytest.raises(ValueError, match="fraction in"):
        structured.slimming_plan(model, -0.1)


def test_taylor_scores_are_squared_sums_of_gradient_times_weight():
    model = with_running_stats(build_model("cifar_cnn", seed=3), (3, 32, 32))
    model.conv2.weight.data[5] = 0  # a dead filter: no first-order effect on the loss
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    scores = structured.taylor_scores(model, [(x, y)], ["conv2", "conv5"])
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    manual = (model.conv5.weight.grad * model.conv5.weight).flatten(1).sum(1).pow(2)
    torch.testing.assert_close(scores["conv5"], manual)
    assert scores["conv2"][5] == 0 and scores["conv2"].shape == (64,)
    plan = structured.channel_plan(model, {"conv2": 0.25}, scores=scores)
    assert 5 not in plan["conv2"].tolist()


def test_bn_taylor_scores_are_the_squared_derivative_along_a_gate_after_the_bn():
    model = with_running_stats(build_model("cifar_cnn", seed=3), (3, 32, 32))
    torch.manual_seed(1)
    for bn in structured.conv_batchnorm_pairs(model).values():  # scales and shifts as trained ones
        nn.init.uniform_(bn.weight, 0.2, 1), nn.init.uniform_(bn.bias, -0.5, 0.5)
    model.bn2.weight.data[5], model.bn2.bias.data[5] = 0, 0  # a switched-off channel
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    stats = model.bn4.running_mean.clone()
    model.train()
    scores = structured.bn_taylor_scores(model, batches + batches[::-1], batches=2)
    assert model.training and torch.equal(model.bn4.running_mean, stats)  # mode back, statistics untouched
    model.eval()
    expected = torch.zeros(128)
    for x, y in batches:  # a gate z = 1 multiplying bn4's output: I = (dL/dz)^2, averaged
        z = torch.ones(1, 128, 1, 1, requires_grad=True)
        hook = model.bn4.register_forward_hook(lambda m, i, out: out * z)
        loss = nn.functional.cross_entropy(model(x), y)
        hook.remove()
        expected += torch.autograd.grad(loss, z)[0].flatten().pow(2) / len(batches)
    scale = expected.max()  # the scores are tiny (an untrained classifier): compare relative to the largest
    torch.testing.assert_close(scores["conv4"] / scale, expected / scale)
    assert set(scores) == {f"conv{i}" for i in range(1, 7)} and scores["conv2"][5] == 0
    plan = structured.channel_plan(model, {"conv2": 0.25}, scores=scores)
    assert 5 not in plan["conv2"].tolist()


def test_bn_taylor_scores_of_a_masked_model_are_those_of_the_zeroed_one():
    model = with_running_stats(build_model("cifar_cnn", seed=4), (3, 32, 32))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plan = {"conv3": torch.arange(0, 128, 2)}
    zeroed = copy.deepcopy(model)
    for t in (zeroed.conv3.weight, zeroed.bn3.weight, zeroed.bn3.bias):
        t.data[1::2] = 0
    masked = structured.mask_channels(model, plan)
    got, expected = (structured.bn_taylor_scores(m, [(x, y)]) for m in (masked, zeroed))
    for name in expected:
        scale = expected[name].max()
        torch.testing.assert_close(got[name] / scale, expected[name] / scale)
    assert got["conv3"][1::2].abs().max() == 0 and got["conv3"][::2].abs().max() > 0
    with pytest.raises(ValueError, match="followed by affine BatchNorms"):
        structured.bn_taylor_scores(build_model("lenet5"), [(x, y)])
    with pytest.raises(ValueError, match="empty loader"):
        structured.bn_taylor_scores(zeroed, [])
    with pytest.raises(ValueError, match="batches"):
        structured.bn_taylor_scores(zeroed, [(x, y)], batches=0)
