"""Structured pruning of a vision transformer: attention heads and MLP neurons, removed for real.

Head h of a block is ``d_head`` rows of each of q, k and v in ``qkv`` and the same ``d_head``
columns of ``proj``; MLP neuron j is row j of ``fc1`` and column j of ``fc2``. Cutting those
rows and columns out gives a smaller block that computes exactly what the full block computes
with that head's (or neuron's) output multiplied by zero:

* ``mask_heads`` / ``mask_neurons``: the zero gates, applied by a forward pre-hook on ``proj`` /
  ``fc2`` (as ``torch.nn.utils.prune`` applies its masks): same size, same speed;
* ``remove_heads`` / ``remove_neurons``: the surgery, a smaller and faster model.

Which to cut: Michel et al. (2019) put a gate xi_h = 1 on every head and score it by
I_h = E_x |dL(x)/d xi_h| (``gate_importance``), the first-order estimate of the loss change
when the head is switched off; normalized within each layer, the lowest are pruned globally.
The same gate on an MLP neuron's output gives its first-order (Taylor) importance.
"""
from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .train import model_device


def gate_heads(gate: torch.Tensor, module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on ``proj``: multiply each head's slice of its input by ``gate[h]``."""
    (x,) = args                                                  # (B, N, H * d_head)
    B, N, _ = x.shape
    return ((x.view(B, N, len(gate), -1) * gate[:, None].to(x.dtype)).reshape(B, N, -1),)


def gate_neurons(gate: torch.Tensor, module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on ``fc2``: multiply neuron j's activation by ``gate[j]``."""
    return (args[0] * gate.to(args[0].dtype),)


@contextlib.contextmanager
def gates(model: nn.Module, heads: list[torch.Tensor] | None = None, neurons: list[torch.Tensor] | None = None):
    """Temporarily gate every block's heads and/or MLP neurons (one tensor per block)."""
    handles = []
    for block, g in zip(model.blocks, heads or []):
        handles.append(block.attn.proj.register_forward_pre_hook(functools.partial(gate_heads, g)))
    for block, g in zip(model.blocks, neurons or []):
        handles.append(block.fc2.register_forward_pre_hook(functools.partial(gate_neurons, g)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def gate_importance(model: nn.Module, loader, kind: str = "heads", batches: int = 4,
                    normalize: bool = True) -> list[torch.Tensor]:
    """Michel et al.'s importance of every head (``kind="heads"``) or MLP neuron ("neurons"):
    I = sum over batches of |dL/d gate| at gate = 1, one tensor per block. ``normalize``
    divides each block's scores by their L2 norm (Michel et al.), so that blocks compare."""
    checks.one_of(kind, "kind", ("heads", "neurons"))
    device = model_device(model)
    sizes = [b.attn.heads if kind == "heads" else b.fc1.out_features for b in model.blocks]
    gate = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
    scores = [torch.zeros(n) for n in sizes]
    was_training = model.training
    model.eval()
    with gates(model, **{kind: gate}):
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            for s, g in zip(scores, torch.autograd.grad(loss, gate)):  # only the gates' gradients
                s += g.abs().cpu()
    model.train(was_training)
    return [s / s.norm().clamp_min(1e-12) for s in scores] if normalize else scores


def lowest_globally(scores: list[torch.Tensor], fraction: float, min_keep: int = 1) -> list[list[int]]:
    """What to keep in each block when the ``fraction`` of all units with the lowest scores is
    removed (one list of kept indices per block); every block keeps at least ``min_keep``."""
    checks.fraction(fraction, "fraction")
    flat = torch.cat(scores)
    n_remove = round(fraction * len(flat))
    order = flat.argsort().tolist()                      # lowest first
    block_of = [b for b, s in enumerate(scores) for _ in range(len(s))]
    offset = [sum(len(s) for s in scores[:b]) for b in range(len(scores))]
    removed, left = set(), [len(s) for s in scores]
    for i in order:
        if len(removed) == n_remove:
            break
        b = block_of[i]
        if left[b] > min_keep:
            removed.add(i)
            left[b] -= 1
    return [[j for j in range(len(s)) if offset[b] + j not in removed] for b, s in enumerate(scores)]


def random_keep(sizes: list[int], fraction: float, seed: int = 0, min_keep: int = 1) -> list[list[int]]:
    """The control: the same number of units removed, chosen at random."""
    g = torch.Generator().manual_seed(seed)
    return lowest_globally([torch.rand(n, generator=g) for n in sizes], fraction, min_keep)


def check_keep(keep: list[list[int]], sizes: list[int], what: str) -> list[list[int]]:
    if len(keep) != len(sizes):
        raise ValueError(f"keep needs one list of {what} per block ({len(sizes)}), got {len(keep)}.")
    for b, (k, n) in enumerate(zip(keep, sizes)):
        if not k or any(not 0 <= j < n for j in k) or len(set(k)) != len(k):
            raise ValueError(f"Block {b}: keep {list(k)} must be distinct {what} in 0..{n - 1}, at least one.")
    return [sorted(k) for k in keep]


def sub_linear(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new Linear holding only the given output rows / input columns of ``layer``."""
    w = layer.weight.detach()
    rows = torch.arange(w.shape[0]) if rows is None else torch.as_tensor(rows)
    cols = torch.arange(w.shape[1]) if cols is None else torch.as_tensor(cols)
    new = nn.Linear(len(cols), len(rows), bias=layer.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach()[rows])
    return new


def head_columns(heads: list[int], head_dim: int) -> list[int]:
    """The input columns of ``proj`` (the rows of each of q, k, v) that belong to ``heads``."""
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def remove_heads(model: nn.Module, keep: list[list[int]]) -> nn.Module:
    """A copy of the ViT with only the heads in ``keep[b]`` left in block b (physically)."""
    keep = check_keep(keep, [b.attn.heads for b in model.blocks], "heads")
    model = copy.deepcopy(model)
    for block, heads in zip(model.blocks, keep):
        attn = block.attn
        cols = head_columns(heads, attn.head_dim)
        inner = attn.heads * attn.head_dim                 # q rows, then k rows, then v rows
        attn.qkv = sub_linear(attn.qkv, rows=[part * inner + c for part in range(3) for c in cols])
        attn.proj = sub_linear(attn.proj, cols=cols)
        attn.heads = len(heads)
    return model


def remove_neurons(model: nn.Module, keep: list[list[int]]) -> nn.Module:
    """A copy of the ViT with only the MLP neurons in ``keep[b]`` left in block b (physically)."""
    keep = check_keep(keep, [b.fc1.out_features for b in model.blocks], "neurons")
    model = copy.deepcopy(model)
    for block, neurons in zip(model.blocks, keep):
        block.fc1 = sub_linear(block.fc1, rows=neurons)
        block.fc2 = sub_linear(block.fc2, cols=neurons)
    return model


def zero_one(keep: list[list[int]], sizes: list[int]) -> list[torch.Tensor]:
    out = [torch.zeros(n) for n in sizes]
    for g, k in zip(out, keep):
        g[list(k)] = 1.0
    return out


def mask_heads(model: nn.Module, keep: list[list[int]]) -> nn.Module:
    """A copy of the ViT whose removed heads are multiplied by zero (a buffer ``head_mask`` and a
    forward pre-hook on ``proj``): what ``remove_heads`` computes, at the full model's cost."""
    sizes = [b.attn.heads for b in model.blocks]
    model = copy.deepcopy(model)
    for block, mask in zip(model.blocks, zero_one(check_keep(keep, sizes, "heads"), sizes)):
        block.attn.register_buffer("head_mask", mask.to(model_device(model)))
        block.attn.proj.register_forward_pre_hook(functools.partial(gate_heads, block.attn.head_mask))
    return model


def mask_neurons(model: nn.Module, keep: list[list[int]]) -> nn.Module:
    """A copy of the ViT whose removed MLP neurons are multiplied by zero (buffer ``neuron_mask``)."""
    sizes = [b.fc1.out_features for b in model.blocks]
    model = copy.deepcopy(model)
    for block, mask in zip(model.blocks, zero_one(check_keep(keep, sizes, "neurons"), sizes)):
        block.register_buffer("neuron_mask", mask.to(model_device(model)))
        block.fc2.register_forward_pre_hook(functools.partial(gate_neurons, block.neuron_mask))
    return model
