"""Quantization: from the rounding formula to an int8 model that runs on a CPU.

One module per concern, each stating its math in its docstring:

* ``affine``      uniform affine quantization: q = clamp(round(r / S) + Z, q_min, q_max),
                  r̂ = S (q - Z); the scale S and zero point Z of a range [α, β];
* ``ranges``      which range [α, β]: min-max, a percentile, or the clipping of least MSE;
* ``fake``        fake quantization r̂ in float with the straight-through estimator, and the
                  observers that record activation ranges;
* ``nonuniform``  k-means codebooks, powers of two, binary and ternary weights;
* ``quantizers``  model-level quantizers: ``quantize_model``, ``calibrate`` (PTQ), training
                  through them (QAT), ``remove_quantization``;
* ``size``        bytes of a quantized model, sensitivity scans and mixed-precision bit allocation;
* ``adaround``    AdaRound (Nagel et al. 2020): learned rounding, up or down, per weight;
* ``equalization`` data-free quantization (Nagel et al. 2019): cross-layer equalization, bias
                  correction; and BatchNorm re-estimation.
* ``smoothquant`` SmoothQuant (Xiao et al. 2023): activation outliers moved into the weights of
                  a transformer's LayerNorm -> linear pairs.
* ``transformer_ops`` int8 on a transformer's operations one family at a time (linears,
                  attention matmuls, softmax, LayerNorm and GELU inputs), and what flows there.
* ``weight_only`` a language model's weights, group-wise round-to-nearest, and bits per weight;
* ``gptq``        GPTQ (Frantar et al. 2023): rounding column by column, errors spread by the Hessian;
* ``awq``         AWQ (Lin et al. 2024): salient input channels, scaled before rounding;
* ``formats``     NF4, FP8 (E4M3, E5M2) and the OCP microscaling formats MXFP4 / MXFP8;
* ``kv_cache``    a decoder's KV cache: its bytes per token, keys and values rounded to int8.

Every public name of the first six is re-exported here (the modules after them, ``adaround`` to ``kv_cache``, are
imported as modules: ``from compresslab.quantization import adaround``), so ``from compresslab import quantization as Q`` and
``Q.qparams(...)``, ``Q.quantize_model(...)``, ... work whatever module defines them.

Deployment: fake quantization is only a simulation; it runs at float speed. Real int8
speed needs int8 kernels: ``deploy.py`` exports to ONNX and quantizes for ONNX Runtime.
"""
from __future__ import annotations

from ..metrics import prunable_layers
from ..train import evaluate, model_device
from .affine import (EPS, QParams, check_bits, check_finite, check_not_empty, check_range, dequantize,
                     qparams_from_range, qrange, quantize)
from .fake import ActivationQuantizer, Observer, StraightThrough, fake_quantize
from .nonuniform import (assign_to_centroids, binarize, channel_mean_abs, kmeans_codebook, power_of_two,
                         ternarize)
from .quantizers import (SCHEMES, KMeansQuantizer, WeightQuantizer, activation_quantizers, calibrate,
                         quantize_input, quantize_model, quantized_layers, remove_quantization,
                         run_batches, weight_quantizer)
from .ranges import (METHODS, as_rows, check_method, check_percentile, minmax_range, mse_range,
                     percentile_range, qparams)
from .size import allocate_bits, quantized_size, sensitivity_scan, size_table

__all__ = [
    # affine
    "EPS", "QParams", "check_bits", "check_finite", "check_not_empty", "check_range", "dequantize",
    "qparams_from_range", "qrange", "quantize",
    # ranges
    "METHODS", "as_rows", "check_method", "check_percentile", "minmax_range", "mse_range",
    "percentile_range", "qparams",
    # fake quantization and observers
    "ActivationQuantizer", "Observer", "StraightThrough", "fake_quantize",
    # non-uniform grids
    "assign_to_centroids", "binarize", "channel_mean_abs", "kmeans_codebook", "power_of_two", "ternarize",
    # model-level quantizers, PTQ and QAT
    "SCHEMES", "KMeansQuantizer", "WeightQuantizer", "activation_quantizers", "calibrate", "quantize_input",
    "quantize_model", "quantized_layers", "remove_quantization", "run_batches", "weight_quantizer",
    # size and mixed precision
    "allocate_bits", "quantized_size", "sensitivity_scan", "size_table",
    # helpers the old single module imported (kept reachable as Q.<name>)
    "evaluate", "model_device", "prunable_layers",
]
