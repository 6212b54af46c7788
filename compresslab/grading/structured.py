"""Checkers for notebook 02 (structured pruning); notebook 04's are in :mod:`.slimming`.

Filter pruning keeps the ``c - round(s c)`` filters of a conv with the largest ``||W_i||_p``.
Surgery removes channel i everywhere it lives: filter i of the conv (and its bias), entry i of
the BatchNorm after it (gamma, beta, running mean and variance), input channel i of the next
conv, and, after a flatten of an (H, W) map, the H W columns ``i H W ... (i + 1) H W - 1`` of the
linear layer; the smaller model must compute what the masked one computes. The design task applies a plan to a fresh pretrained copy and score it on the validation split,
without fine-tuning.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from torch import nn

from .. import metrics, models, structured, zoo
from .common import answered, call, expect, fraction, mapping, module, number, pretrained_val_accuracy, switched_off, \
    tensor, val_accuracy, whole

__all__ = ["pruned_conv_flops", "l2_filters", "best_speedup_batch", "channel_surgery", "filter_pruning_plan"]

CONVS = tuple(f"conv{i}" for i in range(1, 7))
SHAPE = (3, 32, 32)


def own_code(fn, what: str, shortcuts) -> None:
    """Refuse a function whose code names a library that does the exercise (``torch_pruning``). The
    package's own versions are switched off while the function runs (``switched_off``) instead:
    a student's helper may share their names."""
    names, todo = set(), [getattr(fn, "__code__", None)]
    while todo:
        code = todo.pop()
        if code is not None:
            names |= set(code.co_names)
            todo += [c for c in code.co_consts if hasattr(c, "co_names")]
    used = [s for s in shortcuts if s in names]
    if used:
        raise AssertionError(f"`{what}` calls {used[0]}: that is the package's answer; write the steps yourself.")


def indices(value, what: str, n: int) -> torch.Tensor:
    """A 1-D tensor (or list) of distinct channel indices in [0, n)."""
    answered(value, what)
    if isinstance(value, (list, tuple)):
        value = torch.as_tensor(value)
    t = tensor(value, what)
    expect(t.dtype != torch.bool, f"`{what}` is a 0/1 mask: give the *indices* of the kept channels "
                                  "(mask.nonzero().squeeze(1)).")
    expect(not t.dtype.is_floating_point, f"`{what}` holds floats ({t.dtype}): channel indices are integers.")
    expect(t.dim() == 1, f"`{what}` should be a 1-D tensor of channel indices, got shape {tuple(t.shape)}.")
    expect(len(t) == 0 or (0 <= int(t.min()) and int(t.max()) < n), f"`{what}` has indices outside [0, {n - 1}].")
    expect(len(t.unique()) == len(t), f"`{what}` lists a channel twice.")
    return t.long()


# ---------------------------------------------------------------- notebook 02


def pruned_conv_flops(value) -> str:
    """FLOPs of conv4 (3x3, 128 -> 128, 8x8 map) with 30% of its input and output channels removed."""
    x = number(value, "conv4_flops")
    kept, size = 128 - round(0.3 * 128), 3 * 3 * 8 * 8
    if x == 2 * kept * kept * size:
        return f"right: {x / 1e6:.1f} MFLOPs, {x / (2 * 128 * 128 * size):.0%} of the unpruned layer"
    for wrong, hint in [(kept * kept * size, "that counts multiply-adds: one is 2 FLOPs"),
                        (2 * 128 * 128 * size, "that is the unpruned layer: both c_in and c_out lose 30%"),
                        (2 * 128 * kept * size, "only one side shrank: the input channels go with conv3's "
                                                "filters, the output channels with conv4's"),
                        (2 * (0.7 * 128) ** 2 * size, "round as keep_strongest does: 128 - round(0.3 * 128) "
                                                      "channels are kept, a whole number"),
                        (2 * kept * kept * 8 * 8, "each output value needs c_in * k * k products: the 3x3 "
                                                  "kernel is missing"),
                        (2 * kept * kept * 3 * 3 * 16 * 16, "conv4 runs on the 8x8 map (after pool2)")]:
        expect(not math.isclose(x, wrong, rel_tol=1e-9), f"Not quite: {hint}.")
    raise AssertionError("Not the FLOPs of the pruned conv4: 2 * c_in * c_out * k * k * H * W with the "
                         "kept channel counts.")


