from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compresslab import distillation as kd
from compresslab import hinton
from compresslab import zoo
from compresslab.data import Dataset
from compresslab.metrics import count_parameters
from compresslab.models import DATASET_OF, build_model
from compresslab.train import fit


def logits_and_labels(n=16, k=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, generator=g), scale * torch.randn(n, k, generator=g),
            torch.randint(0, k, (n,), generator=g))

# ---------------------------------------------------------------- the KD loss


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kd_loss_is_cross_entropy_when_alpha_is_zero(T):
    s, t, y = logits_and_labels()
    assert torch.equal(kd.kd_loss(s, t, y, T=T, alpha=0.0), F.cross_entropy(s, y))


def test_kd_loss_matches_the_formula_written_out():
    """alpha T^2 (1/N) sum_n sum_c p_t log(p_t / p_s) + (1 - alpha) CE: KL(teacher || student)."""
    s, t, y = logits_and_labels()
    T, alpha = 3.0, 0.7
    p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    expected = alpha * T ** 2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd.kd_loss(s, t, y, T, alpha), expected)


def test_kl_term_vanishes_when_the_student_equals_the_teacher():
    s, t, y = logits_and_labels()
    assert kd.kd_loss(t.clone(), t, y, T=4.0, alpha=1.0).abs() < 1e-6
    assert kd.kd_loss(s, t, y, T=4.0, alpha=1.0) > 0.1


def soft_gradient(s, t, T):
    s = s.clone().requires_grad_(True)
    kd.kd_loss(s, t, torch.zeros(len(s), dtype=torch.long), T=T, alpha=1.0).backward()
    return s.grad


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_soft_gradient_is_T_times_the_probability_difference(T):
    """d/dz_s of T^2 KL / N is T (p_s - p_t) / N: the T^2 of the loss against the 1/T of the softmax."""
    s, t, _ = logits_and_labels()
    expected = T * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1)) / len(s)
    torch.testing.assert_close(soft_gradient(s, t, T), expected)


def test_T_squared_keeps_the_soft_gradient_scale_independent_of_T():
    """For logits small against T, the gradient is ~ (d - mean d) / (K N), d = z_s - z_t, at every
    T (Hinton et al., section 2.1); without the T^2 factor it would shrink as 1 / T^2."""
    s, t, _ = logits_and_labels(n=8, k=10, scale=0.02)
    d = s - t
    limit = (d - d.mean(1, keepdim=True)) / (10 * len(s))
    grads = {T: soft_gradient(s, t, T) for T in (2.0, 5.0, 20.0)}
    for T, g in grads.items():
        assert (g - limit).norm() < 0.02 * limit.norm(), f"T = {T}"
    ratio = grads[20.0].norm() / grads[2.0].norm()
    assert 0.95 < ratio < 1.05, f"soft-gradient norm ratio T=20 vs T=2: {ratio:.3f}"


def test_soft_targets_soften_with_temperature():
    z = torch.tensor([[5.0, 2.0, 0.0]])
    p1, p20 = kd.soft_targets(z, 1), kd.soft_targets(z, 20)
    torch.testing.assert_close(p1.sum(1), torch.ones(1))
    assert p1[0, 0] > 0.9 and p20[0, 0] < 0.4 and p20[0, 2] > 0.28


@pytest.mark.parametrize("T,error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                     (float("inf"), ValueError), ("4", TypeError), (True, TypeError)])
def test_bad_temperature(T, error):
    s, t, y = logits_and_labels()
    with pytest.raises(error, match="temperature T must be a positive number"):
        kd.kd_loss(s, t, y, T=T, alpha=0.5)
    with pytest.raises(error, match="temperature"):
        kd.distillation_loss_fn(nn.Linear(2, 2), T=T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    s, t, y = logits_and_labels()
    with pytest.raises(ValueError, match=r"alpha .* must lie in \[0, 1\]"):
        kd.kd_loss(s, t, y, T=4, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        kd.distillation_loss_fn(nn.Linear(2, 2), alpha=alpha)


def test_teacher_and_student_with_different_numbers_of_classes():
    teacher, student = nn.Linear(6, 10), nn.Linear(6, 5)
    loss_fn = kd.distillation_loss_fn(teacher, T=4, alpha=0.5)
    with pytest.raises(ValueError, match="student has 5 outputs.*teacher has 10"):
        loss_fn(student, torch.randn(4, 6), torch.zeros(4, dtype=torch.long))

# ---------------------------------------------------------------- features


def small_cnn(width, classes=10):
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, width, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(width)), ("relu1", nn.ReLU()),
        ("gpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(width, classes)),
    ]))


