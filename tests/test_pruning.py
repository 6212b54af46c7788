import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from compresslab import pruning
from compresslab.metrics import count_nonzero
from compresslab.models import build_model


def two_layers(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 1.0, 17])
def test_magnitude_matches_torch_l1_unstructured(amount):
    ours, theirs = two_layers(), two_layers()
    pruning.prune_model(ours, amount, "magnitude", scope="layerwise")
    for m in theirs:
        if isinstance(m, nn.Linear):
            prune.l1_unstructured(m, "weight", amount=amount)
    for a, b in zip(ours, theirs):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.weight_mask, b.weight_mask)


@pytest.mark.parametrize("amount", [0.2, 0.75, 0.95])
def test_global_matches_torch_global_unstructured(amount):
    ours, theirs = two_layers(), two_layers()
    pruning.prune_model(ours, amount, "magnitude", scope="global")
    prune.global_unstructured([(theirs[0], "weight"), (theirs[2], "weight")],
                              prune.L1Unstructured, amount=amount)
    assert torch.equal(ours[0].weight_mask, theirs[0].weight_mask)
    assert torch.equal(ours[2].weight_mask, theirs[2].weight_mask)


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.8])
def test_random_matches_torch_random_unstructured(amount):
    ours, theirs = two_layers(), two_layers()
    torch.manual_seed(123)
    pruning.prune_model(ours, amount, "random", scope="layerwise", layers=["0"])
    torch.manual_seed(123)
    prune.random_unstructured(theirs[0], "weight", amount=amount)
    assert torch.equal(ours[0].weight_mask, theirs[0].weight_mask)


def test_global_prunes_more_where_weights_are_small():
    model = two_layers()
    with torch.no_grad():
        model[2].weight.mul_(0.01)
    pruning.prune_model(model, 0.3, scope="global")
    kept = pruning.kept_fraction(model)
    assert kept["2"] < kept["0"]


def test_masked_weights_stay_zero_through_training_and_remove_makes_it_permanent():
    model = two_layers()
    pruning.prune_model(model, 0.6, scope="layerwise")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(64, 20), torch.randint(0, 10, (64,))
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    for m in (model[0], model[2]):
        assert torch.all(m.weight[m.weight_mask == 0] == 0)
    assert pruning.kept_fraction(model)["0"] == pytest.approx(0.4, abs=0.01)
    before = count_nonzero(model)
    pruning.make_permanent(model)
    assert not hasattr(model[0], "weight_mask") and count_nonzero(model) == before


def test_pruning_twice_composes_the_masks():
    model = two_layers()
    pruning.prune_model(model, 0.5, scope="layerwise")
    first = pruning.masks_of(model)
    pruning.prune_model(model, 0.8, scope="layerwise")
    second = pruning.masks_of(model)
    for n in first:
        assert torch.all(second[n] <= first[n]), "a weight pruned once must stay pruned"
        assert second[n].mean().item() == pytest.approx(0.2, abs=0.01)


def test_exclude_and_select_layers():
    model = build_model("lenet300")
    pruning.prune_model(model, 0.9, layers=["fc1", "fc2", "fc3"], exclude=["fc3"])
    kept = pruning.kept_fraction(model)
    assert kept["fc3"] == 1.0 and kept["fc1"] < 0.2