def l2_filters(keep_l2, w2, amount: float = 0.5) -> str:
    """``keep_l2``: the sorted indices of the filters of ``w2`` kept at ``amount`` by their L2 norm."""
    w2 = tensor(w2, "w2").detach()
    c = w2.shape[0]
    got = indices(keep_l2, "keep_l2", c)
    want = structured.keep_strongest(structured.filter_norms(w2, 2), amount)
    expect(len(got) == len(want), f"`keep_l2` keeps {len(got)} of {c} filters; {c} - round({amount} * {c}) "
                                  f"= {len(want)} should stay.")
    if torch.equal(got, want):
        return f"right: the {len(got)} filters with the largest L2 norm"
    expect(not torch.equal(got.sort().values, want), "The right filters, but sort the indices (ascending).")
    weakest = torch.topk(structured.filter_norms(w2, 2), len(want), largest=False).indices.sort().values
    expect(not torch.equal(got.sort().values, weakest), "Those are the filters with the *smallest* norms: "
                                                         "keep the largest.")
    l1 = structured.keep_strongest(structured.filter_norms(w2, 1), amount)
    expect(not torch.equal(got.sort().values, l1), "That is the L1 choice: use the L2 norm, "
                                                    "sqrt(sum of squares) of each flattened filter.")
    raise AssertionError("Not the L2 choice: flatten each filter (one row per output channel), take the "
                         "norm of each row, keep the largest.")


def best_speedup_batch(best_batch, speed, model: str = "structured (L1 filters)") -> str:
    """``best_batch``: the batch size at which ``model``'s speed-up over dense in ``speed`` is largest."""
    b = whole(best_batch, "best_batch")
    rows = speed[speed.model == model].set_index("batch")["speed-up x"]
    expect(b in rows.index, f"`best_batch` = {b} is not one of the measured batch sizes {list(rows.index)}.")
    if b == rows.idxmax():
        return f"right: batch {b}, {rows[b]:.2f}x"
    expect(b != rows.idxmin(), "That is the batch with the *smallest* speed-up.")
    raise AssertionError(f"The structured model's speed-up at batch {b} is not its largest: compare the "
                         "'speed-up x' column over its rows only.")


def surgery_cases():
    """(network, conv name, kept indices): the CIFAR CNN (into a conv; into the linear after the
    global pool), and a small net with a conv bias and a flatten of a 4x4 map into the linear."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the notebook's own random stream is left as it was
        torch.manual_seed(0)
        cnn = models.cifar_cnn()
        small = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(8, 6, 3, padding=1)), ("relu2", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc", nn.Linear(6 * 4 * 4, 5))]))
    for net in (cnn, small):  # statistics and scales that are not the defaults, so each one matters
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            bn.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
        net.eval()
    pick = lambda n, k: torch.randperm(n, generator=g)[:k].sort().values
    return [(cnn, "conv2", pick(64, 40), (3, 32, 32)), (cnn, "conv6", pick(256, 200), (3, 32, 32)),
            (small, "conv1", pick(8, 5), (3, 8, 8)), (small, "conv2", pick(6, 4), (3, 8, 8))]


def surgery_hint(net, got, name, keep) -> str:
    """What the student's model got wrong, layer by layer, against the sliced originals."""
    names = [n for n, _ in net.named_children()]
    conv, mine = getattr(net, name), getattr(got, name, None)
    expect(isinstance(mine, nn.Conv2d), f"Your model has no Conv2d named {name!r}: keep the layer names.")
    expect(mine.weight.shape[0] == len(keep), f"{name} still has {mine.weight.shape[0]} filters, {len(keep)} "
                                              "are kept: remove the others physically (a mask is not surgery).")
    expect(torch.equal(mine.weight.detach(), conv.weight.detach()[keep]), f"{name}'s filters are not the "
                                                                          "ones listed in `keep`, in that order.")
    if conv.bias is not None:
        expect(mine.bias is not None and torch.equal(mine.bias.detach(), conv.bias.detach()[keep]),
               f"{name}'s bias needs the same slice as its filters.")
    for n in names[names.index(name) + 1:]:
        old, new = getattr(net, n), getattr(got, n, None)
        if isinstance(old, nn.BatchNorm2d):
            for p in ("weight", "bias", "running_mean", "running_var"):
                ok = new is not None and getattr(new, p).shape == (len(keep),) and \
                    torch.equal(getattr(new, p).detach(), getattr(old, p).detach()[keep])
                expect(ok, f"{n} (the BatchNorm after {name}): its {p} must keep entries `keep` too.")
        if isinstance(old, nn.Conv2d):
            expect(isinstance(new, nn.Conv2d), f"Your model has no Conv2d named {n!r}: keep the layer names.")
            expect(new.weight.shape == old.weight[:, keep].shape and torch.equal(new.weight.detach(), old.weight.detach()[:, keep]),
                   f"{n} reads {name}'s output: keep its input channels `keep` (weight[:, keep]).")
            break
        if isinstance(old, nn.Linear):
            per = old.in_features // conv.out_channels
            cols = (keep[:, None] * per + torch.arange(per)).flatten()
            expect(isinstance(new, nn.Linear), f"Your model has no Linear named {n!r}: keep the layer names.")
            expect(new.weight.shape == (old.out_features, len(cols)) and
                   torch.equal(new.weight.detach(), old.weight.detach()[:, cols]),
                   f"{n} after the flatten: channel c of a {per}-value map owns the columns c*{per} ... "
                   f"c*{per}+{per - 1} (channel-major); keep those of the kept channels." if per > 1 else
                   f"{n}: keep the columns of the kept channels.")
            break
    return "every layer is sliced as it should be, yet the outputs differ: is your model in eval mode?"


