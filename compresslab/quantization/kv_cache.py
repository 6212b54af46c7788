"""The KV cache: what a decoder keeps per token, and what int8 does to it.

To produce token t, attention needs the keys and values of tokens 0..t-1 in every block.
A decoder computes them once and keeps them: per token of context that is

    2 (k and v) x blocks x heads x head_dim x bytes per number,

which for a large model and a long context outgrows the weights (LLaMA-2-7B: 2 x 32 x 4096 x 2
bytes = 0.5 MB a token in fp16, 2 GB for 4,096 tokens). Stored in int8 it takes half of fp16's
bytes (a quarter of fp32's), plus one scale per token and head.

``quantize_kv`` simulates an int8 cache: every key and value vector of every head is rounded to
int8 with its own absmax scale (symmetric, per token and head, as KIVI and vLLM's fp8 cache
store them, here with 8 bits), exactly where a cache would store it: at ``qkv``'s output.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def kv_bytes_per_token(model: nn.Module, bits: int = 32) -> float:
    """2 x blocks x heads x head_dim x bits / 8 (the per-token scales of a low-bit cache not counted)."""
    return sum(2 * b.attn.heads * b.attn.head_dim for b in model.blocks) * bits / 8


def round_per_vector(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric rounding of each vector along the last dimension with its own absmax scale."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / qmax
    return (x / scale).round().clamp(-qmax, qmax) * scale


def quantize_kv(model: nn.Module, bits: int = 8) -> nn.Module:
    """A copy whose keys and values pass through ``bits``-bit integers (per token and head); the
    queries stay in float, as a cache holds only k and v."""
    model = copy.deepcopy(model).eval()
    for block in model.blocks:
        attn = block.attn

        def hook(module, args, out, attn=attn):                          # out: (B, T, 3 * H * d)
            q, kv = out.split([attn.heads * attn.head_dim, 2 * attn.heads * attn.head_dim], dim=-1)
            kv = round_per_vector(kv.unflatten(-1, (2, attn.heads, attn.head_dim)), bits).flatten(-3)
            return torch.cat([q, kv], dim=-1)
        attn.qkv.register_forward_hook(hook)
    return model
