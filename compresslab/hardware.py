"""What the CPU can do, because it changes the numbers: which int8 and bf16 kernels run.

Speed-ups measured on one CPU are not laws for another. Three instruction-set features decide
most of what this workbook measures:

* **AVX2** (every x86 CPU since about 2013): int8 dot products through ``vpmaddubsw``, which adds
  pairs of u8 x s8 products into a *16-bit* sum that saturates at 32767.
* **VNNI** (AVX512-VNNI or AVX-VNNI; Intel since Cascade Lake / Alder Lake, AMD since Zen 4):
  ``vpdpbusd`` multiplies and accumulates u8 x s8 straight into 32-bit sums: no saturation, and
  faster.
* **AMX** (Intel Xeon since Sapphire Rapids): tile matrix units for int8 and bf16; with AVX512-BF16
  they make bf16 autocast fast on a CPU (``train.bf16_is_fast``).

On ARM (Apple M-series, Graviton) NEON's dot-product instructions accumulate in 32 bits too.
"""
from __future__ import annotations

import platform
import re
import subprocess
from functools import lru_cache

FEATURES = {  # the names Linux prints in /proc/cpuinfo, and what we call them
    "avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX", "asimd": "NEON", "asimddp": "NEON-dotprod",
}


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 7B13' or 'Apple M2'."""
    try:
        text = open("/proc/cpuinfo").read()
        m = re.search(r"^(model name|Hardware|Processor)\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(2).strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=None)
def isa_features() -> tuple[str, ...]:
    """The features of ``FEATURES`` this CPU has, e.g. ('AVX2', 'AVX-512', 'AVX512-VNNI')."""
    flags: set[str] = set()
    try:
        m = re.search(r"^(flags|Features)\s*:\s*(.+)$", open("/proc/cpuinfo").read(), re.M)
        flags = set(m.group(2).split()) if m else set()
    except OSError:
        pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        flags |= {"asimd", "asimddp"}  # every Apple M-series core has NEON with dot products
    return tuple(name for flag, name in FEATURES.items() if flag in flags)


def has_int8_dot32() -> bool:
    """Do this CPU's int8 kernels accumulate in 32 bits (VNNI, AMX, ARM), so no 16-bit saturation?"""
    features = set(isa_features())
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    return bool(features & {"AVX512-VNNI", "AVX-VNNI", "AMX"})


def summary() -> str:
    """One line for a notebook's setup cell or the doctor: CPU, features, int8 and bf16 paths."""
    from .train import bf16_is_fast  # torch is imported only when asked
    import torch

    int8 = ("32-bit int8 accumulation (VNNI/AMX/ARM)" if has_int8_dot32()
            else "16-bit int8 pair sums (AVX2 without VNNI: ONNX Runtime int8 uses 7-bit weights here)")
    bf16 = "bf16 autocast on" if bf16_is_fast(torch.device("cpu")) else "bf16 autocast off (float32)"
    return f"CPU: {cpu_model()} [{' '.join(isa_features()) or 'no listed features'}]; {int8}; {bf16}"
