"""Deployment: a PyTorch model as an ONNX file, run by ONNX Runtime, in fp32 or real int8.

Fake quantization (``quantization.py``) is a simulation: it runs at float speed. Real int8
speed needs int8 kernels. Here they come from ONNX Runtime's *static* quantization (QDQ format)
of an exported graph: weights int8 per output channel, activations uint8 with ranges from a few
calibration batches; ORT fuses DequantizeLinear -> Conv -> QuantizeLinear into integer
convolutions that use the CPU's VNNI / AMX instructions. (``torch.ao.quantization`` does the
same inside PyTorch but is deprecated; ONNX Runtime is the maintained CPU path.)

    path = export_onnx(model, "model.onnx", (3, 32, 32))
    int8 = quantize_onnx_int8(path, "model_int8.onnx", calibration_loader, batches=8)
    evaluate(OnnxModel(int8), test_loader)          # an nn.Module: evaluate / latency take it

Weight-only int4 for language models (``quantize_onnx_int4``): ORT's ``MatMulNBits`` nodes.
"""
from __future__ import annotations

import copy
import inspect
import logging
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .quantization import (ActivationQuantizer, KMeansQuantizer, Observer, WeightQuantizer,
                           remove_quantization)

# The leaf layers that export to ONNX ops ONNX Runtime quantizes or passes through in int8
# (Conv, Gemm / MatMul, pooling, Relu, Flatten / Reshape; BatchNorm after a pooling runs in float).
INT8_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6,
               nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


class UnsupportedLayerError(ValueError):
    """A layer the int8 ONNX path does not handle."""


def check_int8_support(model: nn.Module) -> None:
    """Raise ``UnsupportedLayerError`` naming the first leaf layer not in ``INT8_LAYERS``."""
    for name, m in model.named_modules():
        if isinstance(m, (WeightQuantizer, KMeansQuantizer, ActivationQuantizer, Observer)) \
                or "parametrizations" in name.split(".") or next(m.children(), None) is not None:
            continue  # quantizers are stripped before export; containers are checked by their leaves
        if not isinstance(m, INT8_LAYERS):
            where = f"Layer {name!r}" if name else "The model itself"
            raise UnsupportedLayerError(
                f"{where} ({type(m).__name__}) is not supported by the int8 ONNX path, which "
                f"handles {sorted({t.__name__ for t in INT8_LAYERS})}. Replace that layer, or "
                "export with check_int8=False and keep the model in float.")


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError(f"The int8 path needs ONNX and ONNX Runtime ({e}): "
                          "pip install onnx onnxruntime onnxscript") from e


def export_onnx(model: nn.Module, path: str | Path, input_shape, check_int8: bool = True) -> Path:
    """Write the model (on the CPU, eval mode, any quantizers folded in) to an ONNX file with a
    dynamic batch dimension, with ``torch.onnx.export``'s torch.export-based exporter."""
    require_onnx()
    shape = tuple(int(s) for s in input_shape)
    plain = remove_quantization(copy.deepcopy(model)).cpu().eval()
    if check_int8:
        check_int8_support(plain)
    x = torch.randn(2, *shape)  # batch 2: an example batch of 1 could make the batch size static
    return write_onnx(plain, x, path, "input", {0: ("batch", None, None)})


def write_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, input_name: str, dims: dict) -> Path:
    """``torch.onnx.export`` of ``model`` on ``example`` into one self-contained file (its size is
    the model's size); ``dims``: axis -> (name, min, max) of each dynamic dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = dict(input_names=[input_name], output_names=["logits"])
    if "external_data" in inspect.signature(torch.onnx.export).parameters:
        shapes = {axis: torch.export.Dim(name, min=lo, max=hi) if lo or hi else torch.export.Dim(name)
                  for axis, (name, lo, hi) in dims.items()}
        torch.onnx.export(model, (example,), str(path), **names, dynamo=True, external_data=False,
                          dynamic_shapes=(shapes,), verbose=False)
    else:  # older torch: the TorchScript-based exporter
        axes = {axis: name for axis, (name, _, _) in dims.items()}
        torch.onnx.export(model, (example,), str(path), **names, dynamic_axes={input_name: axes, "logits": axes})
    strip_debug_metadata(path)
    return path


def strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debugging notes (Python stack traces with this machine's file
    paths, FX node names): the file then holds the model alone, and its size is the same in every
    folder and on every machine."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def calibration_arrays(calibration, batches: int | None = None) -> list:
    """Up to ``batches`` input batches as float32 NumPy arrays, from a loader of (x, y) pairs
    or any iterable of input tensors."""
    if batches is not None and batches < 1:
        raise ValueError(f"Calibration needs at least 1 batch, got batches={batches}.")
    arrays = []
    for batch in calibration:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        arrays.append(x.detach().cpu().float().contiguous().numpy())
        if batches is not None and len(arrays) == batches:
            break
    if not arrays:
        raise ValueError("Calibration got zero batches: pass a loader or a list of input tensors.")
    return arrays


PROBE_K = 64  # the probe's reduction length: exact sum 64 * 255 * 127, saturated 32 * 32767


def saturation_probe() -> bytes:
    """A one-node ONNX model, ``MatMulInteger`` of uint8 A (4, K) by a constant int8 B (K, 16) of
    127s: fed 255s, its exact int32 outputs are K * 255 * 127 = 2,072,640; kernels that add pairs
    of products in int16 (``vpmaddubsw``, x86 without VNNI) return K/2 * 32767 = 1,048,544."""
    require_onnx()
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.full((PROBE_K, 16), 127, dtype=np.int8), "B")  # a constant, as weights are
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [4, PROBE_K])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [4, 16])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)  # readable by older ORT releases too
    return model.SerializeToString()


@lru_cache(maxsize=None)
def ort_int8_saturates() -> bool:
    """Does ONNX Runtime's u8 x s8 matrix product saturate on this CPU? Measured, not looked up
    (``saturation_probe``): the answer of the kernel that will run, right even where
    /proc/cpuinfo is not (an emulator, a VM that hides features)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(saturation_probe(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"A": np.full((4, PROBE_K), 255, dtype=np.uint8)})[0]
    return bool((y != PROBE_K * 255 * 127).any())

