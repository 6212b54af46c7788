"""The checkers of notebooks 02 and 04 accept a right answer and reject the usual wrong ones with a hint."""
import copy

import pandas as pd
import pytest
import torch
from torch import nn

from compresslab import grading, structured, zoo


@pytest.fixture(scope="module")
def base():
    return zoo.load_pretrained("cifar_cnn", "cpu")


@pytest.fixture(scope="module")
def slim():
    return zoo.load_pretrained("cifar_cnn_slim", "cpu")


# ---------------------------------------------------------------- notebook 02

def test_pruned_conv_flops():
    kept = 128 - round(0.3 * 128)
    assert "right" in grading.pruned_conv_flops(2 * kept * kept * 3 * 3 * 8 * 8)
    for wrong, hint in [(None, "no answer"), (kept * kept * 3 * 3 * 8 * 8, "multiply-adds"),
                        (2 * 128 * 128 * 3 * 3 * 8 * 8, "unpruned"), (2 * 0.7 * 128 * 0.7 * 128 * 3 * 3 * 8 * 8, "round"),
                        (12345, "kept channel counts"), ("1e6", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.pruned_conv_flops(wrong)


def test_l2_filters(base):
    w2 = base.conv2.weight.detach()
    scores = w2.flatten(1).pow(2).sum(1).sqrt()
    right = scores.topk(w2.shape[0] - round(0.5 * w2.shape[0])).indices.sort().values
    assert "right" in grading.l2_filters(right, w2)
    l1 = w2.flatten(1).abs().sum(1).topk(32).indices.sort().values
    for wrong, hint in [(None, "no answer"), (scores.topk(32).indices, "sort"),
                        (scores.topk(32, largest=False).indices.sort().values, "smallest"),
                        (right[:-1], "keeps 31"), (scores > scores.median(), "mask"), (right.float(), "floats")]:
        with pytest.raises(AssertionError, match=hint):
            grading.l2_filters(wrong, w2)
    if not torch.equal(l1, right):
        with pytest.raises(AssertionError, match="L1"):
            grading.l2_filters(l1, w2)


def test_best_speedup_batch():
    speed = pd.DataFrame({"model": ["structured (L1 filters)"] * 3 + ["dense"] * 3, "batch": [1, 16, 256] * 2,
                          "speed-up x": [0.9, 1.4, 1.2, 1, 1, 1]})
    assert "right" in grading.best_speedup_batch(16, speed)
    for wrong, hint in [(None, "no answer"), (1, "smallest"), (256, "not its largest"), (32, "not one of"), ("16", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.best_speedup_batch(wrong, speed)


def remove_channels(model, conv_name, keep):
    model = copy.deepcopy(model)
    names = [n for n, _ in model.named_children()]
    conv = getattr(model, conv_name)
    c_out = conv.out_channels
    conv.weight = nn.Parameter(conv.weight.detach()[keep].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[keep].clone())
    conv.out_channels = len(keep)
    for name in names[names.index(conv_name) + 1:]:
        m = getattr(model, name)
        if isinstance(m, nn.BatchNorm2d):
            m.weight = nn.Parameter(m.weight.detach()[keep].clone())
            m.bias = nn.Parameter(m.bias.detach()[keep].clone())
            m.running_mean, m.running_var = m.running_mean[keep].clone(), m.running_var[keep].clone()
            m.num_features = len(keep)
        elif isinstance(m, nn.Conv2d):
            m.weight = nn.Parameter(m.weight.detach()[:, keep].clone())
            m.in_channels = len(keep)
            break
        elif isinstance(m, nn.Linear):
            per = m.in_features // c_out
            cols = (keep[:, None] * per + torch.arange(per)).flatten()
            m.weight = nn.Parameter(m.weight.detach()[:, cols].clone())
            m.in_features = len(cols)
            break
    return model


def masked_only(model, conv_name, keep):
    return structured.mask_channels(model, {conv_name: keep})


def no_running_stats(model, conv_name, keep):
    model = remove_channels(model, conv_name, keep)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean.shape[0] == len(keep):
            m.running_mean, m.running_var = torch.zeros(len(keep)), torch.ones(len(keep))
    return model


def pixel_major_linear(model, conv_name, keep):
    out = remove_channels(model, conv_name, keep)
    fc, conv = getattr(model, "fc"), getattr(model, conv_name)
    per = fc.in_features // conv.out_channels
    if per > 1 and conv_name == [n for n, m in model.named_children() if isinstance(m, nn.Conv2d)][-1]:
        cols = (torch.arange(per)[:, None] * conv.out_channels + keep).flatten()  # HWC order, the wrong one
        out.fc.weight = nn.Parameter(fc.weight.detach()[:, cols].clone())
    return out


def not_implemented(model, conv_name, keep):
    raise NotImplementedError


def test_channel_surgery():
    assert "all 4" in grading.channel_surgery(remove_channels)
    for wrong, hint in [(None, "no answer"), (not_implemented, "NotImplementedError"), (masked_only, "physically"),
                        (no_running_stats, "running_mean"), (pixel_major_linear, "channel-major"),
                        (lambda model, conv_name, keep: structured.shrink(model, {conv_name: keep}, (3, 32, 32)), "package"),
                        (lambda model, conv_name, keep: model.state_dict(), "Module")]:
        with pytest.raises(AssertionError, match=hint):
            grading.channel_surgery(wrong)


def test_filter_pruning_plan(monkeypatch):
    right = {"conv1": 0.0, "conv2": 0.0, "conv3": 0.1, "conv4": 0.0, "conv5": 0.3, "conv6": 0.1}
    assert "target met" in grading.filter_pruning_plan(right)
    for wrong, hint in [(None, "no answer"), (dict.fromkeys(right, 0.0), "FLOPs"), (dict.fromkeys(right, 0.05), "FLOPs"),
                        ({"conv1": 0.3}, "no entry"), ([0.1] * 6, "dict"), ({**right, "conv5": 30}, "percentage")]:
        with pytest.raises(AssertionError, match=hint):
            grading.filter_pruning_plan(wrong)
    # a plan that prunes too hard (uniform 30%: 43 points lost when measured), without its 2-second evaluation
    monkeypatch.setattr(grading.structured, "val_accuracy", lambda model, name, n: 54.0)
    with pytest.raises(AssertionError, match="lost"):
        grading.filter_pruning_plan(dict.fromkeys(right, 0.3))


# ---------------------------------------------------------------- notebook 04

def test_linf_scores(base):
    w1 = base.conv1.weight.detach()
    assert "right" in grading.linf_scores(w1.abs().flatten(1).max(dim=1).values, w1)
    for wrong, hint in [(None, "no answer"), (w1.flatten(1).max(1).values, "absolute"), (w1.abs().flatten(1).sum(1), "L1"),
                        (w1.abs().flatten(2).max(2).values, "shape"), (w1.abs().max().item(), "Tensor")]:
        with pytest.raises(AssertionError, match=hint):
            grading.linf_scores(wrong, w1)


def test_spearman_rho():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(50, generator=g)
    b = a + 0.3 * torch.rand(50, generator=g) ** 3
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    assert "right" in grading.spearman_rho(float((ra * rb).sum() / (ra.norm() * rb.norm())), a, b)
    pearson = float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm()))
    oa, ob = a.argsort().double(), b.argsort().double()
    one = float(((oa - oa.mean()) * (ob - ob.mean())).sum() / ((oa - oa.mean()).norm() * (ob - ob.mean()).norm()))
    for wrong, hint in [(None, "no answer"), (pearson, "Pearson"), (one, "argsort twice"), (1.0, "Not Spearman"), ("0.9", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.spearman_rho(wrong, a, b)


def test_slimming_threshold(slim):
    plan = structured.slimming_plan(slim, 0.5)
    pairs_bn = structured.conv_batchnorm_pairs(slim)
    threshold = min(float(pairs_bn[n].weight.detach().abs()[keep].min()) for n, keep in plan.items())
    below = int(sum((bn.weight.detach().abs() < threshold).sum() for bn in pairs_bn.values()))
    assert "right" in grading.slimming_threshold(threshold, below, slim, plan)
    largest_removed = max(float(bn.weight.detach().abs()[~torch.isin(torch.arange(bn.num_features), plan[n])].max())
                          for n, bn in pairs_bn.items())
    for t, b, hint in [(None, below, "no answer"), (largest_removed, below, "removed"), (0.0, below, "does not separate"),
                       (1.0, below, "does not separate"), ((threshold + largest_removed) / 2, below, "smallest"),
                       (threshold, None, "no answer"), (threshold, below / 896, "whole"), (threshold, below + 1, "strictly"),
                       (threshold, 10, "not the number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.slimming_threshold(t, b, slim, plan)


def my_slimming_plan(model, amount):
    pairs = structured.conv_batchnorm_pairs(model)
    gammas = {n: bn.weight.detach().abs() for n, bn in pairs.items()}
    everything = torch.cat(list(gammas.values()))
    k = round(amount * len(everything))
    removed = torch.zeros(len(everything), dtype=torch.bool)
    removed[everything.topk(k, largest=False).indices] = True
    plan, start = {}, 0
    for n, g in gammas.items():
        alive = ~removed[start:start + len(g)]
        start += len(g)
        alive[g.argmax()] = True
        plan[n] = alive.nonzero().squeeze(1)
    return plan


def test_global_slimming_plan():
    assert "right" in grading.global_slimming_plan(my_slimming_plan)

    def per_layer(model, amount):
        return {n: structured.keep_strongest(bn.weight.detach().abs(), amount)
                for n, bn in structured.conv_batchnorm_pairs(model).items()}

    def no_floor(model, amount):
        pairs = structured.conv_batchnorm_pairs(model)
        everything = torch.cat([bn.weight.detach().abs() for bn in pairs.values()])
        t = everything.kthvalue(round(amount * len(everything))).values
        return {n: (bn.weight.detach().abs() > t).nonzero().squeeze(1) for n, bn in pairs.items()}

    def signed(model, amount):
        plan = my_slimming_plan(copy.deepcopy(model), amount)
        pairs = structured.conv_batchnorm_pairs(model)
        everything = torch.cat([bn.weight.detach() for bn in pairs.values()])
        t = everything.kthvalue(round(amount * len(everything))).values
        return {n: ((bn.weight.detach() > t) | (torch.arange(bn.num_features) == bn.weight.detach().argmax())).nonzero().squeeze(1)
                for n, bn in pairs.items()} if plan else plan

    for wrong, hint in [(None, "no answer"), (not_implemented_plan, "NotImplementedError"), (per_layer, "global"),
                        (no_floor, "no channel left"), (signed, "gamma"),
                        (lambda model, amount: structured.slimming_plan(model, amount), "package"),
                        (lambda model, amount: {n: torch.ones(bn.num_features, dtype=torch.bool)
                                                for n, bn in structured.conv_batchnorm_pairs(model).items()}, "mask"),
                        (lambda model, amount: [0, 1], "dict")]:
        with pytest.raises(AssertionError, match=hint):
            grading.global_slimming_plan(wrong)


def not_implemented_plan(model, amount):
    raise NotImplementedError


def test_slimming_design(slim, monkeypatch):
    gammas = torch.cat([bn.weight.detach().abs() for bn in structured.conv_batchnorm_pairs(slim).values()])
    right = structured.slimming_plan(slim, float((gammas < 1e-4).float().mean()))
    assert "target met" in grading.slimming_design(right)
    full = {n: torch.arange(bn.num_features) for n, bn in structured.conv_batchnorm_pairs(slim).items()}
    for wrong, hint in [(None, "no answer"), (full, "FLOPs"), (structured.slimming_plan(slim, 0.4), "FLOPs"),
                        ({"conv1": [0, 1]}, "no entry"), (slim, "dict"),
                        ({**full, "conv1": torch.tensor([], dtype=torch.long)}, "no channel left")]:
        with pytest.raises(AssertionError, match=hint):
            grading.slimming_design(wrong)
    # cutting into the channels still in use (0.56: 34 points lost when measured), without its evaluation
    monkeypatch.setattr(grading.structured, "val_accuracy", lambda model, name, n: 57.0)
    with pytest.raises(AssertionError, match="lost"):
        grading.slimming_design(structured.slimming_plan(slim, 0.56))


def test_a_students_helper_may_share_a_package_name():
    """The package's versions are switched off while the student's code runs; a helper of the
    student's own with the same name (here ``shrink`` and ``slimming_plan``) is no shortcut."""
    def shrink(model, conv_name, keep):
        return remove_channels(model, conv_name, keep)

    def slimming_plan(model, amount):
        return my_slimming_plan(model, amount)

    assert "all 4" in grading.channel_surgery(lambda model, conv_name, keep: shrink(model, conv_name, keep))
    assert "right" in grading.global_slimming_plan(lambda model, amount: slimming_plan(model, amount))
    assert structured.shrink.__module__ == "compresslab.structured"  # restored afterwards
