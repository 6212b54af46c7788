"""Integer-only inference (Jacob et al. 2018): a conv or linear layer computed with integers alone.

With r = S (q - Z) for the input x, for the weights w (Z_w = 0, one S_w per output channel) and
for the output y, the layer y = b + Σ_k w_k x_k becomes, per output channel,

    q_y = clamp(Z_y + M acc, 0, 255),   acc = b_q + Σ_k q_w,k (q_x,k - Z_x),
    M = S_x S_w / S_y,                  b_q = round(b / (S_x S_w))  (int32)

``acc`` is an int32 sum of 8-bit products. M, in (0, 1) in practice, is the one real number left:
it is written M = M_0 2^-n with M_0 an int32 in [2^30, 2^31) (gemmlowp / TFLite), and applied as
an int64 product and a rounding right shift, M acc ≈ (M_0 acc + 2^(n-1)) >> n (round half up).
M_0 holds M to a relative 2^-31. A fused ReLU clamps at Z_y, the code of 0.0, instead of at 0.
Floats are used only once per layer, to compute M_0, n and b_q; the data path is integer.

BatchNorm folding. In eval mode a BatchNorm is the affine map y = γ (x - μ) / σ + β, σ = √(var + ε),
per channel, so a BN that directly follows a conv folds into it:
w' = w γ / σ,  b' = β + (b - μ) γ / σ. A BN after a max-pool does not fold in general: with
a = γ / σ, max_i(a x_i) = a max_i(x_i) only when a >= 0; for a < 0 it is a min_i(x_i). So the BN
can be moved before the pool (and then folded) only for channels with γ >= 0;
``fold_batchnorm(through_maxpool=True)`` does that when every γ of the BN is >= 0, never otherwise.

Saturation of u8 x s8 on AVX2. Without VNNI, x86 int8 kernels use ``vpmaddubsw``: it multiplies
raw u8 codes q_x in [0, 255] (before any zero-point correction) by s8 codes and adds adjacent
pairs into an int16 that saturates at ±32767; ``vpmaddwd`` then widens to int32. A pair of full
8-bit weights reaches 2 * 255 * 127 = 64770 and saturates; 7-bit weights (|q_w| <= 64, ORT's
``reduce_range``) reach 2 * 255 * 64 = 32640, which fits, for one bit of weight precision.
VNNI's ``vpdpbusd`` adds four u8 x s8 products straight into int32: no int16 step, no saturation.
``pair_saturation=True`` simulates the int16 step, pairing along the reduction in ONNX Runtime's
order (kernel position, then input channel: its conv reorders the filter to (kh, kw, c_in)).

``qdq_layer_params`` reads a QDQ model's codes and scales, ``ort_codes`` runs ONNX Runtime on
the graph cut at one layer: tests/test_integer.py compares the two code by code.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checks
from .deploy import require_onnx

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1
INT16_MAX = 2 ** 15 - 1

# ---------------------------------------------------------------- BatchNorm folding

CONVS = (nn.Conv1d, nn.Conv2d, nn.Linear)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d)
MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def commutes_with_maxpool(bn: nn.Module) -> bool:
    """Does max-pool(BN(x)) = BN(max-pool(x))? Exactly when every scale γ / σ is >= 0, i.e. γ >= 0."""
    return bool((bn.weight >= 0).all()) if bn.affine else True


def fold_into(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """The conv (or linear) layer followed by the BN, as one layer: w' = w γ/σ, b' = β + (b - μ) γ/σ."""
    if bn.running_mean is None:
        raise ValueError("A BatchNorm without running statistics (track_running_stats=False) "
                         "normalizes with each batch's own: it cannot be folded.")
    a = (bn.weight if bn.affine else 1) / torch.sqrt(bn.running_var + bn.eps)        # γ / σ, (C,)
    beta = bn.bias if bn.affine else 0
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * a.view(-1, *[1] * (conv.weight.dim() - 1)))
        folded.bias = nn.Parameter(beta + (b - bn.running_mean) * a)
    return folded


def foldable_pairs(model: nn.Sequential, through_maxpool: bool = False) -> list[tuple[str, str]]:
    """(conv name, BN name) of every BN directly after a conv (or after conv -> max-pool whose
    BN has every γ >= 0, with ``through_maxpool``), in the order of the model."""
    checks.module(model, "model", nn.Sequential)
    items, pairs = list(model.named_children()), []
    for i, (name, layer) in enumerate(items):
        if not isinstance(layer, BNS) or i == 0:
            continue
        before = items[i - 1][1]
        if isinstance(before, CONVS):
            pairs.append((items[i - 1][0], name))
        elif (through_maxpool and isinstance(before, MAXPOOLS) and i >= 2
              and isinstance(items[i - 2][1], CONVS) and commutes_with_maxpool(layer)):
            pairs.append((items[i - 2][0], name))
    return pairs


def fold_batchnorm(model: nn.Sequential, through_maxpool: bool = False, strict: bool = False) -> nn.Sequential:
    """A copy of a flat ``nn.Sequential`` with each foldable BN folded into its conv and replaced
    by ``nn.Identity`` (names kept). Same outputs in eval mode, up to float rounding.
    ``strict``: every BN must fold (equalization and integer-only inference need it), else an error."""
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in foldable_pairs(folded, through_maxpool):
        setattr(folded, conv_name, fold_into(getattr(folded, conv_name), getattr(folded, bn_name)))
        setattr(folded, bn_name, nn.Identity())
    for name, m in folded.named_children() if strict else ():
        if isinstance(m, BNS):
            why = ("a max-pool sits between it and its conv, and some channels have γ/σ < 0: max(a z) = "
                   "a min(z) there" if through_maxpool and not commutes_with_maxpool(m) else
                   "it does not follow a conv / linear layer" + (" (at most a max-pool between)" if through_maxpool else ""))
            raise ValueError(f"BatchNorm {name!r} cannot be folded: {why}.")
    return folded

# ---------------------------------------------------------------- fixed-point requantization


def fixed_point_multiplier(m) -> tuple[torch.Tensor, torch.Tensor]:
    """M = M_0 2^-n with M_0 in [2^30, 2^31): (M_0, n) as int64 tensors, one per entry of M.

    From M = f 2^e with f in [1/2, 1): M_0 = round(f 2^31), n = 31 - e (f rounding up to 1
    gives M_0 = 2^30, n - 1). M must be in (0, 2^30) so that n >= 1.
    """
    m = torch.as_tensor(m, dtype=torch.float64)
    checks.finite(m, "multiplier M")
    if not ((m > 0) & (m < 2 ** 30)).all():
        raise ValueError(f"The multiplier M = S_x S_w / S_y must be in (0, 2^30), e.g. 0.003; got {m.tolist()}.")
    f, e = torch.frexp(m)
    m0 = torch.round(f * 2 ** 31).long()
    n = 31 - e.long()
    top = m0 == 2 ** 31
    m0, n = torch.where(top, m0 // 2, m0), torch.where(top, n - 1, n)
    # M < 2^-31: shift at most 62 (M_0 loses the bits; M acc < 1 rounds to 0 or 1 anyway)
    m0, n = torch.where(n > 62, m0 >> (n - 62).clamp(max=62), m0), n.clamp(max=62)
    return m0, n


def rounding_shift(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """round(x / 2^n), halves up, in integers: (x + 2^(n-1)) >> n (an arithmetic shift floors)."""
    return (x + (torch.ones_like(n) << (n - 1))) >> n


def requantize(acc: torch.Tensor, m0: torch.Tensor, n: torch.Tensor, zero_point: int,
               qmin: int = 0, qmax: int = 255, relu: bool = False) -> torch.Tensor:
    """int32 accumulators (N, C, ...) -> codes clamp(Z_y + (M_0 acc) 2^-n): int64 product, shift.
    M_0 and n: one per channel C (or one in all)."""
    shape = (-1,) + (1,) * (acc.dim() - 2)
    m0, n = m0.reshape(-1).view(shape), n.reshape(-1).view(shape)
    y = rounding_shift(acc.long() * m0, n) + zero_point
    return y.clamp(max(qmin, zero_point) if relu else qmin, qmax).to(torch.int32)


def quantize_bias(bias: torch.Tensor, x_scale, w_scale) -> torch.Tensor:
    """b_q = round(b / (S_x S_w)) as int32, per output channel (the accumulator's own scale)."""
    scale = torch.as_tensor(x_scale, dtype=torch.float64) * torch.as_tensor(w_scale, dtype=torch.float64)
    q = torch.round(bias.detach().double() / scale)
    if (q.abs() > INT32_MAX).any():
        raise ValueError(f"The bias must fit in int32 at the scale S_x S_w, e.g. |b / (S_x S_w)| < 2^31; got "
                         f"{float(q.abs().max()):.3g} (is the input or a weight scale tiny?).")
    return q.to(torch.int32)

# ---------------------------------------------------------------- the integer layer


def im2col(q_x: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation, groups: int,
           pad_code: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, C, H, W) codes -> patches (N, L, G, K), L = OH OW, K = kh kw C/G in (kh, kw, c) order.
    Padding is the code of 0.0 (Z_x): a padded pixel adds q_w (Z_x - Z_x) = 0."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    x = nn.functional.pad(q_x, (pw, pw, ph, ph), value=pad_code)
    x = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]
    n, c, oh, ow = x.shape[:4]                                              # (N, C, OH, OW, kh, kw)
    x = x.reshape(n, groups, c // groups, oh, ow, kh, kw).permute(0, 3, 4, 1, 5, 6, 2)
    return x.reshape(n, oh * ow, groups, kh * kw * (c // groups)), (oh, ow)


def dot(cols: torch.Tensor, w: torch.Tensor, pair_saturation: bool = False) -> torch.Tensor:
    """Σ_k q_x,k q_w,k of raw codes: cols (N, L, G, K) x w (G, O_g, K) -> (N, L, G, O_g), int64.
    ``pair_saturation``: products summed in adjacent pairs into int16, saturating (vpmaddubsw)."""
    exact = torch.einsum("nlgk,gok->nlgo", cols, w)
    if not pair_saturation:
        return exact
    if cols.shape[-1] % 2:  # an odd K is padded with one zero product, as the kernels pad K
        cols, w = nn.functional.pad(cols, (0, 1)), nn.functional.pad(w, (0, 1))
    # A pair q_x,a q_w,a + q_x,b q_w,b with q_x in [0, 255] can leave int16 only if its two weights
    # share a sign and 255 (|q_w,a| + |q_w,b|) > 32767: only those pairs are computed and clamped.
    wa, wb = w[..., 0::2], w[..., 1::2]                                             # (G, O_g, K/2)
    g, o, j = torch.nonzero((wa * wb > 0) & (255 * (wa.abs() + wb.abs()) > INT16_MAX), as_tuple=True)
    out = exact.flatten(2)                                                          # (N, L, G O_g)
    for part in torch.split(torch.arange(len(g)), 256):
        gp, op, jp = g[part], o[part], j[part]
        p = cols[:, :, gp, 2 * jp] * wa[gp, op, jp] + cols[:, :, gp, 2 * jp + 1] * wb[gp, op, jp]   # (N, L, F)
        out.index_add_(2, gp * w.shape[1] + op, p.clamp(-INT16_MAX - 1, INT16_MAX) - p)
    return out.view_as(exact)


@dataclass
class IntegerLayer:
    """A conv2d (weight (O, C/G, kh, kw)) or linear (weight (O, K)) layer in integers only."""
    weight: torch.Tensor       # int8 codes, Z_w = 0
    bias: torch.Tensor         # int32 (O,), at scale S_x S_w
    x_zero_point: int
    multiplier: torch.Tensor   # M_0, int64 (O,)
    shift: torch.Tensor        # n, int64 (O,)
    y_zero_point: int
    qmin: int = 0              # the output grid: [0, 255] for uint8, [-128, 127] for int8
    qmax: int = 255
    relu: bool = False
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def accumulate(self, q_x: torch.Tensor, pair_saturation: bool = False) -> torch.Tensor:
        """acc = b_q + Σ q_x q_w - Z_x Σ q_w (= b_q + Σ (q_x - Z_x) q_w), int64, shaped like
        the layer's output: (N, O, OH, OW) or (N, O)."""
        q_x, w = q_x.long(), self.weight.long()
        if pair_saturation and (q_x < 0).any():
            raise ValueError("pair_saturation models vpmaddubsw, whose first operand is u8: "
                             "the input codes must be uint8 (in [0, 255]).")
        if w.dim() == 2:                                          # linear: L = 1, G = 1
            cols, w, out_hw = q_x.reshape(q_x.shape[0], 1, 1, -1), w.unsqueeze(0), ()
        else:
            cols, out_hw = im2col(q_x, tuple(w.shape[2:]), self.stride, self.padding, self.dilation,
                                  self.groups, self.x_zero_point)
            w = w.reshape(self.groups, -1, *w.shape[1:]).permute(0, 1, 3, 4, 2).flatten(2)
        raw = dot(cols, w, pair_saturation).flatten(2)                             # (N, L, O)
        acc = raw - self.x_zero_point * w.sum(-1).flatten() + self.bias.long()
        if (acc < INT32_MIN).any() or (acc > INT32_MAX).any():
            raise OverflowError("An accumulator left the int32 range: K * 255 * 127 is too large.")
        return acc.transpose(1, 2).reshape(q_x.shape[0], -1, *out_hw)

    def __call__(self, q_x: torch.Tensor, pair_saturation: bool = False) -> torch.Tensor:
        """Input codes (N, C, H, W) or (N, K) -> output codes (N, O, OH, OW) or (N, O), int32."""
        return requantize(self.accumulate(q_x, pair_saturation), self.multiplier, self.shift,
                          self.y_zero_point, self.qmin, self.qmax, self.relu)


def pair(v) -> tuple[int, int]:
    return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def integer_layer(weight_codes: torch.Tensor, weight_scale, bias, x_scale: float, x_zero_point: int,
                  y_scale: float, y_zero_point: int, relu: bool = False, y_signed: bool = False,
                  stride=1, padding=0, dilation=1, groups: int = 1) -> IntegerLayer:
    """The integer layer from codes and scales: M_0, n and b_q computed here (the only floats).
    ``bias``: None, float (quantized at S_x S_w here) or int32 codes (taken as they are)."""
    w_scale = torch.as_tensor(weight_scale, dtype=torch.float64).reshape(-1).expand(weight_codes.shape[0])
    m0, n = fixed_point_multiplier(float(x_scale) * w_scale / float(y_scale))
    if bias is None:
        bias = torch.zeros(weight_codes.shape[0], dtype=torch.int32)
    elif bias.dtype.is_floating_point:
        bias = quantize_bias(bias, x_scale, w_scale)
    qmin, qmax = (-128, 127) if y_signed else (0, 255)
    return IntegerLayer(weight_codes.to(torch.int8), bias.to(torch.int32), int(x_zero_point), m0, n,
                        int(y_zero_point), qmin, qmax, relu, pair(stride), pair(padding), pair(dilation),
                        int(groups))

# ---------------------------------------------------------------- ONNX Runtime's QDQ graphs


def qdq_layer_params(onnx_path: str | Path) -> dict[str, dict]:
    """Per Conv / Gemm / MatMul of a QDQ model: its int8 weights, int32 bias, scales and zero
    points of input, weight and output (read from the DequantizeLinear / QuantizeLinear around
    it), conv attributes, and the names of the uint8 tensors before and after it."""
    require_onnx()
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    made_by = {o: node for node in graph.node for o in node.output}
    used_by = {}
    for node in graph.node:
        for i in node.input:
            used_by.setdefault(i, []).append(node)
    layers = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        dq_x, dq_w = made_by.get(node.input[0]), made_by.get(node.input[1])
        q_y = used_by.get(node.output[0], [None])
        if (len(q_y) != 1 or None in (dq_x, dq_w, q_y[0]) or q_y[0].op_type != "QuantizeLinear"
                or {dq_x.op_type, dq_w.op_type} != {"DequantizeLinear"}):
            continue  # a layer left in float
        q_y = q_y[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads = attrs.get("pads", [0, 0, 0, 0])
        if pads[:2] != pads[2:] or attrs.get("transA", 0) or (attrs.get("alpha", 1), attrs.get("beta", 1)) != (1, 1):
            raise ValueError(f"{node.name}: asymmetric pads, transA or alpha / beta != 1 are not supported.")
        w = init[dq_w.input[0]]
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0)):
            w = w.T.contiguous()                                      # (K, O) -> (O, K)
        if len(dq_w.input) > 2 and (init[dq_w.input[2]] != 0).any():
            raise ValueError(f"{node.name}: the weights have a nonzero zero point (not symmetric).")
        bias = init[made_by[node.input[2]].input[0]] if len(node.input) > 2 and node.input[2] else None
        name = dq_w.input[0].removesuffix("_quantized").removesuffix(".weight")
        layers[name] = dict(
            op=node.op_type, weight=w, weight_scale=init[dq_w.input[1]], bias=bias,
            x_scale=float(init[dq_x.input[1]]), x_zero_point=int(init[dq_x.input[2]]),
            y_scale=float(init[q_y.input[1]]), y_zero_point=int(init[q_y.input[2]]),
            x_signed=init[dq_x.input[2]].dtype == torch.int8, y_signed=init[q_y.input[2]].dtype == torch.int8,
            stride=tuple(attrs.get("strides", (1, 1))), padding=tuple(pads[:2]),
            dilation=tuple(attrs.get("dilations", (1, 1))), groups=int(attrs.get("group", 1)),
            input_name=dq_x.input[0], output_name=q_y.output[0])
    return layers


def from_qdq(p: dict) -> IntegerLayer:
    """The integer layer of one entry ``p`` of ``qdq_layer_params``."""
    return integer_layer(p["weight"], p["weight_scale"], p["bias"], p["x_scale"], p["x_zero_point"],
                         p["y_scale"], p["y_zero_point"], y_signed=p["y_signed"], stride=p["stride"],
                         padding=p["padding"], dilation=p["dilation"], groups=p["groups"])


def ort_cut(onnx_path: str | Path, input_name: str, output_name: str, x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime (one thread) on the graph cut from tensor ``input_name`` to ``output_name``,
    fed ``x`` (float32, or codes cast to the cut input's type): the output as a tensor."""
    import tempfile

    require_onnx()
    import onnx.utils
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        cut = str(Path(tmp) / "cut.onnx")
        onnx.utils.extract_model(str(onnx_path), cut, [input_name], [output_name])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(cut, options, providers=["CPUExecutionProvider"])
        dtype = {"tensor(uint8)": "uint8", "tensor(int8)": "int8"}.get(session.get_inputs()[0].type, "float32")
        out = session.run(None, {input_name: x.detach().cpu().numpy().astype(dtype)})[0]
    return torch.from_numpy(out.astype("float32" if out.dtype.kind == "f" else "int32"))


def ort_codes(onnx_path: str | Path, params: dict, q_x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's output codes of one layer of ``qdq_layer_params``: the cut from its uint8
    input to its uint8 output, which ORT fuses into one integer kernel (QLinearConv or QGemm)."""
    return ort_cut(onnx_path, params["input_name"], params["output_name"], q_x)