def channel_surgery(fn) -> str:
    """``fn(model, conv_name, keep) -> smaller model``: the surgery that removes all but the channels
    ``keep`` of one conv, checked against the masked model's outputs on random inputs, four cases."""
    answered(fn, "remove_channels")
    own_code(fn, "remove_channels", ("torch_pruning",))
    package = ["shrink", "prune_filters", "slice_conv", "slice_batchnorm", "slice_linear"]
    hint = "this is the package's answer (structured.shrink and its slicing helpers): write the steps yourself."
    for i, (net, name, keep, shape) in enumerate(surgery_cases(), start=1):
        with switched_off(structured, package, hint):
            got = call(fn, "remove_channels", copy.deepcopy(net), name, keep.clone())
        module(got, "remove_channels(...)")
        mine = getattr(got, name, None)
        expect(isinstance(mine, nn.Conv2d) and mine.weight.shape[0] == len(keep),
               f"Case {i}: {name} should have {len(keep)} filters left, one per kept channel: remove the others "
               "physically (a mask is not surgery)." if isinstance(mine, nn.Conv2d) else
               f"Case {i}: your model has no Conv2d named {name!r}: keep the layer names.")
        masked = structured.mask_channels(copy.deepcopy(net), {name: keep}).eval()
        x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(i))
        got.eval()
        with torch.no_grad():
            want = masked(x)
            try:
                out = got(x)
            except Exception as e:
                surgery_hint(net, got, name, keep)
                raise AssertionError(f"Case {i} ({name}): your model does not run ({type(e).__name__}: {e}).") \
                    from None
        if not (torch.is_tensor(out) and out.shape == want.shape and torch.allclose(out, want, atol=1e-4, rtol=1e-4)):
            raise AssertionError(f"Case {i} ({name}): outputs differ from the masked model's. "
                                 + surgery_hint(net, got, name, keep))
    return "the smaller models compute what the masked ones compute, in all 4 cases (CIFAR CNN and a small net)"


def filter_pruning_plan(amounts, reduction: float = 1.2, max_drop: float = 7.0, n: int = 2000) -> str:
    """``amounts``: a fraction of filters to remove per conv of cifar_cnn (L1 norm, then surgery);
    the design target: at least ``reduction`` x fewer FLOPs with at most ``max_drop`` points of
    validation accuracy lost (``n`` images), no fine-tuning."""
    amounts = mapping(amounts, "amounts", CONVS, "{'conv1': 0.1, ..., 'conv6': 0.3}")
    amounts = {k: fraction(v, f"amounts[{k!r}]") for k, v in amounts.items()}
    expect(all(v < 1 for v in amounts.values()), "A layer with every filter removed cuts the network in two.")
    base = zoo.load_pretrained("cifar_cnn", "cpu")
    model = structured.prune_filters(base, {k: v for k, v in amounts.items() if v > 0}, SHAPE) \
        if any(amounts.values()) else base
    x = metrics.flops(base, SHAPE) / metrics.flops(model, SHAPE)
    expect(x >= reduction, f"Your plan cuts the FLOPs by {x:.2f}x; at least {reduction}x is asked: prune the "
                           "robust layers harder (and the big ones: conv3 and conv5 cost the most FLOPs).")
    drop = pretrained_val_accuracy("cifar_cnn", n) - val_accuracy(model, "cifar10", n)
    expect(drop <= max_drop, f"{x:.2f}x fewer FLOPs, but {drop:.1f} points of validation accuracy lost; at most "
                             f"{max_drop:g} are allowed: spare the layers whose curve falls steeply.")
    return (f"target met: {x:.2f}x fewer FLOPs (at least {reduction:g}x asked), {drop:.1f} points lost on {n} "
            f"validation images (at most {max_drop:g})")