def quantize_onnx_int8(fp32_path: str | Path, int8_path: str | Path, calibration,
                       batches: int | None = None, per_channel: bool = True,
                       reduce_range: bool | None = None, weight_type: str = "int8",
                       op_types: list[str] | None = None) -> Path:
    """ONNX Runtime static quantization to int8 (QDQ format): weights int8 symmetric
    (per output channel), activations uint8 asymmetric with min / max ranges from the
    calibration batches. ORT then fuses DequantizeLinear -> Conv -> QuantizeLinear into
    integer kernels (QLinearConv): that is where the speed comes from.

    ``reduce_range`` stores the weights in 7 bits ([-64, 64]). On x86 CPUs without VNNI, ORT's
    u8 x s8 kernel adds pairs of products into a 16-bit sum (``vpmaddubsw``): 2 * 255 * 127 = 64770
    overflows 32767 and saturates, silently (notebook 06a measures what that costs); with
    7-bit weights 2 * 255 * 64 = 32640 fits. ``None`` (the default) turns it on exactly where
    ORT's kernel saturates on this CPU (``ort_int8_saturates()``, measured). The choice is baked
    into the file: to deploy on a CPU other than this one, pass ``reduce_range=True``.
    ``weight_type="uint8"`` (U8U8: weights asymmetric in [0, 255]) avoids the u8 x s8 instruction
    altogether; ORT then runs its u8 x u8 kernels (their speed: measure it on your CPU).
    ``op_types``: the ONNX operators to quantize (default: all but BatchNormalization); a
    transformer keeps Softmax, LayerNormalization and Gelu in float with ["MatMul", "Gemm", "Conv"]."""
    require_onnx()
    if weight_type not in ("int8", "uint8"):
        raise ValueError(f"weight_type must be 'int8' (ORT's default, u8 x s8 kernels) or 'uint8' (U8U8); got {weight_type!r}.")
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = ort_int8_saturates()
    arrays = calibration_arrays(calibration, batches)
    graph = onnx.load(str(fp32_path)).graph
    input_name = graph.input[0].name
    # A BatchNorm that follows a pooling layer cannot be folded into its conv; it runs in float
    # either way, and quantizing its per-channel parameters only produces warnings.
    ops = sorted({n.op_type for n in graph.node} - {"BatchNormalization"}) if op_types is None else list(op_types)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(arrays)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: x}

    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        # ORT's recommended clean-up (shape inference, graph optimization); its symbolic shape
        # inference fails on the ReduceMax the exporter writes for a global max-pool: skip it.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=ops, reduce_range=reduce_range)
    return int8_path


def quantize_onnx_dynamic(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ONNX Runtime *dynamic* quantization: int8 weights, activation ranges computed at run
    time. Good for linear layers / transformers; convolutions become ConvInteger, which has no
    fast CPU kernel, so a CNN usually gets *slower* than fp32 (shown in notebook 06a)."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8)
    return Path(out_path)


def quantize_onnx_int4(fp32_path: str | Path, out_path: str | Path, block_size: int = 32,
                       symmetric: bool = True, accuracy_level: int = 4) -> Path:
    """ONNX Runtime's weight-only quantizer: every MatMul with a constant weight becomes a
    ``MatMulNBits`` node holding 4-bit weights, one fp32 scale per ``block_size`` weights
    (round to nearest, as ``weight_only.rtn_quantize``). ``accuracy_level=4``: the kernel
    multiplies in int8 (the activations quantized block by block on the fly), the fast CPU path
    that onnxruntime-genai's CPU models use; 0 multiplies in fp32."""
    require_onnx()
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), algo_config=config)
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)   # it logs two INFO lines for every node of the graph
    try:
        quantizer.process()
    finally:
        log.setLevel(level)
    onnx.save(quantizer.model.model, str(out_path))
    return Path(out_path)


def graph_nodes(path: str | Path, optimized: bool = False) -> list[str]:
    """The operator of every node of an ONNX file, in the graph's order. ``optimized=True``: the
    graph ONNX Runtime runs after its 'extended' optimizations (constant folding, Conv + BatchNorm
    folding, Conv + ReLU fusion into ``FusedConv``, QDQ fusion into ``QLinearConv``), i.e. which
    layers survive as passes of their own, and where an int8 graph falls back to float."""
    require_onnx()
    import onnx
    import onnxruntime as ort
    if optimized:
        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(options.optimized_model_filepath).graph
    else:
        graph = onnx.load(str(path)).graph
    return [node.op_type for node in graph.node]


def graph_ops(path: str | Path, optimized: bool = False) -> dict[str, int]:
    """How many nodes of each operator an ONNX file holds, by name (see ``graph_nodes``)."""
    counts: dict[str, int] = {}
    for op in graph_nodes(path, optimized):
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, called like a PyTorch model: logits out,
    on the input's device. It has no parameters, so ``train.evaluate`` / ``train.predict``
    and ``metrics.latency`` take it as it is."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        super().__init__()
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()  # same threads as torch
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.path.stat().st_size / 1000:.0f} KB"
