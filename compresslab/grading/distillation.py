"""Checks for notebook 07 (knowledge distillation): compare the student's answer with a reference
computed here, and say *what* is wrong without printing the answer.

* Soft targets: p_i(z; T) = exp(z_i / T) / sum_j exp(z_j / T).
* One KD training step: the teacher in eval mode and under no_grad, the student in train mode,
  L = alpha T^2 KL(p(z_t; T) || p(z_s; T)) + (1 - alpha) CE(z_s, y) (:func:`compresslab.distillation.kd_loss`),
  then zero_grad, backward and one optimizer step.
"""
from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import call, switched_off, expect, mapping, number, tensor, val_accuracy, whole

__all__ = ["soft_targets_by_hand", "wrong_class_mass", "threes_right", "kd_step_cases", "reference_kd_step",
           "kd_step", "kd_plan"]


def soft_targets_by_hand(p, z, T) -> str:
    """Check ``p`` = softmax(z / T) (07, exercise 1)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    p = tensor(p, "p_T2", shape=tuple(z.shape), floating=True).detach().double()
    right = torch.softmax(z / T, -1)
    if torch.allclose(p, right, atol=1e-6):
        return f"softmax at T = {T:g}: {', '.join(f'{x:.3f}' for x in p.tolist())} (sums to {float(p.sum()):.3f})"
    for wrong, hint in [(torch.softmax(z, -1), "divide the logits by T before the exponential"),
                        (torch.softmax(z * T, -1), "divide by T, do not multiply"),
                        (torch.exp(z / T), "normalize: divide by the sum over the classes"),
                        (torch.softmax(z, -1) ** (1 / T), "soften the logits, then normalize: exp(z_i / T) / Σ exp(z_j / T)")]:
        expect(not torch.allclose(p, wrong, atol=1e-6), f"p_T2: almost: {hint}.")
    expect(math.isclose(float(p.sum()), 1, abs_tol=1e-5), f"p_T2 sums to {float(p.sum()):.4f}: probabilities sum to 1.")
    raise AssertionError(f"p_T2 is not exp(z_i / T) / Σ_j exp(z_j / T) at T = {T:g}.")


def wrong_class_mass(mass_T1, mass_T20, logits, labels) -> str:
    """Check the mean probability mass on the wrong classes, 1 - mean_n p_{y_n}(z_n; T), at T = 1
    and T = 20 (07, exercise 2), against the same teacher logits."""
    logits = tensor(logits, "t_logits", floating=True).detach().double()
    labels = tensor(labels, "t_labels", shape=(logits.shape[0],), floating=False).long()
    rows = torch.arange(len(labels))
    for name, value, T in (("mass_T1", mass_T1, 1.0), ("mass_T20", mass_T20, 20.0)):
        v = number(value, name)
        expect(not 1 < v <= 100, f"`{name}` = {v:g} looks like a percentage: give a fraction in [0, 1].")
        p = torch.softmax(logits / T, 1)
        right = 1 - float(p[rows, labels].mean())
        if math.isclose(v, right, rel_tol=1e-4, abs_tol=1e-7):
            continue
        other = 21.0 - T
        for wrong, hint in [(1 - right, "that is the mass on the *true* class: take 1 minus it"),
                            (1 - float(p.max(1).values.mean()), "use the true class (t_labels), not the top class: "
                                                                "where the teacher is wrong they differ"),
                            (1 - float(torch.softmax(logits / other, 1)[rows, labels].mean()),
                             f"that is the value at T = {other:g}: swapped?"),
                            (1 - float(torch.softmax(logits, 1)[rows, labels].mean()), f"soften at T = {T:g}")]:
            expect(not math.isclose(v, wrong, rel_tol=1e-4, abs_tol=1e-7), f"`{name}`: almost: {hint}.")
        raise AssertionError(f"`{name}` = {v:.4f} is not 1 - the mean probability of the true class at T = {T:g}.")
    return f"wrong-class mass {mass_T1:.2%} at T = 1 and {mass_T20:.1%} at T = 20: " \
           f"{mass_T20 / max(mass_T1, 1e-12):.0f}x more at the higher temperature"


def threes_right(count, logits, labels, delta, cls=3) -> str:
    """Check the number of test images of class ``cls`` classified right after adding ``delta`` to
    that class's logit (07, exercise 3)."""
    logits = tensor(logits, "logits_no3", floating=True).detach()
    labels = tensor(labels, "labels_no3", shape=(logits.shape[0],), floating=False).long()
    expect(not (isinstance(count, float) and 0 < count < 1), "threes_right is a count of images, not a fraction.")
    n = whole(count, "threes_right")
    shifted = logits.clone()
    shifted[:, cls] += float(delta)
    is3, pred3 = labels == cls, shifted.argmax(1) == cls
    right = int((pred3 & is3).sum())
    if n == right:
        return f"{n} of {int(is3.sum())} test {cls}s right after the shift ({int((pred3 & ~is3).sum())} other " \
               f"digits now called a {cls})"
    for wrong, hint in [(int(is3.sum()) - right, f"that counts the {cls}s still *wrong*"),
                        (int(pred3.sum()), f"count only the true {cls}s: that includes other digits called a {cls}"),
                        (int(((logits.argmax(1) == cls) & is3).sum()), "add delta to the logit first"),
                        (int(((logits + float(delta)).argmax(1) == cls).logical_and(is3).sum()),
                         f"raise only column {cls}: adding delta to every logit changes nothing")]:
        expect(n != wrong, f"threes_right = {n}: almost: {hint}.")
    raise AssertionError(f"threes_right = {n} is not the number of true {cls}s whose argmax is {cls} after the shift.")

