"""Deep Compression (Han, Mao & Dally 2016): prune, share weights, code. The whole pipeline.

1. **prune** (``pruning``): each layer keeps its largest weights, in ``rounds`` rounds that each
   remove the same share of the survivors, retraining the survivors after each round;
2. **share** (``quantization``): k-means clusters each layer's survivors into 2^b values
   (zeros stay zero); the centroids are then fine-tuned (each gets the sum of its weights'
   gradients);
3. **code** (``coding``): positions as relative indices, then Huffman coding of the gaps and of
   the codebook indices.

``storage_table`` counts the stored bytes of every stage, per layer: that is how the paper's
Tables 1-3 are built. ``HAN`` holds the paper's per-layer settings for the two LeNets.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from . import pruning
from . import quantization as Q
from .coding import huffman_bits, relative_indices
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
                  bias_bits: int = BIAS_BITS) -> dict:
    """Bytes of one layer at each Deep Compression stage.

    ``weight`` is the pruned (zeros = removed) and weight-shared layer: at most 2^bits distinct
    nonzero values. Sizes in bytes, biases included (32 bits each in the dense and pruned
    stages, ``bias_bits`` in the shared ones):

    * dense:     32 bits per weight;
    * pruned:    per entry a 32-bit value and an ``index_bits`` gap (fillers included);
    * quantized: per entry a ``bits`` codebook index (fillers have none) and a gap, plus the
                 codebook of 32-bit values;
    * huffman:   both streams Huffman-coded, code tables counted, plus the codebook.
    """
    bits = Q.check_bits(bits, minimum=1)
    w = weight.detach().cpu().flatten()
    n_bias = 0 if bias is None else bias.numel()
    bias_bytes = bias_bits / 8 * n_bias  # shared stages; the dense and pruned ones keep float32
    gaps = relative_indices(w != 0, index_bits)
    values = w[w != 0]
    codebook = torch.unique(values)
    if len(codebook) > 2 ** bits:
        raise ValueError(f"The layer has {len(codebook)} distinct nonzero weights, more than a "
                         f"{bits}-bit codebook holds ({2 ** bits}): share weights first (k-means).")
    idx = torch.searchsorted(codebook, values).tolist()  # each weight's codebook entry
    n, nnz = len(gaps), len(values)
    coded_bits = (huffman_bits(gaps.tolist()) if n else 0) + (huffman_bits(idx) if idx else 0)  # none: an all-zero layer
    return {
        "weights": w.numel(), "nonzero": nnz, "fillers": n - nnz,
        "dense": 4 * (w.numel() + n_bias),
        "pruned": (n * index_bits + nnz * 32) / 8 + 4 * n_bias,
        "quantized": (n * index_bits + nnz * bits + 32 * len(codebook)) / 8 + bias_bytes,
        "huffman": (coded_bits + 32 * len(codebook)) / 8 + bias_bytes,
    }


def storage_table(model: nn.Module, bits: dict, index_bits: dict | int = INDEX_BITS) -> pd.DataFrame:
    """``layer_storage`` for every layer named in ``bits`` (conv / linear), one row each, and
    a total row; the compression ratio of each stage is dense bytes / that stage's bytes."""
    modules = dict(model.named_modules())
    if isinstance(index_bits, int):
        index_bits = dict.fromkeys(bits, index_bits)
    rows = {}
    for name, b in bits.items():
        m = modules[name]
        rows[name] = layer_storage(m.weight, m.bias, b, index_bits[name])
        rows[name].update(bits=b, index_bits=index_bits[name])
    table = pd.DataFrame(rows).T
    total = table[["weights", "nonzero", "fillers", "dense", "pruned", "quantized", "huffman"]].sum()
    table.loc["total"] = total
    table["kept %"] = 100 * table["nonzero"] / table["weights"]
    for stage in ("pruned", "quantized", "huffman"):
        table[f"{stage} x"] = table["dense"] / table[stage]
    return table
