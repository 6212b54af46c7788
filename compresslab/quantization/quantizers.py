"""Model-level quantizers: quantize a model's layers in place, calibrate, undo.

A weight quantizer is a parametrization (``torch.nn.utils.parametrize``): the layer's
``weight`` becomes q(w), the quantized copy of the float weight that the optimizer keeps
updating (quantization-aware training, QAT: the gradient reaches w straight through). An
activation quantizer fake-quantizes a layer's input with the range its observer recorded
during ``calibrate`` (post-training quantization, PTQ: a few batches, no training).

Deployment: fake quantization is only a simulation; it runs at float speed. Real int8
speed needs int8 kernels: ``deploy.py`` exports to ONNX and quantizes for ONNX Runtime.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from .. import checks
from ..metrics import prunable_layers
from ..train import model_device
from .affine import QParams, check_bits, check_not_empty
from .fake import ActivationQuantizer, StraightThrough, fake_quantize
from .nonuniform import binarize, kmeans_codebook, power_of_two, ternarize
from .ranges import check_method, check_percentile, qparams

SCHEMES = ("uniform", "kmeans", "pow2", "binary", "ternary")


class WeightQuantizer(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``): the layer's ``weight`` becomes the
    quantized copy of the float weight kept in ``parametrizations.weight.original``.

    The optimizer updates the float weight; the forward pass sees the quantized one; the
    gradient reaches the float weight straight through (QAT). Schemes: 'uniform' (affine,
    bits 2-16), 'pow2', 'binary', 'ternary'.
    """

    def __init__(self, scheme: str = "uniform", bits: int = 8, symmetric: bool = True,
                 per_channel: bool = True, method: str = "minmax", percentile: float = 99.99):
        super().__init__()
        checks.one_of(scheme, "The weight scheme", ("uniform", "pow2", "binary", "ternary"),
                      "(k-means has its own KMeansQuantizer.)")
        bits = {"binary": 1, "ternary": 2}.get(scheme, bits)
        self.scheme, self.bits = scheme, check_bits(bits, minimum=1 if scheme == "binary" else 2)
        self.symmetric, self.per_channel = symmetric, per_channel
        self.method, self.percentile = check_method(method), check_percentile(percentile)
        self._cache = (None, None)  # (weight version, QParams): the grid search runs once per update

    def qparams(self, w: torch.Tensor) -> QParams:
        key = (w.data_ptr(), w._version, w.device)
        if self._cache[0] != key:
            self._cache = (key, qparams(w, self.bits, self.symmetric, 0 if self.per_channel else None,
                                        self.method, self.percentile))
        return self._cache[1]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scheme == "uniform":
            return fake_quantize(w, self.qparams(w))
        wd = w.detach()
        wq = {"pow2": lambda: power_of_two(wd, self.bits),
              "binary": lambda: binarize(wd, self.per_channel),
              "ternary": lambda: ternarize(wd, self.per_channel)}[self.scheme]()
        return StraightThrough.apply(w, wq)   # the value of wq, the gradient to w

    def storage_bits(self, w: torch.Tensor) -> tuple[int, int]:
        """(bits of the integer codes, bits of scales / zero points) to store ``w``."""
        channels = w.shape[0] if self.per_channel and w.dim() > 1 else 1
        if self.scheme == "uniform":
            return w.numel() * self.bits, channels * (32 + (0 if self.symmetric else self.bits))
        if self.scheme == "pow2":
            return w.numel() * self.bits, 8                 # the top exponent
        return w.numel() * self.bits, channels * 32         # binary / ternary: α per channel

    def extra_repr(self) -> str:
        s = f"scheme={self.scheme}, bits={self.bits}, per_channel={self.per_channel}"
        return s + (f", symmetric={self.symmetric}, method={self.method}" if self.scheme == "uniform" else "")


class KMeansQuantizer(nn.Module):
    """A parametrization: weight = centroids[labels], one codebook of 2^b values per layer.

    The float weight is no longer used; only the ``centroids`` are trained. Autograd's
    backward of the indexing adds up the gradients of all weights that share a centroid:
    ∂L/∂c_k = Σ_{i: label_i = k} ∂L/∂w_i, exactly Deep Compression's centroid fine-tuning.
    ``keep_zeros``: a pruned layer's zeros stay exactly zero and only its surviving weights
    are clustered (Deep Compression shares the weights that pruning left).
    """

    def __init__(self, weight: torch.Tensor, bits: int, iters: int = 30, keep_zeros: bool = False):
        super().__init__()
        self.bits = check_bits(bits, minimum=1)
        check_not_empty(weight, "weight")
        mask = weight.detach() != 0 if keep_zeros else torch.ones_like(weight, dtype=torch.bool)
        if not mask.any():
            raise ValueError("Every weight of this layer is zero: there is nothing to cluster.")
        centroids, labels = kmeans_codebook(weight.detach()[mask], self.bits, iters)
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("labels", labels)
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(w).masked_scatter(self.mask, self.centroids[self.labels].to(w.dtype))

    def storage_bits(self, w: torch.Tensor) -> tuple[int, int]:
        """b-bit indices of the clustered weights + the float codebook (a sparse layer's
        positions are extra: see ``coding.layer_storage``)."""
        return int(self.mask.sum()) * self.bits, self.centroids.numel() * 32

    def extra_repr(self) -> str:
        return f"bits={self.bits}, codebook={self.centroids.numel()}"



def quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer computes with its fake-quantized input."""
    return (module.input_quantizer(args[0]), *args[1:])


def weight_quantizer(module: nn.Module) -> nn.Module | None:
    """The WeightQuantizer / KMeansQuantizer of a layer, or None."""
    if parametrize.is_parametrized(module, "weight"):
        q = module.parametrizations.weight[0]
        if isinstance(q, (WeightQuantizer, KMeansQuantizer)):
            return q
    return None


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight quantizer of every quantized conv / linear layer, by layer name."""
    return {n: q for n, m in prunable_layers(model).items() if (q := weight_quantizer(m)) is not None}


def quantize_model(model: nn.Module, bits: int | dict[str, int] = 8, scheme: str = "uniform", *,
                   symmetric: bool = True, per_channel: bool = True, method: str = "minmax",
                   percentile: float = 99.99, act_bits: int | None = None, act_symmetric: bool = False,
                   kmeans_iters: int = 30, keep_zeros: bool = False, layers: Iterable[str] | None = None,
                   exclude: Iterable[str] = ()) -> nn.Module:
    """Quantize the weights of conv / linear layers in place (and their inputs if ``act_bits``).

    ``bits`` is one width or a dict layer -> width (mixed precision; only those layers).
    ``scheme``: 'uniform' (``symmetric``, ``per_channel``, range ``method``), 'kmeans',
    'pow2', 'binary' or 'ternary' (``keep_zeros``: k-means leaves a pruned layer's zeros at
    zero). Activations: per tensor, asymmetric by default (post-ReLU
    inputs are non-negative: an unsigned grid wastes no level on negatives); their ranges come
    from ``calibrate``. Undo with ``remove_quantization``.
    """
    checks.one_of(scheme, "scheme", SCHEMES)
    if isinstance(bits, dict):
        if layers is not None:
            raise ValueError("Pass either a dict of bits per layer (e.g. {'fc1': 4}) or "
                             "layers=, not both.")
        layers = list(bits)
    available = prunable_layers(model)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"No conv / linear layer named {unknown}; the model has {list(available)}.")
    names = [n for n in names if n not in set(exclude)]
    if act_bits is not None:
        check_bits(act_bits)
    quantizers = {}  # every quantizer is built (and its arguments checked) before the model changes
    for name in names:
        m = available[name]
        b = bits[name] if isinstance(bits, dict) else bits
        if prune.is_pruned(m):
            raise ValueError(f"Layer {name!r} carries a pruning mask: call "
                             "pruning.make_permanent(model) before quantizing it.")
        if weight_quantizer(m) is not None or hasattr(m, "input_quantizer"):
            raise ValueError(f"Layer {name!r} is already quantized: call remove_quantization(model) first.")
        if scheme == "kmeans":
            quantizers[name] = KMeansQuantizer(m.weight, b, kmeans_iters, keep_zeros)
        else:
            quantizers[name] = WeightQuantizer(scheme, b, symmetric, per_channel, method, percentile)
        quantizers[name](m.weight.detach())  # the weight itself must be quantizable (finite, not empty)
    for name, q in quantizers.items():
        m = available[name]
        parametrize.register_parametrization(m, "weight", q.to(m.weight.device))
        if act_bits is not None:
            m.input_quantizer = ActivationQuantizer(act_bits, act_symmetric).to(m.weight.device)
            m.register_forward_pre_hook(quantize_input)
    return model


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, loader, batches: int = 10) -> nn.Module:
    """PTQ calibration: run ``batches`` batches (inputs, or (inputs, labels) pairs) through the
    model in eval mode while the observers record every quantized input's range; then freeze
    the ranges and switch activation quantization on."""
    quantizers = activation_quantizers(model)
    if not quantizers:
        raise ValueError("The model has no activation quantizers to calibrate: "
                         "quantize_model(model, ..., act_bits=8) first.")
    checks.integer(batches, "batches", 1, must="be at least 1 batch for calibration", example=10)
    for q in quantizers:
        q.observer.reset()
        q.observing, q.enabled = True, False
    try:
        run_batches(model, loader, batches)
    finally:
        for q in quantizers:
            q.observing, q.enabled = False, True
    return model


@torch.no_grad()
def run_batches(model: nn.Module, loader, batches: int | None, eval_mode: bool = True) -> int:
    """Forward ``batches`` batches of ``loader`` (inputs, or (inputs, labels) pairs; None: all)
    through the model in eval mode (``eval_mode=False``: in the modes its modules are in), for
    the hooks or observers that watch it; the model's mode is restored. Returns how many
    batches ran. An empty loader is an error: calibration on nothing gives no ranges."""
    device, was_training, seen = model_device(model), model.training, 0
    if eval_mode:
        model.eval()
    try:
        for batch in loader:
            model((batch[0] if isinstance(batch, (tuple, list)) else batch).to(device))
            seen += 1
            if seen == batches:
                break
    finally:
        if eval_mode:
            model.train(was_training)
    if seen == 0:
        raise ValueError("The calibration loader gave no batch: pass a non-empty loader "
                         "(e.g. ds.loader('train', 64, subset=512)).")
    return seen


def remove_quantization(model: nn.Module, keep_quantized_weights: bool = True) -> nn.Module:
    """Back to a plain model: weight quantizers folded in (``keep_quantized_weights``: the
    weights keep their quantized values; False: the float weights come back), activation
    quantizers and their hooks removed."""
    for m in model.modules():
        if weight_quantizer(m) is not None:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=keep_quantized_weights)
        if hasattr(m, "input_quantizer"):
            for key, hook in list(m._forward_pre_hooks.items()):
                if hook is quantize_input:
                    del m._forward_pre_hooks[key]
            del m.input_quantizer
    return model
