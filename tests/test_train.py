"""fit's two documented side effects: it reseeds the global RNGs, and returns the model in eval mode."""
import copy
import random

import numpy as np
import torch
from torch import nn

from compresslab.train import fit


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def fake_batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]


def train(model, seed=0, epochs=2):
    return fit(model, fake_batches(), epochs, 0.1, seed=seed, device="cpu", progress=False)


def test_fit_returns_the_model_in_eval_mode():
    model = tiny_model().train()
    history = train(model)
    assert model.training is False and not any(m.training for m in model.modules())
    assert list(history["epoch"]) == [1, 2]
    untrained = tiny_model().train()
    train(untrained, epochs=0)
    assert untrained.training is False  # even with nothing to train


def test_fit_reseeds_the_global_rng_so_earlier_randomness_does_not_matter():
    """Same model, data and seed: the same weights, whatever the global state was before (the
    dropout masks come from the reseeded global RNG); another seed gives other weights."""
    start = tiny_model()
    a, b, c = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(123)
    train(a, seed=0)
    after_a = (torch.get_rng_state(), random.random(), np.random.random())
    torch.manual_seed(456), random.seed(456), np.random.seed(456)
    train(b, seed=0)
    after_b = (torch.get_rng_state(), random.random(), np.random.random())
    train(c, seed=1)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a[1].weight, c[1].weight)
    # the global state after fit is set by the seed and the training, not by what came before
    assert torch.equal(after_a[0], after_b[0]) and after_a[1:] == after_b[1:]


def test_fit_leaves_the_global_rng_where_seed_and_training_put_it():
    """Without dropout nothing in training draws from the global RNG: after fit it is exactly
    the state seed_everything(seed) leaves (Python's and NumPy's included)."""
    model = nn.Sequential(nn.Linear(8, 3))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    train(model, seed=7)
    after = torch.rand(3), random.random(), np.random.random()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    expected = torch.rand(3), random.random(), np.random.random()
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