# ---------------------------------------------------------------- one KD training step


def kd_step_cases(seed: int = 0):
    """(student, teacher, x, y, T, alpha): small MLPs with BatchNorm (so train and eval mode give
    different outputs), the teacher handed over in train mode, the student in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for T, alpha, width in [(4.0, 0.9, 16), (2.0, 0.5, 24), (8.0, 0.7, 12)]:
        torch.manual_seed(int(torch.randint(0, 10_000, (), generator=g)))

        def mlp(w):
            return nn.Sequential(nn.Linear(12, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Linear(w, 6))
        teacher, student = mlp(3 * width), mlp(width)
        with torch.no_grad():
            for bn in (teacher[1], student[1]):
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
        x, y = torch.randn(32, 12, generator=g) * 2, torch.randint(0, 6, (32,), generator=g)
        yield student.eval(), teacher.train(), x, y, T, alpha


def reference_kd_step(student, teacher, x, y, T, alpha, *, teacher_mode="eval", student_mode="train",
                      loss="right", zero_grad=True):
    """One step of SGD (lr 0.1) on copies; returns (loss, student after the step). The keyword
    arguments make the usual mistakes."""
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    stale_grads(student)
    teacher.train(teacher_mode == "train")
    student.train(student_mode == "train")
    with torch.no_grad():
        z_t = teacher(x)
    z_s = student(x)
    log_s, log_t = F.log_softmax(z_s / T, 1), F.log_softmax(z_t / T, 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1).mean()
    ce = F.cross_entropy(z_s, y)
    value = {"right": alpha * T * T * kl + (1 - alpha) * ce,
             "no T^2": alpha * kl + (1 - alpha) * ce,
             "reversed KL": alpha * T * T * (log_s.exp() * (log_s - log_t)).sum(1).mean() + (1 - alpha) * ce,
             "alpha swapped": (1 - alpha) * T * T * kl + alpha * ce,
             "CE at T": alpha * T * T * kl + (1 - alpha) * F.cross_entropy(z_s / T, y)}[loss]
    if zero_grad:
        opt.zero_grad()
    value.backward()
    opt.step()
    return float(value.detach()), student


def stale_grads(model: nn.Module) -> None:
    """Leave a gradient from an earlier step in every parameter (a step must clear it)."""
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)


def package_kd_off():
    """``kd.kd_loss`` and ``kd.distillation_loss_fn`` refuse to run while the student's step does."""
    from .. import distillation
    return switched_off(distillation, ["kd_loss", "distillation_loss_fn"],
                        "kd.kd_loss is switched off here: write the loss with F.log_softmax and the KL sum.")


def same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, atol=1e-6, rtol=1e-5) for p, q in zip(a.state_dict().values(), b.state_dict().values())
               if p.dtype.is_floating_point)