@pytest.mark.parametrize("bad,error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                       ("half", TypeError), (True, TypeError)])
def test_bad_amounts(bad, error):
    with pytest.raises(error, match="amount"):
        pruning.prune_model(two_layers(), bad)


def test_int_amount_is_a_count_as_in_torch():
    ours, theirs = two_layers(), two_layers()
    pruning.prune_model(ours, 1, scope="layerwise", layers=["0"])
    prune.l1_unstructured(theirs[0], "weight", amount=1)
    assert int((ours[0].weight_mask == 0).sum()) == 1
    assert torch.equal(ours[0].weight_mask, theirs[0].weight_mask)


def test_bad_counts_layers_and_scope():
    with pytest.raises(ValueError, match="Cannot prune 1000 weights"):
        pruning.prune_model(two_layers(), 1000, scope="layerwise")
    with pytest.raises(ValueError, match="No prunable layer named"):
        pruning.prune_model(two_layers(), 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="selection is empty"):
        pruning.prune_model(two_layers(), 0.5, layers=[])
    with pytest.raises(ValueError, match="scope"):
        pruning.prune_model(two_layers(), 0.5, scope="everywhere")
    with pytest.raises(ValueError, match="Unknown criterion"):
        pruning.prune_model(two_layers(), 0.5, criterion="taylor")


def test_agp_schedule_values():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, with s_i=0, s_f=0.8, t0=0, n=10, dt=5
    f = lambda t: pruning.agp_sparsity(t, 0.0, 0.8, 0, 10, 5)
    assert f(0) == 0.0
    assert f(25) == pytest.approx(0.8 + (0 - 0.8) * 0.5 ** 3)  # = 0.7
    assert f(50) == pytest.approx(0.8) and f(500) == pytest.approx(0.8)
    assert all(f(t) <= f(t + 5) for t in range(0, 50, 5))
    with pytest.raises(ValueError, match="s_initial <= s_final"):
        pruning.agp_sparsity(0, 0.9, 0.5, 0, 10, 5)


def test_gradual_pruner_reaches_final_sparsity():
    model = two_layers()
    pruner = pruning.GradualPruner(model, s_final=0.8, n=4, dt=2)
    for step in range(1, 12):
        pruner(step)
    assert [s for _, s in pruner.history][-1] == pytest.approx(0.8)
    total = sum(m.weight.numel() for m in (model[0], model[2]))
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[2]))
    assert zeros / total == pytest.approx(0.8, abs=0.01)


def test_iterative_steps():
    assert pruning.iterative_steps(0.5, 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert pruning.iterative_steps(0.5, 0.2) == [0.2, 0.4, 0.5]
    with pytest.raises(ValueError):
        pruning.iterative_steps(0.5, 0.0)


def test_geometric_steps_remove_the_same_share_each_round():
    steps = pruning.geometric_steps(0.97, 4)
    assert steps[-1] == pytest.approx(0.97)
    kept = [1.0] + [1 - s for s in steps]
    ratios = [b / a for a, b in zip(kept, kept[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)
    with pytest.raises(ValueError):
        pruning.geometric_steps(1.0, 3)


def test_soft_pruning_lets_weights_grow_back():
    model = two_layers()
    soft = pruning.SoftPruner(model, 0.5)
    soft()
    zero_before = model[0].weight == 0
    assert zero_before.float().mean() > 0.3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(8, 20)).pow(2).sum()
    loss.backward(); opt.step()
    assert (model[0].weight[zero_before] != 0).any(), "soft-pruned weights may grow back"
    assert not hasattr(model[0], "weight_mask")


def test_gradual_pruner_masks_only_grow():
    """AGP is gradual, not dynamic: a weight pruned at one step stays pruned at every later one,
    even if its stored value (weight_orig) becomes the largest of the layer."""
    model = two_layers()
    pruner = pruning.GradualPruner(model, s_final=0.8, n=4, dt=1)
    pruner(1)
    previous = pruning.masks_of(model)
    for step in range(2, 6):
        for name, m in pruning.prunable_layers(model).items():
            with torch.no_grad():  # tempt it: the pruned weights' stored values become huge
                m.weight_orig[previous[name] == 0] = 100.0
        pruner(step)
        masks = pruning.masks_of(model)
        for name in masks:
            assert (masks[name] <= previous[name]).all(), f"a pruned weight of {name} came back at step {step}"
        previous = masks
    assert [s for _, s in pruner.history][-1] == pytest.approx(0.8)
