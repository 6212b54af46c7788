"""Checkers for notebook 11 (a tiny language model): the Wanda mask, and a bits-per-weight plan."""
from __future__ import annotations

import functools
import math

import torch

from .. import llm_pruning
from ..quantization import awq, gptq, weight_only
from ..text import calibration_windows
from .common import call, expect, mapping, switched_off, tensor, whole

__all__ = ["wanda_cases", "wanda_mask", "BITS_PLAN_TARGET", "bits_plan_model", "bits_plan"]

# The design task: the fewest bits per weight (scales and zero points counted) whose perplexity
# stays within MAX_RATIO of the float model's, on validation windows the notebook's tables do
# not use (PLAN_WINDOWS windows from PLAN_START on).
BITS_PLAN_TARGET = {"max_ratio": 1.10, "max_bits": 3.6}
PLAN_START, PLAN_WINDOWS = 256, 128
METHODS = ("rtn", "gptq", "awq")


def wanda_cases(seed: int = 0):
    """Layers the student did not pick: inputs whose channels differ in size by a factor of 30
    (so |W| alone and |W| x ||X|| disagree), rows of 8 to 48 weights, sparsities 0.25 to 0.75."""
    g = torch.Generator().manual_seed(seed)
    for out, inp, rows, sparsity in [(6, 8, 50, 0.5), (4, 16, 30, 0.25), (8, 48, 64, 0.75)]:
        w = torch.randn(out, inp, generator=g)
        x = torch.randn(rows, inp, generator=g) * torch.rand(inp, generator=g).mul(30).add(0.1)
        yield w, x, sparsity


def wanda_mask(fn) -> str:
    """Check ``fn(w, x, sparsity) -> mask``: Wanda's 0/1 mask of w (out x in) for inputs x
    (rows x in), the ``sparsity`` fraction of each row's weights of smallest |W_ij| ||X_j|| zeroed."""
    hint = "write the score and the mask yourself: llm_pruning.wanda_scores and row_mask are off limits here"
    for i, (w, x, sparsity) in enumerate(wanda_cases(), 1):
        with switched_off(llm_pruning, ["wanda_scores", "row_mask"], hint):
            got = tensor(call(fn, "wanda_mask", w.clone(), x.clone(), sparsity), "the mask", shape=tuple(w.shape))
        expect(bool(((got == 0) | (got == 1)).all()), f"Case {i}: a mask holds only 0 and 1.")
        k = int(sparsity * w.shape[1])
        zeros = (got == 0).sum(1)
        expect(bool((zeros == k).all()), f"Case {i}: each row of {w.shape[1]} weights should lose exactly {k} "
                                         f"(sparsity {sparsity}), your rows lose {zeros.tolist()}: Wanda compares "
                                         "weights within one output row, not across the layer.")
        want = llm_pruning.row_mask(llm_pruning.wanda_scores(w, x), sparsity)
        if torch.equal(got.to(want.dtype), want):
            continue
        magnitude = llm_pruning.row_mask(w.abs(), sparsity)
        expect(not torch.equal(got.to(want.dtype), magnitude),
               f"Case {i}: that is magnitude pruning: weigh |W_ij| by the norm of input channel j over the rows of x.")
        squared = llm_pruning.row_mask(w.abs() * (x ** 2).sum(0), sparsity)
        expect(not torch.equal(got.to(want.dtype), squared),
               f"Case {i}: use the norm ||X_j||_2 (a square root), not its square: the ranking within a row changes.")
        expect(False, f"Case {i}: your mask keeps other weights than |W_ij| * ||X_j||_2 does (the norm over the "
                      "rows of x, one per input channel j).")
    return "Wanda's mask: right on three layers, exactly the asked share of every row zeroed"


@functools.cache
def corpus_and_model():
    from ..text import load_text
    from ..zoo import load_pretrained
    return load_text("shakespeare"), load_pretrained("char_gpt", "cpu")


def bits_plan_model(plan: dict):
    """The pretrained char_gpt with its block linears quantized as the plan says."""
    corpus, model = corpus_and_model()
    bits, g = plan["bits"], plan["group_size"]
    if plan["method"] == "rtn":
        return weight_only.quantize_weights(model, lambda w: weight_only.rtn_quantize(w, bits, g))
    if plan["method"] == "gptq":
        return gptq.gptq_model(model, calibration_windows(corpus), bits, g)
    return awq.awq_model(model, calibration_windows(corpus, batches=2), bits, g, grid=10)[0]


@functools.cache
def plan_reference_nats() -> float:
    from ..text import nats_per_char
    corpus, model = corpus_and_model()
    return nats_per_char(model, corpus, "val", PLAN_WINDOWS, start=PLAN_START)


def bits_plan(plan) -> str:
    """``plan``: {"method": "rtn" | "gptq" | "awq", "bits": 2 to 8, "group_size": a divisor of 192,
    the narrowest layer's inputs (8, 16, 32, 64, 96 or 192)}. At most ``BITS_PLAN_TARGET["max_bits"]`` bits per
    weight, perplexity at most ``max_ratio`` times the float model's, on held-out windows."""
    from ..text import nats_per_char
    plan = dict(mapping(plan, "plan", ["method", "bits", "group_size"],
                        example='{"method": "gptq", "bits": 4, "group_size": 64}'))
    expect(plan["method"] in METHODS, f'plan["method"] = {plan["method"]!r}: choose one of {METHODS}.')
    plan["bits"], plan["group_size"] = whole(plan["bits"], 'plan["bits"]'), whole(plan["group_size"], 'plan["group_size"]')
    expect(2 <= plan["bits"] <= 8, f'plan["bits"] = {plan["bits"]}: between 2 and 8.')
    expect(192 % plan["group_size"] == 0 and plan["group_size"] >= 8,
           f'plan["group_size"] = {plan["group_size"]}: it must divide 192, the narrowest layer\'s inputs '
           "(8, 16, 32, 64, 96 or 192).")
    bits = weight_only.bits_per_weight(plan["bits"], plan["group_size"])
    target, ratio_max = BITS_PLAN_TARGET["max_bits"], BITS_PLAN_TARGET["max_ratio"]
    expect(bits <= target, f"{bits:.3f} bits per weight (b + (16 + b) / g): at most {target} was asked. "
                           "Fewer bits, or larger groups.")
    corpus, _ = corpus_and_model()
    ratio = math.exp(nats_per_char(bits_plan_model(plan), corpus, "val", PLAN_WINDOWS, start=PLAN_START)
                     - plan_reference_nats())
    expect(ratio <= ratio_max, f"{bits:.3f} bits per weight, but the perplexity is {ratio:.3f}x the float model's, "
                               f"more than {ratio_max:g}x: a method that corrects its rounding errors "
                               "(sections 3 and 4), or smaller groups.")
    return f"{bits:.3f} bits per weight, perplexity {ratio:.3f}x the float model's (at most {ratio_max:g}x allowed)"
