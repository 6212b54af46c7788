"""Structured pruning: remove whole filters (output channels), then physically shrink the model.

Unstructured zeros are still multiplied (notebook 01). Removing a whole output filter of a
convolution removes a whole channel of its output, and with it the matching BatchNorm entry
and the matching input channel of the next layer: the result is a smaller *dense* network,
which is faster on any hardware.

Two steps:

1. **Score and mask.** A filter's importance is a norm of its weights, ||W_i||_p over
   (in_channels, kh, kw) (Li et al. 2017 use p = 1). ``channel_plan`` picks the channels to
   keep per layer; ``mask_channels`` applies them with ``torch.nn.utils.prune`` masks on the
   conv's weight and bias *and* on the following BatchNorm's scale and shift, so a pruned
   channel outputs exactly zero (a masked filter followed by BN would still output BN's shift).
2. **Surgery.** ``shrink`` builds the smaller network: it slices every conv, BatchNorm and the
   first linear layer after the flatten. The shrunk model computes the same function as the
   masked one (up to float rounding), which the tests check.

Production tool: Torch-Pruning (``pip install torch-pruning``) traces the dependency graph of
any model and does both steps; ``torch.nn.utils.prune.ln_structured`` does step 1 only.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

from . import checks
from .metrics import check_input_shape, run_checked
from .pruning import check_amount, check_norm_p, make_permanent, mask_lowest


def filter_norms(weight: torch.Tensor, p: float = 1) -> torch.Tensor:
    """||W_i||_p of every output filter (row), over all its other dimensions."""
    return weight.detach().reshape(weight.shape[0], -1).norm(p=check_norm_p(p), dim=1)


def keep_strongest(scores: torch.Tensor, amount: float | int) -> torch.Tensor:
    """Sorted indices of the channels to keep: all but the ``amount`` lowest-scoring.

    At least one channel always stays: a layer with no channel left cuts the network in two.
    """
    n = scores.numel()
    k = check_amount(amount, n)
    if k >= n:
        raise ValueError(f"Pruning {k} of {n} channels would leave none; keep at least one.")
    return torch.topk(scores, n - k, largest=True).indices.sort().values


def channel_plan(model: nn.Module, amounts: dict[str, float | int], p: float = 1,
                 scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Channels to keep, per named conv (or linear) layer, by the p-norm of its filters
    (or by the given per-channel ``scores``, e.g. ``taylor_scores``)."""
    modules = dict(model.named_modules())
    plan = {}
    for name, amount in amounts.items():
        m = modules.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"{name!r} is not a Conv2d or Linear layer of the model.")
        s = filter_norms(m.weight, p) if scores is None else scores.get(name)  # masked weights if pruned
        if s is not None:
            checks.tensor(s, f"scores[{name!r}]")
        if s is None or s.shape != (m.weight.shape[0],):
            raise ValueError(f"scores[{name!r}] must hold one score per output channel (e.g. from "
                             f"taylor_scores), shape ({m.weight.shape[0]},), got {None if s is None else tuple(s.shape)}.")
        plan[name] = keep_strongest(s, amount)
    return plan


