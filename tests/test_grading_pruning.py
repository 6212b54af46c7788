"""Notebooks 01 and 03's checkers accept the reference answers and reject the usual wrong ones."""
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import compresslab as cl
from compresslab import grading, pruning


def not_implemented(*args):
    raise NotImplementedError


# ---------------------------------------------------------------- 01


def test_threshold_mask():
    torch.manual_seed(0)
    w = torch.randn(50, 40)
    k = round(0.7 * w.numel())
    threshold = torch.kthvalue(w.abs().flatten(), k).values
    assert "right" in grading.threshold_mask((w.abs() > threshold).float(), w, 0.7)
    for wrong, hint in [(None, "no answer"), ((w.abs() <= threshold).float(), "inverted"),
                        ((w.abs() >= threshold).float(), "too few"), ((w > threshold).float(), "removes"),
                        ((w.abs() > threshold).float().T, "shape"), ((w.abs() > threshold).tolist(), "torch.Tensor"),
                        (w.abs() * (w.abs() > threshold), "only 0 and 1")]:
        with pytest.raises(AssertionError, match=hint):
            grading.threshold_mask(wrong, w, 0.7)


def test_weights_only_compression():
    m = pruning.prune_per_layer(cl.load_pretrained("lenet5", "cpu"), {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81})
    layers = [m.conv1, m.conv2, m.fc1, m.fc2]
    n, nnz = sum(l.weight.numel() for l in layers), sum(int((l.weight != 0).sum()) for l in layers)
    assert "right" in grading.weights_only_compression(n / nnz, m)
    for wrong, hint in [(None, "no answer"), (cl.metrics.count_parameters(m) / cl.metrics.count_nonzero(m), "biases"),
                        (nnz / n, "inverse"), (1 - nnz / n, "sparsity"), (n / nnz + 1, "not n / nnz")]:
        with pytest.raises(AssertionError, match=hint):
            grading.weights_only_compression(wrong, m)
    with pytest.raises(AssertionError, match="Module"):
        grading.weights_only_compression(n / nnz, m.state_dict())


def table(b1, b256):
    return pd.DataFrame([{"sparsity": s, "batch": b, "CSR speed-up x": x}
                         for b, xs in ((1, b1), (256, b256)) for s, x in zip((0.0, 0.5, 0.9, 0.99), xs)])