def test_feature_hooks_capture_the_named_outputs_and_clean_up():
    model = small_cnn(4).eval()
    x = torch.randn(2, 3, 8, 8)
    with kd.feature_hooks(model, ["relu1", "flatten"]) as feats:
        out = model(x)
    torch.testing.assert_close(feats["relu1"], torch.relu(model.bn1(model.conv1(x))))
    torch.testing.assert_close(model.fc(feats["flatten"]), out)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), kd.feature_hooks(model, ["relu1"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no layer.*'relu9'.*its layers are"):
        with kd.feature_hooks(model, ["relu9"]):
            pass


def test_hint_projection_maps_student_width_to_teacher_width():
    conv = kd.hint_projection((2, 8, 4, 4), (2, 32, 4, 4))
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (32, 8, 1, 1)
    lin = kd.hint_projection((2, 800), (2, 1200))
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (1200, 800)
    with pytest.raises(ValueError, match="same resolution"):
        kd.hint_projection((2, 8, 4, 4), (2, 32, 8, 8))


def test_cosine_loss_ignores_scale_and_sees_direction():
    f = torch.randn(4, 3, 2, 2)
    assert kd.cosine_loss(2.5 * f, f) < 1e-6
    torch.testing.assert_close(kd.cosine_loss(-f, f), torch.tensor(2.0))
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    torch.testing.assert_close(kd.cosine_loss(a, b), torch.tensor(1.0))
    torch.testing.assert_close(kd.hint_loss(a, b), torch.tensor(5.0))  # (1 + 9) / 2
    with pytest.raises(ValueError, match="differ in shape.*with_hint_projection"):
        kd.cosine_loss(torch.randn(2, 3), torch.randn(2, 4))


def batches(n=4, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, classes, (8,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("alpha,hint,feature_loss", [
    (0.9, None, "mse"), (0.0, ("relu1", "relu1"), "mse"), (0.5, ("relu1", "relu1"), "cosine")])
def test_fit_trains_the_student_and_projection_not_the_teacher(alpha, hint, feature_loss):
    torch.manual_seed(0)
    teacher, student = small_cnn(16).train(), small_cnn(4)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = kd.with_hint_projection(student, teacher, "relu1", "relu1", batches(1)[0][0]) if hint else student
    before = [p.detach().clone() for p in model.parameters()]
    loss_fn = kd.distillation_loss_fn(teacher, T=4, alpha=alpha, hint=hint, beta=1.0,
                                      feature_loss=feature_loss)
    fit(model, batches(), epochs=1, lr=0.05, weight_decay=0.0, loss_fn=loss_fn, device="cpu", progress=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "every weight trains"
    if hint:
        assert model.projection.weight.shape == (16, 4, 1, 1)
        assert any(p is model.projection.weight for p in model.parameters())
    assert not teacher.training  # BatchNorm statistics and dropout of the teacher stay fixed
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(not m._forward_hooks for m in list(teacher.modules()) + list(model.modules()))


def test_feature_loss_is_added_with_weight_beta():
    torch.manual_seed(0)
    teacher, student = small_cnn(4).eval(), small_cnn(4).eval()
    x, y = batches(1)[0]
    with torch.no_grad():
        plain = kd.distillation_loss_fn(teacher, T=2, alpha=0.5)(student, x, y)
        both = kd.distillation_loss_fn(teacher, T=2, alpha=0.5, hint=("relu1", "relu1"), beta=3.0)(student, x, y)
        with kd.feature_hooks(student, ["relu1"]) as fs, kd.feature_hooks(teacher, ["relu1"]) as ft:
            student(x), teacher(x)
    torch.testing.assert_close(both, plain + 3.0 * F.mse_loss(fs["relu1"], ft["relu1"]))


def test_same_width_needs_no_projection_and_other_widths_need_one():
    teacher, student = small_cnn(8), small_cnn(8)
    assert isinstance(kd.with_hint_projection(student, teacher, "relu1", "relu1",
                                              torch.randn(2, 3, 8, 8)).projection, nn.Identity)
    loss_fn = kd.distillation_loss_fn(small_cnn(16), hint=("relu1", "relu1"))
    with pytest.raises(ValueError, match="differ in shape.*with_hint_projection"):
        loss_fn(small_cnn(4), *batches(1)[0])
    with pytest.raises(ValueError, match="Unknown feature loss"):
        kd.distillation_loss_fn(teacher, feature_loss="l1")

# ---------------------------------------------------------------- Hinton et al.'s experiments


def test_class_similarity_is_the_mean_soft_target_per_true_class():
    logits = torch.tensor([[2.0, 0.0, 0.0], [4.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    sim = hinton.class_similarity(logits, labels, T=2.0)
    p = torch.softmax(logits / 2, 1)
    torch.testing.assert_close(sim[0], (p[0] + p[1]) / 2)
    torch.testing.assert_close(sim[1], p[2])
    assert torch.equal(sim[2], torch.zeros(3))  # no sample of class 2
    torch.testing.assert_close(sim[:2].sum(1), torch.ones(2))


def identity_classifier():
    fc = nn.Linear(10, 10)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(10))
        fc.bias.zero_()
    return nn.Sequential(OrderedDict([("fc", fc)]))


def test_raise_class_bias_shifts_one_logit():
    model = identity_classifier()
    x = torch.randn(5, 10)
    before = model(x).detach()
    hinton.raise_class_bias(model, 3, 2.5)
    diff = model(x).detach() - before
    torch.testing.assert_close(diff[:, 3], torch.full((5,), 2.5))
    assert torch.equal(diff[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]], torch.zeros(5, 9))
    with pytest.raises(ValueError, match="Class 10 does not exist.*10 classes"):
        hinton.raise_class_bias(model, 10, 1.0)


def test_best_bias_delta_recovers_the_missing_class():
    """3s score 1 below a rival class; other digits score 2.5 above class 3: any delta in
    (1, 2.5) gets everything right, and the search returns the smallest on its grid, 1.25."""
    x, y = torch.zeros(20, 10), torch.arange(20) % 10
    for i, c in enumerate(y.tolist()):
        if c == 3:
            x[i, 3], x[i, 2] = 2.0, 3.0  # a tie goes to the lower index, the rival
        else:
            x[i, c], x[i, 3] = 3.0, 0.5
    loader = [(x[:10], y[:10]), (x[10:], y[10:])]
    table = hinton.bias_sweep(identity_classifier(), loader, cls=3)
    assert table.loc[table.delta == 0, "class_errors"].item() == 2
    assert table.loc[table.delta == 0, "accuracy"].item() == pytest.approx(90.0)
    assert hinton.best_bias_delta(identity_classifier(), loader, cls=3) == 1.25
    assert table.loc[table.delta == 3.0, "errors"].item() == 18


def test_transfer_set_without_a_class():
    g = torch.Generator().manual_seed(0)
    ds = Dataset("mnist", torch.randint(0, 255, (50, 1, 28, 28), dtype=torch.uint8, generator=g),
                 torch.arange(50) % 10, torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))
    labels = torch.cat([y for _, y in hinton.transfer_set_without(ds, 3, batch_size=16)])
    assert len(labels) == 45 and not (labels == 3).any()

# ---------------------------------------------------------------- the MNIST teacher and student


@pytest.mark.parametrize("name,params,dropout", [("mlp1200", 2_395_210, True), ("mlp800", 1_276_810, False)])
def test_hinton_mnist_models(name, params, dropout):
    model = build_model(name)
    assert count_parameters(model) == params and DATASET_OF[name] == "mnist"
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert any(isinstance(m, nn.Dropout) for m in model.modules()) == dropout


def test_the_zoo_has_a_recipe_for_the_jittered_teacher():
    recipe = zoo.RECIPES["mlp1200"]
    assert recipe["augment"] is True  # MNIST + augment = +-2-pixel shifts, no flips
    assert zoo.architecture("mlp1200") == "mlp1200" and zoo.dataset_of("mlp1200") == "mnist"
    assert 98.5 <= zoo.TARGETS["mlp1200"] <= 99.3


def test_the_zoo_students_learn_from_the_teacher():
    assert zoo.architecture("mlp800_kd") == "mlp800" and zoo.RECIPES["mlp800_kd"]["teacher"] == "mlp1200"
    assert zoo.RECIPES["mlp800_kd_no3"]["drop_class"] == 3
    alone, distilled = zoo.RECIPES["mlp800"], zoo.RECIPES["mlp800_kd"]
    shared = ("epochs", "lr", "batch_size", "weight_decay", "augment")
    assert all(alone[k] == distilled[k] for k in shared), "scratch and distilled differ only in the loss"
    assert alone["weight_decay"] == 0 and alone["augment"] is False  # "no regularization"

# ---------------------------------------------------------------- a teacher computed once


def tiny_cifar(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset("cifar10", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.arange(n) % 10, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))


def test_cached_teacher_serves_what_the_teacher_says_on_the_same_images():
    ds = tiny_cifar()
    torch.manual_seed(0)
    teacher = small_cnn(8).eval()
    cache = kd.CachedTeacher(teacher, ds, epochs=2, hint_layer="relu1", batch_size=10, device="cpu")
    assert len(cache.images) == 2 and not torch.equal(cache.images[0], cache.images[1])  # fresh crops per epoch
    loader = cache.loader(batch_size=8, seed=0)
    seen = 0
    for epoch in range(3):  # the third epoch reuses the first copy
        for x, y, logits, feats in loader:  # the teacher's outputs travel with their batch
            with torch.no_grad(), kd.feature_hooks(teacher, ["relu1"]) as f:
                expected = teacher(x)
            # stored in float16 (computed under bf16 autocast where the CPU has it): close, not equal
            torch.testing.assert_close(logits, expected, atol=0.05, rtol=0.05)
            torch.testing.assert_close(feats, f["relu1"], atol=0.05, rtol=0.05)
            seen += len(y)
    assert seen == 3 * len(ds.y_train) and len(loader) == 3
    no_hint = kd.CachedTeacher(teacher, ds, epochs=1, batch_size=10, device="cpu")
    assert next(iter(no_hint.loader(batch_size=8)))[3] is None



def test_cached_teacher_without_augmentation_serves_the_images_as_they_are():
    ds = tiny_cifar(10)  # labels 0..9: each label names its image
    torch.manual_seed(0)
    teacher = small_cnn(8).eval()
    cache = kd.CachedTeacher(teacher, ds, epochs=1, batch_size=4, device="cpu", augment=False)
    assert len(cache.images) == 1 and torch.equal(cache.images[0], ds.x_train)
    for epoch in range(2):
        for x, y, logits, _ in cache.loader(batch_size=5, seed=epoch):
            torch.testing.assert_close(x, ds.normalize(ds.x_train[y]), rtol=0, atol=0)
            with torch.no_grad():
                torch.testing.assert_close(logits, teacher(x), atol=0.05, rtol=0.05)

def test_training_on_a_cached_teacher_equals_training_on_its_outputs():
    """One step of fit with the cached teacher is the step kd_loss + hint_loss prescribe."""
    ds = tiny_cifar(8)
    torch.manual_seed(0)
    teacher = small_cnn(8).eval()
    cache = kd.CachedTeacher(teacher, ds, epochs=1, hint_layer="relu1", device="cpu")
    student = kd.with_hint_projection(small_cnn(4), teacher, "relu1", "relu1", torch.randn(2, 3, 32, 32))
    loss_fn = kd.distillation_loss_fn(cache, T=4, alpha=0.5, hint=("relu1", "relu1"), beta=2.0)
    x, y, logits, feats = next(iter(cache.loader(batch_size=8)))
    with kd.feature_hooks(student.student, ["relu1"]) as fs:
        z = student(x)
    expected = kd.kd_loss(z, logits, y, 4, 0.5) + 2.0 * kd.hint_loss(student.projection(fs["relu1"]), feats)
    torch.testing.assert_close(loss_fn(student, x, y, logits, feats), expected)
    with pytest.raises(ValueError, match="come with its own batches"):
        loss_fn(student, x, y)  # a plain (x, y) batch: the cache cannot guess whose outputs to use
    with pytest.raises(ValueError, match="holds the features of layer 'relu1', not 'bn1'"):
        kd.distillation_loss_fn(cache, hint=("relu1", "bn1"))
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        kd.CachedTeacher(teacher, ds, epochs=0)


class RunAhead:
    """A loader that prefetches: it draws ``lead`` batches before handing out the first one."""

    def __init__(self, loader, lead=2):
        self.loader, self.lead = loader, lead

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        pending = []
        for batch in self.loader:
            pending.append(batch)
            if len(pending) > self.lead:
                yield pending.pop(0)
        yield from pending


def test_fit_on_a_prefetching_cached_loader_trains_as_on_the_plain_one():
    ds = tiny_cifar(16)
    torch.manual_seed(0)
    teacher = small_cnn(8).eval()
    cache = kd.CachedTeacher(teacher, ds, epochs=2, device="cpu")
    loss_fn = kd.distillation_loss_fn(cache, T=4, alpha=0.5)
    students = []
    for wrap in (lambda loader: loader, RunAhead):
        torch.manual_seed(1)
        student = small_cnn(4)
        fit(student, wrap(cache.loader(batch_size=4, seed=0)), 2, lr=0.05, loss_fn=loss_fn, progress=False,
            device="cpu")
        students.append(student.state_dict())
    for key in students[0]:
        torch.testing.assert_close(students[0][key], students[1][key], rtol=0, atol=0)