def kd_step(fn) -> str:
    """Check ``fn(student, teacher, optimizer, x, y, T, alpha) -> loss`` (07, exercise 4) on three
    small cases: the returned loss against :func:`compresslab.distillation.kd_loss` on the same
    logits, and the student's parameters (and BatchNorm statistics) after the step; the teacher must
    come out unchanged and without gradients."""
    from .. import distillation
    for i, (student, teacher, x, y, T, alpha) in enumerate(kd_step_cases(), start=1):
        want_loss, want_student = reference_kd_step(student, teacher, x, y, T, alpha)
        with torch.no_grad():  # the package's loss on the reference's own logits
            ref = copy.deepcopy(student).train()
            assert math.isclose(float(distillation.kd_loss(ref(x), teacher.eval()(x), y, T, alpha)), want_loss,
                                rel_tol=1e-5)
        teacher.train()
        s, t = copy.deepcopy(student), copy.deepcopy(teacher)
        t_before = copy.deepcopy(t.state_dict())
        opt = torch.optim.SGD(s.parameters(), lr=0.1)
        stale_grads(s)
        with package_kd_off():
            got = call(fn, "kd_step", s, t, opt, x.clone(), y.clone(), T, alpha)
        loss = number(got.detach() if torch.is_tensor(got) else got, "the returned loss")
        expect(all(p.grad is None or not p.grad.abs().sum() for p in t.parameters()),
               f"Case {i}: gradients reached the teacher: compute its logits under torch.no_grad().")
        teacher_moved = not all(torch.equal(a, b) for a, b in zip(t_before.values(), t.state_dict().values()))
        expect(not teacher_moved, f"Case {i}: the teacher changed (its BatchNorm statistics moved): run it in eval mode, "
                                  "teacher.eval(), and never step it.")
        if not math.isclose(loss, want_loss, rel_tol=1e-4, abs_tol=1e-6):
            for kw, hint in [(dict(teacher_mode="train"), "run the teacher in eval mode (teacher.eval())"),
                             (dict(student_mode="eval"), "the student learns: put it in train mode (student.train())"),
                             (dict(loss="no T^2"), "scale the KL term by T^2"),
                             (dict(loss="reversed KL"), "the KL goes from the teacher to the student: "
                                                        "KL(p_teacher || p_student) = Σ p_t (log p_t - log p_s)"),
                             (dict(loss="alpha swapped"), "alpha weighs the soft (KL) term, 1 - alpha the labels"),
                             (dict(loss="CE at T"), "the cross-entropy on the labels uses the plain logits, T = 1")]:
                expect(not math.isclose(loss, reference_kd_step(student, teacher, x, y, T, alpha, **kw)[0],
                                        rel_tol=1e-4, abs_tol=1e-6), f"Case {i}: the loss is off: almost: {hint}.")
            raise AssertionError(f"Case {i} (T = {T:g}, alpha = {alpha:g}): the loss {loss:.4f} is not "
                                 "alpha T² KL(p_t || p_s) + (1 - alpha) CE.")
        if not same_params(s, want_student):
            expect(not all(torch.equal(p, q) for p, q in zip(s.parameters(), student.parameters())),
                   f"Case {i}: the student's weights did not change: call loss.backward() and "
                                                "optimizer.step().")
            expect(not same_params(s, reference_kd_step(student, teacher, x, y, T, alpha, zero_grad=False)[1]),
                   f"Case {i}: the gradients of an earlier step were added in: call optimizer.zero_grad() first.")
            raise AssertionError(f"Case {i}: the loss is right, but the student's parameters after the step are not those "
                                 "of one optimizer step on it.")
    return "all 3 cases: the loss matches kd_loss, one step on the student, the teacher untouched"

# ---------------------------------------------------------------- the design task


KD_MARGIN, KD_LABELLED, KD_EPOCHS = 3.0, 2000, 20  # points over the student alone on validation


@functools.lru_cache(maxsize=None)
def kd_cache():
    """The teacher's logits on 2,000 labelled training images outside the validation split."""
    from .. import distillation
    from ..zoo import load_pretrained
    from .iterative import ft_subset
    return distillation.CachedTeacher(load_pretrained("mlp1200", "cpu"), ft_subset(KD_LABELLED, seed=2), epochs=1,
                                      augment=False)


@functools.lru_cache(maxsize=None)
def kd_student_val(T: float, alpha: float) -> float:
    """Validation accuracy of LeNet-300-100 trained 20 epochs on the 2,000 images at (T, alpha)."""
    from .. import distillation
    from ..models import build_model
    from ..train import fit
    few = kd_cache()
    student = build_model("lenet300", seed=0)
    fit(student, few.loader(100, seed=0), KD_EPOCHS, 0.05, weight_decay=5e-4, seed=0,
        loss_fn=distillation.distillation_loss_fn(few, T, alpha), progress=False)
    return val_accuracy(student, "mnist")


def kd_plan(plan) -> str:
    """Check ``plan = {"T": T, "alpha": alpha}`` (07, design): LeNet-300-100 trained here for 20
    epochs on 2,000 labelled training images (outside the validation split) with the teacher
    mlp1200 at (T, alpha) must beat the same student trained on the labels alone (alpha = 0, same
    seed and images) by at least 3 points on the 5,000 validation images."""
    plan = mapping(plan, "plan", ["T", "alpha"], example='such as {"T": 2, "alpha": 0.5}')
    T, alpha = number(plan["T"], "T"), number(plan["alpha"], "alpha")
    expect(1 <= T <= 50, f"T = {T:g}: choose a temperature from 1 to 50.")
    expect(0 <= alpha <= 1, f"alpha = {alpha:g}: alpha is a weight in [0, 1].")
    expect(alpha > 0, "alpha = 0 is the student alone (labels only): it cannot beat itself.")
    alone, distilled = kd_student_val(1.0, 0.0), kd_student_val(T, alpha)
    gain = distilled - alone
    expect(gain >= KD_MARGIN, f"T = {T:g}, alpha = {alpha:g}: {distilled:.2f}% on validation, {gain:+.2f} points over "
                              f"the student alone; at least {KD_MARGIN:g} is asked: look at section 6's scan.")
    return f"T = {T:g}, alpha = {alpha:g}: {distilled:.2f}% on 5,000 validation images, {gain:+.2f} points over the " \
           f"student alone ({alone:.2f}%; at least {KD_MARGIN:g} asked)"
