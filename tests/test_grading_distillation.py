"""The checkers of notebook 07 accept the right answers and reject the usual wrong ones with a hint."""
import pytest
import torch
import torch.nn.functional as F

from compresslab import distillation as kd, grading

Z = torch.tensor([4.0, 1.0, 0.0])


# Exercise 1: soften by hand
@pytest.mark.parametrize("p,message", [
    (None, "no answer"), (torch.exp(Z) / torch.exp(Z).sum(), "divide the logits by T"),
    (torch.exp(Z * 2) / torch.exp(Z * 2).sum(), "do not multiply"), (torch.exp(Z / 2), "normalize"),
    ([0.7, 0.2, 0.1], "torch.Tensor"), (torch.exp(Z / 2)[:2], "shape"), (torch.full((3,), 1 / 3), "not exp"),
])
def test_wrong_soft_targets_are_rejected(p, message):
    with pytest.raises(AssertionError, match=message):
        grading.soft_targets_by_hand(p, Z, 2.0)


def test_the_right_soft_targets_pass():
    assert "T = 2" in grading.soft_targets_by_hand(torch.exp(Z / 2) / torch.exp(Z / 2).sum(), Z, 2.0)


# Exercise 2: wrong-class mass (logits written out: the teacher is wrong on the second image)
LOGITS = torch.tensor([[6.0, 1.0, 0.0], [2.0, 3.0, -1.0], [0.0, 0.5, 5.0], [4.0, 0.0, 1.0]])
LABELS = torch.tensor([0, 0, 2, 0])


def mass(T, top=False):
    p = torch.softmax(LOGITS / T, 1)
    return 1 - (p.max(1).values if top else p[torch.arange(4), LABELS]).mean().item()


def test_the_right_masses_pass():
    assert "T = 20" in grading.wrong_class_mass(mass(1), mass(20), LOGITS, LABELS)


@pytest.mark.parametrize("m1,m20,message", [
    (None, 0.5, "no answer"), (1 - mass(1), mass(20), "true\\* class"), (mass(1, top=True), mass(20), "top class"),
    (mass(20), mass(1), "swapped"), (mass(1), mass(1), "T = 1"), (100 * mass(1), mass(20), "percentage"),
])
def test_wrong_masses_are_rejected(m1, m20, message):
    with pytest.raises(AssertionError, match=message):
        grading.wrong_class_mass(m1, m20, LOGITS, LABELS)


def test_labels_of_the_wrong_length_are_rejected():
    with pytest.raises(AssertionError, match="shape"):
        grading.wrong_class_mass(mass(1), mass(20), LOGITS, LABELS[:3])


# Exercise 3: threes right after the bias shift
NO3 = torch.tensor([[0.0, 0.0, 0.0, -1.0], [0.0, 2.0, 0.0, 0.5], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0],
                    [1.0, 0.0, 0.0, 0.2]])
Y3 = torch.tensor([3, 3, 3, 3, 0])  # after +1.5: images 0, 3 and 4 are called a 3; 0 and 3 are 3s


def test_the_right_count_passes():
    assert "2 of 4" in grading.threes_right(2, NO3, Y3, 1.5)


@pytest.mark.parametrize("n,message", [(None, "no answer"), (3, "other digits"), (1, "add delta"), (0.5, "fraction"),
                                       (2.5, "whole"), (4, "not the number")])
def test_wrong_counts_are_rejected(n, message):
    with pytest.raises(AssertionError, match=message):
        grading.threes_right(n, NO3, Y3, 1.5)


# Exercise 4: one KD step
def step(student, teacher, optimizer, x, y, T, alpha, t_eval=True, no_grad=True, s_train=True, t2=True,
         reverse=False, zero=True, do_step=True):
    teacher.train(not t_eval)
    student.train(s_train)
    with torch.set_grad_enabled(not no_grad):
        z_t = teacher(x)
    z_s = student(x)
    log_s, log_t = F.log_softmax(z_s / T, 1), F.log_softmax(z_t / T, 1)
    kl = ((log_s.exp() * (log_s - log_t)) if reverse else (log_t.exp() * (log_t - log_s))).sum(1).mean()
    loss = alpha * (T * T if t2 else 1) * kl + (1 - alpha) * F.cross_entropy(z_s, y)
    if zero:
        optimizer.zero_grad()
    loss.backward()
    if do_step:
        optimizer.step()
    return loss.item()


def test_a_right_step_passes():
    assert "all 3 cases" in grading.kd_step(step)


def test_the_reference_loss_is_the_packages_kd_loss():
    for student, teacher, x, y, T, alpha in grading.kd_step_cases():
        loss, _ = grading.reference_kd_step(student, teacher, x, y, T, alpha)
        with torch.no_grad():
            assert abs(loss - kd.kd_loss(student.train()(x), teacher.eval()(x), y, T, alpha).item()) < 1e-5


def calls_the_package(student, teacher, optimizer, x, y, T, alpha):
    return kd.kd_loss(student(x), teacher(x), y, T, alpha)


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("kw,message", [
    (dict(t_eval=False), "eval mode"), (dict(no_grad=False), "no_grad"), (dict(s_train=False), "train mode"),
    (dict(t2=False), "T\\^2"), (dict(reverse=True), "teacher to the student"), (dict(zero=False), "zero_grad"),
    (dict(do_step=False), "did not change"),
])
def test_wrong_steps_are_rejected(kw, message):
    with pytest.raises(AssertionError, match=message):
        grading.kd_step(lambda *a: step(*a, **kw))


@pytest.mark.parametrize("fn,message", [(stub, "NotImplementedError"), (None, "no answer"),
                                        (calls_the_package, "switched off"), (lambda *a: "0.3", "number")])
def test_stubs_and_shortcuts_are_rejected(fn, message):
    with pytest.raises(AssertionError, match=message):
        grading.kd_step(fn)
    assert kd.kd_loss.__name__ == "kd_loss"  # the package is restored


# Exercise 5 (design): beat the student alone by 3 validation points
def test_a_good_temperature_passes():
    assert "points over" in grading.kd_plan({"T": 4, "alpha": 0.9})


@pytest.mark.parametrize("plan,message", [
    (None, "no answer"), ({"T": 4}, "no entry"), ({"T": 4, "alpha": 0.0}, "student alone"),
    ({"T": 4, "alpha": 90}, "weight"), ({"T": 0.1, "alpha": 0.9}, "temperature"), ((4, 0.9), "dict"),
    ({"T": 1, "alpha": 0.9}, "at least 3"),
])
def test_wrong_plans_are_rejected(plan, message):
    with pytest.raises(AssertionError, match=message):
        grading.kd_plan(plan)
