"""A whole CNN in integers (Jacob et al. 2018): calibrate once, then codes in, codes out.

``to_integer(model, calibration)`` turns a trained flat ``nn.Sequential`` (conv / linear,
BatchNorm, ReLU, max-pools, flatten) into an ``IntegerModel``:

1. every BatchNorm is folded into the conv before it (``integer.fold_batchnorm``, also through
   a max-pool where every γ >= 0, which is exact there: see ``integer.py``);
2. calibration batches run through the folded float model; hooks record each conv / linear
   output's range, after its ReLU when one follows (the ReLU is then fused: a clamp at Z_y);
3. each weight becomes int8 codes, symmetric per output channel (S_w = max|w| / 127), each
   activation uint8, asymmetric over its calibrated [min, max] widened to hold 0;
4. each layer becomes an ``integer.IntegerLayer``: int32 accumulation, int32 bias at S_x S_w,
   requantization by M = S_x S_w / S_y as M_0 2^-n.

Between the layers only integer operations remain. Max-pooling works on the codes directly:
r = S (q - Z) with S > 0 is increasing in q, so the max of the codes is the code of the max.
For the same reason the predicted class is the argmax of the last layer's codes. The only float
steps are the input image's quantization, q_x = round(x / S_x) + Z_x, and, for reading logits,
the last dequantization.
"""
from __future__ import annotations

import torch
from torch import nn

from . import checks
from .integer import CONVS, MAXPOOLS, IntegerLayer, fold_batchnorm, integer_layer
from .quantization import qparams, qparams_from_range, quantize, run_batches

SKIPPED = (nn.Identity, nn.Dropout)  # what folding leaves behind, and what eval mode skips


class IntegerModel(nn.Module):
    """Integer layers, max-pools on codes and flatten, in order; ``forward`` takes float images
    and returns the dequantized logits, so that ``cl.evaluate`` and ``cl.predict`` work on it."""

    def __init__(self, steps: list, x_scale: float, x_zero_point: int, y_scale: float, y_zero_point: int):
        super().__init__()
        self.steps = steps  # IntegerLayer, or an nn.MaxPool / nn.AdaptiveMaxPool / nn.Flatten
        self.x_scale, self.x_zero_point = x_scale, x_zero_point
        self.y_scale, self.y_zero_point = y_scale, y_zero_point

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The one float step on the way in: q_x = clamp(round(x / S_x) + Z_x, 0, 255)."""
        return torch.clamp(torch.round(x / self.x_scale) + self.x_zero_point, 0, 255).to(torch.int32)

    @staticmethod
    def step(step, q: torch.Tensor, pair_saturation: bool = False) -> torch.Tensor:
        """One step on codes: an integer layer, or a max-pool / flatten (no arithmetic at all)."""
        if isinstance(step, IntegerLayer):
            return step(q, pair_saturation)
        return step(q.float()).to(torch.int32)  # float only as a container: the values are codes

    def inputs(self, q_x: torch.Tensor, pair_saturation: bool = False):
        """Each step with the codes that enter it, in order: ``(step, q)`` pairs, the exact path
        of ``codes`` (to look at, or to feed, one layer at a time)."""
        q = q_x
        for step in self.steps:
            yield step, q
            q = self.step(step, q, pair_saturation)

    def codes(self, q_x: torch.Tensor, pair_saturation: bool = False, upto: int | None = None) -> torch.Tensor:
        """uint8 input codes -> the last layer's uint8 output codes, in integers only; with
        ``upto=k``, the codes entering step k (``steps[:k]`` applied: ``upto=-1``, the input of
        the last layer). ``pair_saturation``: every layer sums its u8 x s8 products in saturating
        int16 pairs, as AVX2's ``vpmaddubsw`` does (see ``integer.py``)."""
        q = q_x
        for step in self.steps[:upto]:
            q = self.step(step, q, pair_saturation)
        return q

    def forward(self, x: torch.Tensor, pair_saturation: bool = False) -> torch.Tensor:
        q_y = self.codes(self.quantize_input(x), pair_saturation)
        return self.y_scale * (q_y.float() - self.y_zero_point)

    def extra_repr(self) -> str:
        return "\n".join(type(s).__name__ if not isinstance(s, IntegerLayer) else
                         f"IntegerLayer(weight {tuple(s.weight.shape)}, relu={s.relu})" for s in self.steps)