def test_csr_lowest_win_is_judged_on_the_students_table():
    csr = table([0.1, 0.4, 1.3, 4.0], [0.1, 1.2, 2.0, 5.0])
    faster = csr[(csr["batch"] == 1) & (csr["CSR speed-up x"] > 1)]
    assert "right" in grading.csr_lowest_win(faster["sparsity"].min(), csr)
    for wrong, hint in [(None, "is None"), (0.5, "batch 256"), (0.99, "lower sparsity"), (90, "percentage"),
                        (0.8, "not one of"), ("0.9", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.csr_lowest_win(wrong, csr)
    never = table([0.1, 0.4, 0.9, 0.95], [0.1, 0.2, 0.3, 0.4])
    assert "never" in grading.csr_lowest_win(None, never)
    with pytest.raises(AssertionError, match="not faster"):
        grading.csr_lowest_win(0.99, never)
    with pytest.raises(AssertionError, match="table `csr`"):
        grading.csr_lowest_win(0.9, [0.9])


def right_prune(layer, amount):
    w = layer.weight.detach()
    threshold = torch.kthvalue(w.abs().flatten(), round(amount * w.numel())).values
    layer.register_buffer("weight_mask", (w.abs() > threshold).float())
    orig = layer.weight
    del layer._parameters["weight"]
    layer.register_parameter("weight_orig", orig)
    layer.register_forward_pre_hook(lambda m, inputs: setattr(m, "weight", m.weight_orig * m.weight_mask))
    layer.weight = layer.weight_orig * layer.weight_mask
    return layer


def masked_once(layer, amount):  # zeros the weights once, no hook: they come back in training
    w = layer.weight.detach()
    threshold = torch.kthvalue(w.abs().flatten(), round(amount * w.numel())).values
    mask = (w.abs() > threshold).float()
    orig = layer.weight
    with torch.no_grad():
        orig.mul_(mask)
    del layer._parameters["weight"]
    layer.register_parameter("weight_orig", orig)
    layer.register_buffer("weight_mask", mask)
    layer.register_forward_pre_hook(lambda m, inputs: setattr(m, "weight", m.weight_orig * 1))
    return layer


def frozen(layer, amount):  # the mask is right but the weights are a buffer: nothing trains
    right_prune(layer, amount)
    orig = layer._parameters.pop("weight_orig").detach()
    layer.weight_orig = nn.Parameter(orig, requires_grad=False)
    return layer


def test_a_right_pruned_layer_passes():
    assert "all 3" in grading.magnitude_pruned_layer(right_prune)


@pytest.mark.parametrize("wrong,hint", [
    (not_implemented, "NotImplementedError"),
    (lambda layer, amount: prune.l1_unstructured(layer, "weight", amount), "write the mask"),
    (lambda layer, amount: layer, "weight_orig"),
    (masked_once, "non-zero again"),
    (frozen, "did not change"),
    (lambda layer, amount: right_prune(layer, amount - 0.1), "removes"),
])
def test_wrong_pruned_layers_are_rejected(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        grading.magnitude_pruned_layer(wrong)


def test_lenet300_design():
    assert "on target" in grading.lenet300_sparsities({"fc1": 0.9307, "fc2": 0.85, "fc3": 0.5})
    for wrong, hint in [(None, "no answer"), ({"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}, "prune more"),
                        ({"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, "loses"),  # Han et al.'s, without retraining
                        ({"fc1": 92, "fc2": 91, "fc3": 74}, "percentage"), ({"fc1": 0.9, "fc2": 0.9}, "no entry"),
                        ([0.92, 0.91, 0.74], "dict")]:
        with pytest.raises(AssertionError, match=hint):
            grading.lenet300_sparsities(wrong)


# ---------------------------------------------------------------- 03


def test_layerwise_speedup():
    assert "right" in grading.layerwise_speedup(1 / (1 - 0.9))
    for wrong, hint in [(None, "no answer"), (0.1, "kept"), (0.9, "sparsity"), (9, "not it"), ("10x", "number")]:
        with pytest.raises(AssertionError, match=hint):
            grading.layerwise_speedup(wrong)


def fake_results():
    rows = []
    for name, pruned, tuned in [("lenet300", {0.5: (97, 90), 0.9: (80, 30)}, {0.5: (98, 97), 0.9: (97, 90)}),
                                ("lenet5", {0.5: (99, 95), 0.9: (90, 50)}, {0.5: (99, 98), 0.9: (98, 80)})]:
        for s in (0.5, 0.9):
            for seed in (0, 1):
                for i, crit in enumerate(("magnitude (layerwise)", "random (layerwise)")):
                    rows.append(dict(model=name, sparsity=s, criterion=crit, seed=seed,
                                     pruned=pruned[s][i] + seed, **{"fine-tuned": tuned[s][i]}))
    return pd.DataFrame(rows)  # largest gap right after pruning: lenet300 at 0.9; after fine-tuning: lenet5 at 0.9


def test_largest_gap():
    results = fake_results()
    acc = results.groupby(["model", "sparsity", "criterion"])["pruned"].mean().unstack()
    assert "right" in grading.largest_gap((acc["magnitude (layerwise)"] - acc["random (layerwise)"]).idxmax(), results)
    for wrong, hint in [(None, "no answer"), (("lenet5", 0.5), "smallest"), (("lenet5", 0.9), "after fine-tuning"),
                        (("lenet300", 90), "percentage"), (["lenet300", 0.9], "tuple"), (("vgg", 0.9), "No model"),
                        (("lenet300", 0.7), "not pruned")]:
        with pytest.raises(AssertionError, match=hint):
            grading.largest_gap(wrong, results)


@pytest.fixture(scope="module")
def protected():
    m = cl.load_pretrained("lenet300", "cpu")
    pruning.prune_model(m, 0.95, "random", scope="global", exclude=["fc3"], generator=torch.Generator().manual_seed(0))
    small = cl.load_dataset("mnist").loader("train", 128, subset=1000)
    cl.fine_tune(m, small, epochs=1, lr=0.005, progress=False)
    return m, cl.load_dataset("mnist").loader("test", 1000, subset=1000)


def test_protected_output_layer(protected):
    m, test = protected
    acc = cl.evaluate(m, test)["accuracy"]
    assert "right" in grading.protected_output_layer(m, acc, test)
    unpruned = cl.load_pretrained("lenet300", "cpu")
    all_layers = pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.95, "random", scope="global",
                                     generator=torch.Generator().manual_seed(0))
    layerwise = pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.95, "random", scope="layerwise",
                                    exclude=["fc3"], generator=torch.Generator().manual_seed(0))
    untuned = pruning.prune_model(cl.load_pretrained("lenet300", "cpu"), 0.95, "random", scope="global",
                                  exclude=["fc3"], generator=torch.Generator().manual_seed(0))
    for model, a, hint in [(None, acc, "no answer"), (unpruned, cl.evaluate(unpruned, test)["accuracy"], "95% should"),
                           (all_layers, acc, "fc1 and fc2 are zero|fc3"), (layerwise, acc, "global"),
                           (untuned, acc, "fine-tune"), (m, acc - 1, "not this model"), (m, None, "no answer"),
                           (cl.load_pretrained("lenet5", "cpu"), acc, "LeNet-300-100"), (m.state_dict(), acc, "state_dict")]:
        with pytest.raises(AssertionError, match=hint):
            grading.protected_output_layer(model, a, test)


def right_filters(weight, amount, generator):
    mask = torch.ones(weight.shape[0])
    mask[torch.randperm(weight.shape[0], generator=generator)[:round(amount * weight.shape[0])]] = 0
    return mask


def test_a_right_random_filter_mask_passes():
    assert "all 4" in grading.random_filters(right_filters)


@pytest.mark.parametrize("wrong,hint", [
    (not_implemented, "NotImplementedError"),
    (lambda w, a, g: None, "no answer"),
    (lambda w, a, g: 1 - right_filters(w, a, g), "inverted"),
    (lambda w, a, g: right_filters(w, int(a * w.shape[0]) / w.shape[0], g), "not int"),
    (lambda w, a, g: right_filters(w, a, None), "same seed"),
    (lambda w, a, g: right_filters(w, a, g)[:, None, None, None].expand_as(w), "one entry per filter"),
    (lambda w, a, g: pruning.mask_lowest(w.abs().sum((1, 2, 3)), a), "smallest L1 norm"),
    (lambda w, a, g: pruning.mask_lowest(-w.abs().sum((1, 2, 3)), a), "randperm"),
    (lambda w, a, g: right_filters(w, a, g).tolist(), "torch.Tensor"),
])
def test_wrong_random_filter_masks_are_rejected(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        grading.random_filters(wrong)


def test_random_design():
    assert "on target" in grading.random_plan({"fc1": 0.55, "fc2": 0.2, "fc3": 0.0})
    for wrong, hint in [(None, "no answer"), ({"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}, "prune more"),
                        ({"fc1": 0.5, "fc2": 0.5, "fc3": 0.5}, "loses"), ({"fc1": 50, "fc2": 50, "fc3": 0}, "percentage"),
                        ({"fc1": 0.5, "fc2": 0.5, "fc4": 0.0}, "no entry"), ((0.5, 0.5, 0.0), "dict")]:
        with pytest.raises(AssertionError, match=hint):
            grading.random_plan(wrong)
