"""The workbook's headline results, recomputed from the committed checkpoints, as one table.

    python -m compresslab report            # print the Markdown table
    python -m compresslab report --readme   # and write it into README.md between its markers

Every number is measured when the command runs: test accuracy on the full test set, the stored
size (fp32 parameters; Deep Compression's coded bytes; the int8 ONNX file), FLOPs per image,
and CPU latency at batch 256 (``metrics.speed_table``, best of a few rounds). Everything but the
latency is deterministic, and a test checks that README.md shows what this module computes.

The language model gets a table of its own (``language_results``): perplexity on the first 256
validation windows (32,768 characters) and the stored size, for fp32, weight-only int4 (RTN and
GPTQ, simulated) and the real int4 model in ONNX Runtime.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
import torch

from . import deep_compression as dc
from . import deploy, metrics, zoo
from .data import EVAL_BATCH, ROOT, dataset_label, load_dataset
from .train import evaluate

README = ROOT / "README.md"
START, END = "<!-- report:start -->", "<!-- report:end -->"
LM_START, LM_END = "<!-- report-lm:start -->", "<!-- report-lm:end -->"
LM_WINDOWS = 256
LATENCY = "latency b256 (ms)"
SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

# The fp32 checkpoint each row's compression ratio is measured against (default: its own).
BASE = {"lenet300_dc": "lenet300", "lenet5_dc": "lenet5", "mlp800": "mlp1200", "mlp800_kd": "mlp1200",
        "cifar_cnn_pruned": "cifar_cnn", "cifar_cnn_tucker": "cifar_cnn", "cifar_cnn_pruned_kd": "cifar_cnn"}
# technique, checkpoint, how it is stored, the paper's figure
ROWS = [
    ("baseline", "lenet300", "fp32", "error 1.64%, 1070 KB (Han et al. 2015)"),
    ("Deep Compression: prune + k-means 6 bit + Huffman", "lenet300_dc", "deep compression",
     "27 KB, 40x, error 1.58% (Han et al. 2016)"),
    ("the same, bytes counted as the paper stores them", "lenet300_dc", "deep compression, paper's count", ""),
    ("baseline", "lenet5", "fp32", "error 0.80%, 1720 KB (Han et al. 2015)"),
    ("Deep Compression: prune + k-means 8/5 bit + Huffman", "lenet5_dc", "deep compression",
     "44 KB, 39x, error 0.74% (Han et al. 2016)"),
    ("the same, bytes counted as the paper stores them", "lenet5_dc", "deep compression, paper's count", ""),
    ("distillation teacher (dropout, jitter)", "mlp1200", "fp32", "67 errors (Hinton et al. 2015)"),
    ("student alone", "mlp800", "fp32", "146 errors"),
    ("student distilled at T = 20", "mlp800_kd", "fp32", "74 errors"),
    ("baseline", "cifar_cnn", "fp32", ""),
    ("structured: L1 filters 30%, fine-tuned", "cifar_cnn_pruned", "fp32",
     "VGG-16: 34% fewer FLOPs, no loss (Li et al. 2017)"),
    ("low rank: Tucker-2 at half ranks, fine-tuned", "cifar_cnn_tucker", "fp32", ""),
    ("int8 (ONNX Runtime, static)", "cifar_cnn", "int8", ""),
    ("L1 filters 40% + distillation + int8", "cifar_cnn_pruned_kd", "int8", ""),
    ("vision transformer (6 blocks, 64 tokens)", "vit", "fp32", ""),
    ("the same ViT, distilled from cifar_cnn (DeiT's hard labels)", "vit_distilled", "fp32",
     "DeiT-S, ImageNet: 79.8% -> 81.2% (Touvron et al. 2021)"),
    ("ViT int8 (ONNX Runtime: matmuls in int8, 7-bit weights)", "vit", "int8", ""),
]


def stored_bytes(model, name: str, storage: str, workdir: Path, calibration) -> tuple[float, torch.nn.Module]:
    """(bytes as stored, the model to time: an ONNX Runtime session for int8)."""
    if storage == "fp32":
        return 4.0 * metrics.count_parameters(model), model
    if storage.startswith("deep compression"):
        # ours: fillers as a free gap symbol, float16 biases; the paper's: filler zeros with a
        # codebook index, float32 biases, full 2^b codebooks (deep_compression.layer_storage)
        convention = "paper" if storage.endswith("paper's count") else "ours"
        bits = dc.HAN[name.removesuffix("_dc")]["bits"]
        return float(dc.storage_table(model, bits, convention=convention).loc["total", "huffman"]), model
    if zoo.architecture(name) == "vit":
        # Softmax, LayerNorm and GELU stay in float. 7-bit weights on every CPU: their products
        # never saturate ORT's AVX2 kernel, so the row is the same with and without VNNI.
        fp32 = deploy.export_onnx(model, workdir / f"{name}.onnx", SHAPE[zoo.dataset_of(name)], check_int8=False)
        int8 = deploy.quantize_onnx_int8(fp32, workdir / f"{name}_int8.onnx", calibration, batches=2,
                                         reduce_range=True, op_types=["MatMul", "Gemm", "Conv"])
    else:
        fp32 = deploy.export_onnx(model, workdir / f"{name}.onnx", SHAPE[zoo.dataset_of(name)])
        int8 = deploy.quantize_onnx_int8(fp32, workdir / f"{name}_int8.onnx", calibration, batches=2)
    return float(int8.stat().st_size), deploy.OnnxModel(int8)


def results(latency: bool = True, rounds: int = 2) -> pd.DataFrame:
    """One row per entry of ``ROWS``; the compression ratio is fp32 bytes of the row's baseline
    (``BASE``: the uncompressed model, or the teacher for the students) / the row's bytes."""
    rows, timed = [], {}
    datasets = {name: load_dataset(name) for name in SHAPE}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (technique, name, storage, paper) in enumerate(ROWS):
            ds_name = zoo.dataset_of(name)
            ds = datasets[ds_name]
            model = zoo.load_pretrained(name, "cpu")
            size, runnable = stored_bytes(model, name, storage, Path(tmp), ds.loader("train", 128, subset=256))
            acc = evaluate(runnable, ds.loader("test", EVAL_BATCH))["accuracy"]
            rows.append({"technique": technique, "checkpoint": f"`{name}`", "dataset": dataset_label(ds_name),
                         "test accuracy": acc, "size KB": size / metrics.KB,
                         "MFLOPs": metrics.flops(model, SHAPE[ds_name]) / 1e6, "paper": paper, "_data": ds_name})
            timed[i] = (runnable, ds_name)
            rows[-1]["_base_kb"] = 4 * metrics.count_parameters(zoo.load_pretrained(BASE.get(name, name), "cpu")) / metrics.KB
        table = pd.DataFrame(rows)
        table["compression"] = table.pop("_base_kb") / table["size KB"]
        if latency:
            for ds_name in ("mnist", "cifar10"):
                idx = [i for i, (_, d) in timed.items() if d == ds_name]
                t = metrics.speed_table({str(i): timed[i][0] for i in idx}, SHAPE[ds_name], batch_sizes=(256,), rounds=rounds)
                for i, ms in zip(idx, t["best ms"]):
                    table.loc[i, LATENCY] = ms
    return table.drop(columns="_data")


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, numbers rounded as the README shows them."""
    cols = ["technique", "checkpoint", "dataset", "test accuracy", "size KB", "compression", "MFLOPs", LATENCY, "paper"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [r["technique"], r["checkpoint"], r["dataset"], f"{r['test accuracy']:.2f}%", f"{r['size KB']:,.1f}",
                 f"{r['compression']:.1f}x", f"{r['MFLOPs']:.2f}",
                 f"{r[LATENCY]:.1f}" if LATENCY in r and pd.notna(r[LATENCY]) else "n/a", r["paper"] or "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def language_results(windows: int = LM_WINDOWS) -> pd.DataFrame:
    """The char_gpt rows: validation perplexity on ``windows`` windows and bytes as stored
    (simulated weight-only int4: b + (16 + b) / g bits for each block-linear weight, the rest in
    fp32; ONNX Runtime int4: the file)."""
    import math

    from . import llm_deploy, text
    from .quantization import gptq, weight_only as wo
    corpus, model = text.load_text("shakespeare"), zoo.load_pretrained("char_gpt", "cpu")
    calib = text.calibration_windows(corpus, model.context)
    linear = sum(m.weight.numel() for m in wo.block_linears(model).values())
    params = metrics.count_parameters(model)
    simulated = lambda bits, g: (linear * wo.bits_per_weight(bits, g) / 8 + 4 * (params - linear))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = llm_deploy.export_lm(model, Path(tmp) / "gpt.onnx")
        int4 = deploy.quantize_onnx_int4(fp32, Path(tmp) / "gpt_int4.onnx", block_size=32)
        for technique, m, size in [
                ("character GPT (6 blocks, 128 characters of context)", model, 4.0 * params),
                ("weight-only int4, RTN, groups of 64 (simulated)",
                 wo.quantize_weights(model, lambda w: wo.rtn_quantize(w, 4, 64)), simulated(4, 64)),
                ("weight-only int4, GPTQ, groups of 64 (simulated)", gptq.gptq_model(model, calib, 4, 64), simulated(4, 64)),
                ("weight-only int3, GPTQ, groups of 64 (simulated)", gptq.gptq_model(model, calib, 3, 64), simulated(3, 64)),
                ("int4 in ONNX Runtime (MatMulNBits, blocks of 32)", llm_deploy.OnnxLM(int4, model.context),
                 float(int4.stat().st_size))]:
            ppl = math.exp(text.nats_per_char(m, corpus, "val", windows))
            rows.append({"technique": technique, "checkpoint": "`char_gpt`", "val perplexity": ppl,
                         "size KB": size / metrics.KB, "compression": 4.0 * params / size})
    return pd.DataFrame(rows)


def language_markdown(table: pd.DataFrame) -> str:
    cols = ["technique", "checkpoint", f"val perplexity ({LM_WINDOWS * 128:,} characters)", "size KB", "compression"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append(f"| {r['technique']} | {r['checkpoint']} | {r['val perplexity']:.3f} | {r['size KB']:,.1f} | "
                     f"{r['compression']:.1f}x |")
    return "\n".join(lines)


def readme_table(text: str | None = None, start: str = START, end: str = END) -> str:
    text = README.read_text() if text is None else text
    m = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), text, re.S)
    if not m:
        raise ValueError(f"README.md has no {start} ... {end} block for the results table.")
    return m.group(1)


def write_readme(table_md: str, start: str = START, end: str = END) -> None:
    text = README.read_text()
    readme_table(text, start, end)  # the markers must be there
    README.write_text(re.sub(re.escape(start) + r"\n.*?\n" + re.escape(end),
                             lambda _: f"{start}\n{table_md}\n{end}", text, flags=re.S))


def without_column(table_md: str, column: str = LATENCY) -> str:
    """The Markdown table minus one column (the latency, which moves from run to run)."""
    lines = table_md.strip().split("\n")
    k = [c.strip() for c in lines[0].strip("|").split("|")].index(column)
    out = []
    for line in lines:
        cells = line.strip().strip("|").split("|")
        out.append("|" + "|".join(c for j, c in enumerate(cells) if j != k) + "|")
    return "\n".join(out)