def fused_relu(items: list, i: int) -> bool:
    """Is the conv at position i followed by a ReLU before the next weight layer? (A max-pool in
    between commutes with the ReLU: max(relu(x)) = relu(max(x)).)"""
    for _, layer in items[i + 1:]:
        if isinstance(layer, nn.ReLU):
            return True
        if not isinstance(layer, MAXPOOLS + SKIPPED):
            return False
    return False


def output_ranges(model: nn.Sequential, calibration, batches: int | None) -> tuple[dict, tuple]:
    """Min and max of each conv / linear output over the calibration batches (after the ReLU
    where one is fused), and of the input."""
    items, ranges, handles = list(model.named_children()), {}, []

    def record(name, relu):
        def hook(module, args, out):
            out = out.detach().clamp(min=0) if relu else out.detach()
            lo, hi = ranges.get(name, (float("inf"), float("-inf")))
            ranges[name] = (min(lo, float(out.min())), max(hi, float(out.max())))
        return hook

    seen_input = [float("inf"), float("-inf")]

    def record_input(module, args):
        seen_input[0], seen_input[1] = min(seen_input[0], float(args[0].min())), max(seen_input[1], float(args[0].max()))

    handles.append(model.register_forward_pre_hook(record_input))
    for i, (name, layer) in enumerate(items):
        if isinstance(layer, CONVS):
            handles.append(layer.register_forward_hook(record(name, fused_relu(items, i))))
    try:
        run_batches(model, calibration, batches)
    finally:
        for h in handles:
            h.remove()
    return ranges, tuple(seen_input)


def activation_qparams(lo: float, hi: float):
    """uint8 asymmetric over [lo, hi] widened to hold 0: (S, Z)."""
    qp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), 8, symmetric=False)
    return float(qp.scale), int(qp.zero_point)


def to_integer(model: nn.Sequential, calibration, batches: int | None = 2, weight_bits: int = 8) -> IntegerModel:
    """The integer-only version of a trained flat CNN (see the module docstring).
    ``weight_bits=7`` keeps |q_w| <= 63, ORT's ``reduce_range`` idea: no int16 pair saturates."""
    checks.integer(weight_bits, "weight_bits", 2, 8, example=8)
    folded = fold_batchnorm(model, through_maxpool=True, strict=True)  # every BN, or an error
    ranges, (in_lo, in_hi) = output_ranges(folded, calibration, batches)
    s_x, z_x = activation_qparams(in_lo, in_hi)
    x_scale, x_zero_point, steps, fused = s_x, z_x, [], set()
    items = list(folded.named_children())
    for i, (name, layer) in enumerate(items):
        if isinstance(layer, CONVS):
            relu = fused_relu(items, i)
            if relu:  # the ReLU it absorbs: the first one after it
                fused.add(next(j for j in range(i + 1, len(items)) if isinstance(items[j][1], nn.ReLU)))
            s_y, z_y = activation_qparams(*ranges[name])
            qp = qparams(layer.weight.detach(), weight_bits, symmetric=True, axis=0)
            conv = isinstance(layer, nn.Conv2d)
            steps.append(integer_layer(
                quantize(layer.weight.detach(), qp), qp.scale, layer.bias, s_x, z_x, s_y, z_y,
                relu=relu, stride=layer.stride if conv else 1,
                padding=layer.padding if conv else 0, dilation=layer.dilation if conv else 1,
                groups=layer.groups if conv else 1))
            s_x, z_x = s_y, z_y
        elif isinstance(layer, MAXPOOLS + (nn.Flatten,)):
            steps.append(layer)
        elif isinstance(layer, nn.ReLU) and i not in fused:
            raise ValueError(f"{name}: a ReLU that does not follow a conv / linear layer (only max-pools in "
                             "between) cannot be fused into its clamp.")
        elif not isinstance(layer, SKIPPED + (nn.ReLU,)):
            raise ValueError(f"{name}: {type(layer).__name__} has no integer version here; the model may hold "
                             "conv / linear, BatchNorm, ReLU, max-pool and flatten layers.")
    return IntegerModel(steps, x_scale, x_zero_point, s_x, z_x)
