"""Deep Compression (Han, Mao & Dally 2016): prune, share weights, code. The whole pipeline.

1. **prune** (``pruning``): each layer keeps its largest weights, in ``rounds`` rounds that each
   remove the same share of the survivors, retraining the survivors after each round;
2. **share** (``quantization``): k-means clusters each layer's survivors into 2^b values
   (zeros stay zero); the centroids are then fine-tuned (each gets the sum of its weights'
   gradients);
3. **code** (``coding``): positions as relative indices, then Huffman coding of the gaps and of
   the codebook indices.

``storage_table`` counts the stored bytes of every stage, per layer: that is how the paper's
Tables 1-3 are built, under our conventions or the paper's (``convention="paper"``: fillers
stored as zero weights, float32 biases). ``HAN`` holds the paper's per-layer settings for the
two LeNets.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from . import checks, pruning
from . import quantization as Q
from .coding import huffman_bits, positions_from_gaps, relative_indices
from .train import fine_tune

# Han et al. (2016), Tables 2-3: fraction of each layer's weights removed, bits of the shared
# weights; 5-bit relative indices everywhere.
HAN = {
    "lenet300": dict(amounts={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, bits={"fc1": 6, "fc2": 6, "fc3": 6}),
    "lenet5": dict(amounts={"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
                   bits={"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}),
}
INDEX_BITS = 5
BIAS_BITS = 16  # a few hundred biases per layer: float16 loses nothing measurable and halves them
# The authors' released format (github.com/songhan/Deep-Compression-AlexNet, decode.py) reads
# each layer's biases as float32; 4 bytes per weight and bias also give Table 1's 1070 KB for
# LeNet-300-100 (1,066,440 bytes; the weights alone would be 1,064,800).
PAPER_BIAS_BITS = 32
CONVENTIONS = ("ours", "paper")


def prune_and_retrain(model: nn.Module, train_loader, amounts: dict, rounds: int = 3, epochs: int = 2,
                      lr: float = 0.01, weight_decay: float = 0.0, **fit_kwargs) -> nn.Module:
    """Stage 1, in place: round r prunes each layer to 1 - (1 - a)^(r / rounds) and retrains.
    The masks are folded in at the end (plain tensors, the zeros stay)."""
    for r in range(1, rounds + 1):
        pruning.prune_per_layer(model, {n: 1 - (1 - a) ** (r / rounds) for n, a in amounts.items()})
        fine_tune(model, train_loader, epochs, lr=lr, weight_decay=weight_decay, progress=False, **fit_kwargs)
    return pruning.make_permanent(model)


def share_weights(model: nn.Module, train_loader, bits: dict, epochs: int = 1, lr: float = 1e-4,
                  **fit_kwargs) -> nn.Module:
    """Stage 2, in place: k-means codebooks (zeros kept), centroids fine-tuned with Adam, then
    folded back into plain weights with at most 2^b distinct nonzero values per layer; the
    biases are rounded to float16, as they are stored (BIAS_BITS).
    (SGD on the summed gradients of thousands of weights per centroid needs a tiny learning
    rate; Adam's per-parameter scale does not care.)"""
    Q.quantize_model(model, bits, scheme="kmeans", keep_zeros=True)
    if epochs:
        fine_tune(model, train_loader, epochs, lr=lr, optimizer="adam", weight_decay=0.0, progress=False, **fit_kwargs)
    Q.remove_quantization(model)
    with torch.no_grad():
        for name in bits:
            bias = dict(model.named_modules())[name].bias
            if bias is not None:
                bias.copy_(bias.half().float())
    return model

# ---------------------------------------------------------------- 2. what it costs to store


def layer_storage(weight: torch.Tensor, bias: torch.Tensor | None, bits: int, index_bits: int,
                  bias_bits: int | None = None, convention: str = "ours") -> dict:
    """Bytes of one layer at each Deep Compression stage.

    ``weight`` is the pruned (zeros = removed) and weight-shared layer: at most 2^bits distinct
    nonzero values. Sizes in bytes, biases included (32 bits each in the dense and pruned
    stages, ``bias_bits`` in the shared ones). An *entry* is a stored position: a surviving
    weight or a filler (``coding.relative_indices``).

    * dense:     32 bits per weight;
    * pruned:    per entry an ``index_bits`` gap and a 32-bit value;
    * quantized: per entry a gap and a codebook index, plus the codebook of 32-bit values;
    * huffman:   both streams Huffman-coded, code tables counted, plus the codebook.

    ``convention="ours"``: a filler is the gap symbol 0 and stores no value; the codebook holds
    the values used, indexed in ``bits`` bits; biases in ``bias_bits`` (default ``BIAS_BITS``)
    once shared.
    ``convention="paper"`` (Han et al. 2016): a filler is a zero weight 2^index_bits positions
    on (Section 2), stored like a survivor, with a gap and a value (32 bits when pruned, a
    codebook index once shared); the codebook has k = 2^bits float32 values, as the paper's
    Eq. 1 counts them, the fillers' zero among them (as in the authors' released decoder), or
    k + 1 values and ``bits`` + 1-bit indices when the survivors already use all k; biases
    float32 in every stage (``PAPER_BIAS_BITS``). What the paper leaves unsaid is counted alike
    in both: the Huffman tables, one 8-bit code length per symbol.
    """
    bits = Q.check_bits(bits, minimum=1)
    checks.one_of(convention, "convention", CONVENTIONS)
    paper = convention == "paper"
    if bias_bits is None:
        bias_bits = PAPER_BIAS_BITS if paper else BIAS_BITS
    w = weight.detach().cpu().flatten()
    n_bias = 0 if bias is None else bias.numel()
    bias_bytes = bias_bits / 8 * n_bias  # shared stages; the dense and pruned ones keep float32
    gaps = relative_indices(w != 0, index_bits, "zero" if paper else "symbol")
    values = w[positions_from_gaps(gaps, index_bits, "zero")] if paper else w[w != 0]  # paper: fillers' zeros too
    nnz, shared = int((w != 0).sum()), len(torch.unique(w[w != 0]))
    if shared > 2 ** bits:
        raise ValueError(f"The layer has {shared} distinct nonzero weights, more than a "
                         f"{bits}-bit codebook holds ({2 ** bits}): share weights first (k-means).")
    codebook = torch.unique(values)
    k = max(2 ** bits, len(codebook)) if paper and len(codebook) else len(codebook)  # codebook entries stored
    code_bits = max(bits, math.ceil(math.log2(k))) if k else bits
    idx = torch.searchsorted(codebook, values).tolist()  # each stored value's codebook entry
    n = len(gaps)
    coded_bits = (huffman_bits(gaps.tolist()) if n else 0) + (huffman_bits(idx) if idx else 0)  # none: an all-zero layer
    return {
        "weights": w.numel(), "nonzero": nnz, "fillers": n - nnz, "codebook": k, "code bits": code_bits,
        "dense": 4 * (w.numel() + n_bias),
        "pruned": (n * index_bits + len(values) * 32) / 8 + 4 * n_bias,
        "quantized": (n * index_bits + len(values) * code_bits + 32 * k) / 8 + bias_bytes,
        "huffman": (coded_bits + 32 * k) / 8 + bias_bytes,
    }


def storage_table(model: nn.Module, bits: dict, index_bits: dict | int = INDEX_BITS,
                  convention: str = "ours") -> pd.DataFrame:
    """``layer_storage`` for every layer named in ``bits`` (conv / linear), one row each, and
    a total row; the compression ratio of each stage is dense bytes / that stage's bytes.
    ``convention``: 'ours' or 'paper' (Han et al.'s filler zeros and float32 biases)."""
    modules = dict(model.named_modules())
    if isinstance(index_bits, int):
        index_bits = dict.fromkeys(bits, index_bits)
    rows = {}
    for name, b in bits.items():
        m = modules[name]
        rows[name] = layer_storage(m.weight, m.bias, b, index_bits[name], convention=convention)
        rows[name].update(bits=b, index_bits=index_bits[name])
    table = pd.DataFrame(rows).T
    total = table[["weights", "nonzero", "fillers", "codebook", "dense", "pruned", "quantized", "huffman"]].sum()
    table.loc["total"] = total
    table["kept %"] = 100 * table["nonzero"] / table["weights"]
    for stage in ("pruned", "quantized", "huffman"):
        table[f"{stage} x"] = table["dense"] / table[stage]
    return table