def taylor_scores(model: nn.Module, loader, layers, batches: int = 8) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of every output filter (Molchanov et al. 2019):
    I_i = (sum over the filter's weights of g * w)^2, summed over ``batches`` batches.

    It estimates how much the loss changes when filter i is zeroed: a gradient-based
    contrast to pure weight norms (a large filter whose output the loss ignores scores low).
    """
    modules = {n: model.get_submodule(n) for n in layers}
    device = next(model.parameters()).device
    scores = {n: torch.zeros(m.weight.shape[0], device=device) for n, m in modules.items()}
    model.eval()  # BatchNorm statistics stay as they are
    for b, (x, y) in enumerate(loader):
        if b == batches:
            break
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for n, m in modules.items():
            scores[n] += (m.weight.grad * m.weight).detach().flatten(1).sum(1).pow(2)
    model.zero_grad(set_to_none=True)
    return scores



def bn_taylor_scores(model: nn.Module, loader, batches: int = 8) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of every channel at its BatchNorm (Molchanov et al. 2019,
    "BN scale Taylor FO", the same as a gate z_i = 1 placed after the BN):

        I_i = mean over ``batches`` minibatches of (g_gamma_i * gamma_i + g_beta_i * beta_i)^2,

    g the gradient of a minibatch's mean loss. Removing channel i sets its BN output
    y_i = gamma_i * xhat_i + beta_i to zero, which changes the loss by about
    -(g_gamma_i gamma_i + g_beta_i beta_i): the derivative along the gate, dL/dz_i at z_i = 1.
    Keys are the convs before each BN (``conv_batchnorm_pairs``), ready for ``channel_plan``.
    Eval mode: BN normalizes with its running statistics, as the pruned network will at
    inference, and the statistics are not updated (train mode would also couple the images
    of a batch through the batch mean and variance). The model's mode is restored.
    """
    pairs, batches = conv_batchnorm_pairs(model), checks.integer(batches, "batches", 1)
    if not pairs or not all(bn.affine for bn in pairs.values()):
        raise ValueError("bn_taylor_scores needs convolutions followed by affine BatchNorms.")
    # a masked BN (mask_channels): gamma = gamma_orig * mask, and gamma_orig * grad_orig = gamma * g_gamma
    leaf = lambda bn, p: getattr(bn, p + "_orig", getattr(bn, p))
    scores = {n: torch.zeros_like(bn.weight.detach()) for n, bn in pairs.items()}
    device, training, seen = next(model.parameters()).device, model.training, 0
    model.eval()
    for x, y in loader:
        if seen == batches:
            break
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for n, bn in pairs.items():
            gate = sum(leaf(bn, p).grad * leaf(bn, p) for p in ("weight", "bias"))  # (C,)
            scores[n] += gate.detach().pow(2)
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(training)
    if seen == 0:
        raise ValueError("bn_taylor_scores got an empty loader.")
    return {n: s / seen for n, s in scores.items()}


def following_batchnorm(model: nn.Module, name: str) -> nn.BatchNorm2d | None:
    """The first BatchNorm registered after a layer in its parent, before the next conv.

    ``name`` may be dotted (``block.conv1``): the parent is then ``model.block``.
    """
    parent_name, _, conv_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = [n for n, _ in parent.named_children()]
    for n in names[names.index(conv_name) + 1:]:
        m = getattr(parent, n)
        if isinstance(m, nn.BatchNorm2d):
            return m
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return None
    return None


def conv_batchnorm_pairs(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Each top-level conv (by name) and the BatchNorm that normalizes its output channels."""
    pairs = {}
    for name, m in model.named_children():
        bn = following_batchnorm(model, name) if isinstance(m, nn.Conv2d) else None
        if bn is not None:
            pairs[name] = bn
    return pairs


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """sum over every BatchNorm channel of |gamma|: the sparsity term of network slimming.

    Training minimizes loss + lambda * penalty (Liu et al. 2017 use lambda = 1e-4); the L1
    pull drives the scales of unneeded channels towards zero, and a channel whose output is
    multiplied by ~0 can be removed at almost no cost.
    """
    return sum(m.weight.abs().sum() for m in model.modules()
               if isinstance(m, nn.BatchNorm2d) and m.affine)


def slimming_plan(model: nn.Module, amount: float | int) -> dict[str, torch.Tensor]:
    """Network slimming: one *global* threshold on |gamma| over every conv-BN pair; the
    ``amount`` of all channels with the smallest scales go. Every layer keeps at least its
    strongest channel (a layer with none left would cut the network in two)."""
    pairs = conv_batchnorm_pairs(model)
    if not pairs:
        raise ValueError("The model has no convolution followed by a BatchNorm: nothing to slim.")
    scores = {name: bn.weight.detach().abs() for name, bn in pairs.items()}
    alive = mask_lowest(torch.cat(list(scores.values())), amount).split([len(s) for s in scores.values()])
    plan = {}
    for (name, s), a in zip(scores.items(), alive):
        a = a.clone()
        a[s.argmax()] = 1
        plan[name] = a.nonzero().squeeze(1)
    return plan


def check_plan(model: nn.Module, plan: dict[str, torch.Tensor], blocks: bool = True) -> None:
    """Each entry of a plan: distinct integer indices in [0, C) of a layer's C output channels
    (a ResidualBlock's, if ``blocks``: of its stream), at least one of them."""
    modules, kinds = dict(model.named_modules()), (nn.Conv2d, nn.Linear) + ((ResidualBlock,) if blocks else ())
    for name, keep in plan.items():
        m = modules.get(name) if name else None
        if not isinstance(m, kinds):
            raise ValueError(f"The plan names {name!r}, which is not one of the model's "
                             f"{' / '.join(k.__name__ for k in kinds)} layers.")
        c = m.conv2.out_channels if isinstance(m, ResidualBlock) else m.weight.shape[0]
        keep = torch.as_tensor(keep)
        if (keep.dim() != 1 or keep.is_floating_point() or keep.dtype == torch.bool or not 1 <= len(keep) <= c
                or keep.min() < 0 or keep.max() >= c or len(keep.unique()) != len(keep)):
            raise ValueError(f"plan[{name!r}] must list the channels to keep: between 1 and {c} distinct "
                             f"integer indices in [0, {c - 1}], got {keep.tolist()}.")


def mask_channels(model: nn.Module, plan: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned channels with masks (conv weight + bias, following BN scale + shift).

    Layer names may be dotted (``block.conv2``) to reach inside a residual block.
    """
    check_plan(model, plan, blocks=False)
    for name, keep in plan.items():
        conv = model.get_submodule(name)
        alive = torch.zeros(conv.weight.shape[0], device=conv.weight.device)
        alive[keep] = 1
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        prune.custom_from_mask(conv, "weight", alive.view(shape).expand_as(conv.weight))
        targets = [(conv, "bias")] if conv.bias is not None else []
        bn = following_batchnorm(model, name)
        if bn is not None:
            targets += [(bn, "weight"), (bn, "bias")]
        for module, param in targets:
            prune.custom_from_mask(module, param, alive)
    return model


def take(t: torch.Tensor | None, idx: torch.Tensor, dim: int) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().index_select(dim, idx.to(t.device)).clone())


def slice_conv(conv: nn.Conv2d, in_idx, out_idx) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError(f"Grouped convolution {conv} is not supported by this surgery.")
    in_idx = torch.arange(conv.in_channels) if in_idx is None else in_idx
    out_idx = torch.arange(conv.out_channels) if out_idx is None else out_idx
    new = nn.Conv2d(len(in_idx), len(out_idx), conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight = take(take(conv.weight, out_idx, 0), in_idx, 1)
    new.bias = take(conv.bias, out_idx, 0)
    return new.to(conv.weight.device)


def slice_linear(fc: nn.Linear, in_idx, out_idx) -> nn.Linear:
    in_idx = torch.arange(fc.in_features) if in_idx is None else in_idx
    out_idx = torch.arange(fc.out_features) if out_idx is None else out_idx
    new = nn.Linear(len(in_idx), len(out_idx), bias=fc.bias is not None)
    new.weight = take(take(fc.weight, out_idx, 0), in_idx, 1)
    new.bias = take(fc.bias, out_idx, 0)
    return new.to(fc.weight.device)


def slice_batchnorm(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    if idx is None:
        return copy.deepcopy(bn)
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = take(bn.weight, idx, 0), take(bn.bias, idx, 0)
    if bn.track_running_stats:
        new.running_mean = bn.running_mean.index_select(0, idx.to(bn.running_mean.device)).clone()
        new.running_var = bn.running_var.index_select(0, idx.to(bn.running_var.device)).clone()
        new.num_batches_tracked = bn.num_batches_tracked.clone()
    return new.to(bn.weight.device if bn.affine else bn.running_mean.device)


class ResidualBlock(nn.Module):
    """y = relu(x + bn2(conv2(relu(bn1(conv1(x)))))): the channels of x and of conv2's output
    meet at the addition, so they can only be pruned together (one index set for both)."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.Flatten, nn.Linear, ResidualBlock)


@torch.no_grad()
def shrink(model: nn.Sequential, plan: dict[str, torch.Tensor], input_shape) -> nn.Sequential:
    """The physically smaller model: only the channels in ``plan`` survive.

    ``plan`` maps layer names to kept output-channel indices; a ``ResidualBlock`` named ``b``
    takes ``b.conv1`` (its inner channels) and ``b`` (the channels of the residual stream,
    which must equal the stream's current channels: prune the stream where it is produced).
    ``input_shape`` (without batch) lets the surgery see the spatial size at the flatten.
    Layers without parameters (pooling, activations) are assumed to act on each channel alone.
    Raises ValueError naming any layer it cannot handle, never returns a broken model.
    """
    checks.module(model, "shrink's model (nn.Sequential, with ResidualBlocks inside)", nn.Sequential)
    model = make_permanent(copy.deepcopy(model))  # masks folded in: plain tensors, no hooks
    for name, m in model.named_children():
        if not isinstance(m, SUPPORTED) and any(True for _ in m.parameters()):
            raise ValueError(f"Layer {name!r} ({type(m).__name__}) is not supported by the surgery; "
                             "prune it with Torch-Pruning, which traces arbitrary graphs.")
    unknown = [n for n in plan if n.split(".")[0] not in dict(model.named_children())]
    if unknown:
        raise ValueError(f"The plan names layers {unknown} that are not children of the model.")
    check_plan(model, plan)
    # The spatial size of every activation, to expand channel indices at the flatten.
    shapes, x = {}, torch.zeros(1, *check_input_shape(input_shape), device=next(model.parameters()).device)
    run_checked(model, x)  # a wrong input_shape: a clear error rather than one from a layer
    for name, m in model.named_children():
        shapes[name] = x.shape[1:]
        x = m(x)
    layers, idx = [], None  # idx: surviving channels of the activation flowing between layers
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            out = plan.get(name)
            layers.append((name, slice_conv(m, idx, out)))
            idx = out
        elif isinstance(m, nn.BatchNorm2d):
            layers.append((name, slice_batchnorm(m, idx)))
        elif isinstance(m, nn.Flatten):
            if idx is not None:
                c, *spatial = shapes[name]
                per = int(torch.tensor(spatial).prod()) if spatial else 1
                idx = (idx[:, None] * per + torch.arange(per, device=idx.device)).flatten()
            layers.append((name, m))
        elif isinstance(m, nn.Linear):
            out = plan.get(name)
            layers.append((name, slice_linear(m, idx, out)))
            idx = out
        elif isinstance(m, ResidualBlock):
            stream = plan.get(name, idx)
            if (stream is None) != (idx is None) or (idx is not None and not torch.equal(stream, idx)):
                raise ValueError(f"Residual block {name!r}: its output channels meet its input at the "
                                 "addition, so they must be the channels its input already has.")
            inner = plan.get(f"{name}.conv1")
            block = copy.deepcopy(m)
            block.conv1, block.bn1 = slice_conv(m.conv1, idx, inner), slice_batchnorm(m.bn1, inner)
            block.conv2, block.bn2 = slice_conv(m.conv2, inner, idx), slice_batchnorm(m.bn2, idx)
            layers.append((name, block))
        else:  # no parameters: pooling, activations, dropout
            layers.append((name, m))
    return nn.Sequential(OrderedDict(layers)).eval()


def prune_filters(model: nn.Sequential, amounts: dict[str, float | int], input_shape,
                  p: float = 1) -> nn.Sequential:
    """One call: L_p-norm filter pruning (Li et al. 2017) followed by surgery."""
    return shrink(model, channel_plan(model, amounts, p), input_shape)
