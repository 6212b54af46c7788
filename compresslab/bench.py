"""Speed benchmarks that print their figures (timings are too noisy for unit tests).

    python -m compresslab bench epoch       # one MNIST epoch of LeNet-5, and the data pipeline's share
    python -m compresslab bench structured  # the zoo's half-FLOPs CIFAR CNN against the dense one
    python -m compresslab bench int8        # the CIFAR CNN in int8 (ONNX Runtime) against fp32
    python -m compresslab bench tucker      # the Tucker-2 CIFAR CNN against the original
    python -m compresslab bench notebooks   # execute every notebook in a fresh kernel, time each
                                            # (= python -m compresslab run)
    python -m compresslab bench             # all of them
    python -m compresslab bench avx2        # not in "all": notebook 06a's int8 options on an emulated
                                            # AVX2-only CPU (needs QEMU; accuracy, not speed)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .data import EVAL_BATCH, load_dataset
from .exercises import notebook_paths
from .models import build_model
from .train import fit


def bench_epoch(batch_size: int = 128) -> dict[str, float]:
    """Seconds of one LeNet-5 training epoch on MNIST, and of producing its batches alone."""
    ds = load_dataset("mnist")
    loader = ds.loader("train", batch_size)
    start = time.perf_counter()
    for _ in loader:  # the data pipeline alone: shuffle, slice, normalize
        pass
    data_s = time.perf_counter() - start
    model = build_model("lenet5", seed=0)
    fit(model, ds.loader("train", batch_size, subset=5000), 1, progress=False)  # warm-up
    start = time.perf_counter()
    fit(model, loader, 1, progress=False)
    epoch_s = time.perf_counter() - start
    return {"epoch_s": epoch_s, "data_s": data_s, "data_share_%": 100 * data_s / (epoch_s - data_s)}


def bench_structured(rounds: int = 5) -> dict[int, dict[str, float]]:
    """Structured pruning's speed: ``cifar_cnn_pruned`` (30% of every conv's filters removed, then
    fine-tuned) against ``cifar_cnn``: accuracy, FLOPs, and CPU latency at batch 1, 16, 256."""
    from . import metrics, zoo
    from .train import evaluate

    models = {name: zoo.load_pretrained(name, "cpu") for name in ("cifar_cnn", "cifar_cnn_pruned")}
    test = load_dataset("cifar10").loader("test", EVAL_BATCH)
    acc = {name: evaluate(m, test)["accuracy"] for name, m in models.items()}
    speed = metrics.speed_table(models, (3, 32, 32), (1, 16, 256), rounds).set_index(["model", "batch"])
    fewer = 1 - speed.loc[("cifar_cnn_pruned", 1), "MFLOPs"] / speed.loc[("cifar_cnn", 1), "MFLOPs"]
    print(f"accuracy: cifar_cnn {acc['cifar_cnn']:.2f}%, cifar_cnn_pruned {acc['cifar_cnn_pruned']:.2f}% "
          f"({acc['cifar_cnn'] - acc['cifar_cnn_pruned']:.2f} points lost)")
    print(f"FLOPs: {fewer:.0%} fewer ({speed.loc[('cifar_cnn', 1), 'MFLOPs']:.1f}M -> "
          f"{speed.loc[('cifar_cnn_pruned', 1), 'MFLOPs']:.1f}M)")
    out = {}
    for b in (1, 16, 256):
        dense, pruned = speed.loc[("cifar_cnn", b)], speed.loc[("cifar_cnn_pruned", b)]
        out[b] = {"dense_ms": dense["best ms"], "pruned_ms": pruned["best ms"],
                  "speedup": pruned["speed-up x"], "ratio": pruned["speed-up / FLOP reduction"]}
        print(f"batch {b:3d}: {dense['best ms']:7.2f} ms -> {pruned['best ms']:7.2f} ms "
              f"(spread {pruned['spread ms']:.2f} ms over {rounds} rounds): {pruned['speed-up x']:.2f}x faster, "
              f"speed-up / FLOP reduction {pruned['speed-up / FLOP reduction']:.2f}")
    print(f"A/A noise band (cifar_cnn timed twice): 1 +/- {speed['noise +/-'].max():.2f}")
    return out


def bench_int8(rounds: int = 5) -> dict[str, float]:
    """int8's speed: the CIFAR CNN as a real int8 model (ONNX Runtime static
    quantization) against the same model in fp32 on ONNX Runtime and in PyTorch eager."""
    import tempfile

    from . import deploy, metrics, zoo
    from .train import evaluate

    ds = load_dataset("cifar10")
    model = zoo.load_pretrained("cifar_cnn", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = deploy.export_onnx(model, Path(tmp) / "fp32.onnx", (3, 32, 32))
        int8 = deploy.quantize_onnx_int8(fp32, Path(tmp) / "int8.onnx", ds.loader("train", 64, subset=512), batches=8)
        models = {"PyTorch eager fp32": model, "ORT fp32": deploy.OnnxModel(fp32), "ORT int8": deploy.OnnxModel(int8)}
        sizes = {"ORT fp32": fp32.stat().st_size, "ORT int8": int8.stat().st_size}
        test = ds.loader("test", EVAL_BATCH)
        acc = {name: evaluate(m, test)["accuracy"] for name, m in models.items()}
        speed = metrics.speed_table(models, (3, 32, 32), (1, 256), rounds).set_index(["model", "batch"])["best ms"]
    print(f"file: fp32 {sizes['ORT fp32'] / 1000:.0f} KB, int8 {sizes['ORT int8'] / 1000:.0f} KB "
          f"({sizes['ORT fp32'] / sizes['ORT int8']:.1f}x smaller)")
    print("accuracy: " + ", ".join(f"{n} {a:.2f}%" for n, a in acc.items()))
    for b in (1, 256):
        print(f"batch {b:3d}: " + ", ".join(f"{n} {speed[(n, b)]:.2f} ms" for n in models) +
              f"; int8 vs ORT fp32 {speed[('ORT fp32', b)] / speed[('ORT int8', b)]:.2f}x, "
              f"vs PyTorch eager fp32 {speed[('PyTorch eager fp32', b)] / speed[('ORT int8', b)]:.2f}x")
    return {"ratio_b256": speed[("ORT fp32", 256)] / speed[("ORT int8", 256)]}


def bench_tucker(rounds: int = 5) -> dict[int, float]:
    """Tucker-2's speed: ``cifar_cnn_tucker`` (Tucker-2 at half ranks, fine-tuned) against
    ``cifar_cnn``, both in PyTorch eager and in ONNX Runtime (BatchNorm folded, ReLU fused)."""
    import tempfile

    from . import deploy, metrics, zoo
    from .train import evaluate

    names = ("cifar_cnn", "cifar_cnn_tucker")
    eager = {name: zoo.load_pretrained(name, "cpu") for name in names}
    test = load_dataset("cifar10").loader("test", EVAL_BATCH)
    acc = {name: evaluate(m, test)["accuracy"] for name, m in eager.items()}
    with tempfile.TemporaryDirectory() as tmp:
        ort = {f"{n} (ORT)": deploy.OnnxModel(deploy.export_onnx(m, Path(tmp) / f"{n}.onnx", (3, 32, 32)))
               for n, m in eager.items()}
        speed = metrics.speed_table(eager | ort, (3, 32, 32), (1, 256), rounds).set_index(["model", "batch"])["best ms"]
    flops = [metrics.flops(eager[n], (3, 32, 32)) for n in names]
    print(f"accuracy: cifar_cnn {acc['cifar_cnn']:.2f}%, cifar_cnn_tucker {acc['cifar_cnn_tucker']:.2f}% "
          f"({acc['cifar_cnn'] - acc['cifar_cnn_tucker']:.2f} points lost)")
    print(f"FLOPs: {flops[0] / flops[1]:.2f}x fewer")
    out = {}
    for b in (1, 256):
        out[b] = speed[("cifar_cnn (ORT)", b)] / speed[("cifar_cnn_tucker (ORT)", b)]
        print(f"batch {b:3d}: ONNX Runtime {speed[('cifar_cnn (ORT)', b)]:.2f} -> {speed[('cifar_cnn_tucker (ORT)', b)]:.2f} ms, "
              f"{out[b]:.2f}x faster; PyTorch eager {speed[('cifar_cnn', b)]:.2f} -> {speed[('cifar_cnn_tucker', b)]:.2f} ms, "
              f"{speed[('cifar_cnn', b)] / speed[('cifar_cnn_tucker', b)]:.2f}x")
    return out


EMULATED_CPU = "Haswell"  # QEMU's model of an AVX2 CPU: AVX2 and FMA, no AVX-512, no VNNI

# Runs under the emulator: numpy and onnxruntime only (importing torch there would take minutes).
ORT_ONLY = """
import sys, numpy as np, onnxruntime as ort
probe, x, y, paths = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3]), sys.argv[4:]
s = ort.InferenceSession(probe, providers=["CPUExecutionProvider"])
a = np.full(s.get_inputs()[0].shape, 255, dtype=np.uint8)
print(int(s.run(None, {s.get_inputs()[0].name: a})[0].min()), flush=True)
for path in paths:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {name: x[i:i + 250]})[0].argmax(1) for i in range(0, len(x), 250)])
    print(100 * (pred == y).mean(), flush=True)
"""


def bench_avx2(images: int = 1000) -> dict[str, dict[str, float]]:
    """Notebook 06a's int8 options on an AVX2-only CPU, whatever CPU runs this: QEMU's user-mode
    emulator (``qemu-x86_64 -cpu Haswell``) reports an AVX2 CPU without VNNI to ONNX Runtime,
    which then picks its AVX2 kernels, whose u8 x s8 pair sums saturate in int16 as on real
    hardware. Quantized and exported natively; the same files run natively and emulated.
    Emulation is slow (about 6 minutes for 1,000 images through four models): accuracy only."""
    import shutil
    import subprocess
    import tempfile

    import numpy as np

    from . import deploy, zoo

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("bench avx2 needs QEMU's user-mode emulator qemu-x86_64 (x86-64 Linux; on Debian "
                         "or Ubuntu: `apt install qemu-user`).")
    ds = load_dataset("cifar10")
    model = zoo.load_pretrained("cifar_cnn", "cpu")
    calib = ds.loader("train", 128, subset=256)
    xs, ys = zip(*ds.loader("test", 500, subset=images))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", torch.cat(xs).numpy())
        np.save(tmp / "y.npy", torch.cat(ys).numpy())
        (tmp / "probe.onnx").write_bytes(deploy.saturation_probe())
        fp32 = deploy.export_onnx(model, tmp / "fp32.onnx", (3, 32, 32))
        options = {"ORT fp32": fp32}
        for name, kw in {"int8, s8 weights, 8-bit": dict(reduce_range=False),
                         "int8, s8 weights, 7-bit (reduce_range)": dict(reduce_range=True),
                         "int8, u8 weights (U8U8)": dict(reduce_range=False, weight_type="uint8")}.items():
            options[name] = deploy.quantize_onnx_int8(fp32, tmp / f"{len(options)}.onnx", calib, **kw)
        args = [sys.executable, "-c", ORT_ONLY, str(tmp / "probe.onnx"), str(tmp / "x.npy"), str(tmp / "y.npy"),
                *map(str, options.values())]
        results = {}
        for where, prefix in (("this CPU", []), (f"emulated {EMULATED_CPU} (AVX2)", [qemu, "-cpu", EMULATED_CPU])):
            out = subprocess.run(prefix + args, capture_output=True, text=True, check=True).stdout.split()
            print(f"{where}: the probe's int32 sum {int(out[0]):,} (exact {deploy.PROBE_K * 255 * 127:,}: "
                  f"{'saturated' if int(out[0]) != deploy.PROBE_K * 255 * 127 else 'no saturation'})")
            results[where] = dict(zip(options, map(float, out[1:])))
    for where, acc in results.items():
        print(f"{where}, {images:,} test images: " + ", ".join(
            f"{n} {a:.1f}%" + ("" if n == "ORT fp32" else f" ({a - acc['ORT fp32']:+.1f})") for n, a in acc.items()))
    return results

def bench_notebooks(paths: list[Path] | None = None, timeout: int = 1800,
                    progress: bool = True) -> list[tuple[str, str, float]]:
    """Execute notebooks top to bottom in a fresh kernel, as a student would (the files are
    not modified); a progress bar counts the cells; one line per notebook: status, seconds."""
    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    paths = paths or notebook_paths()
    rows = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        bar = tqdm(total=sum(c.cell_type == "code" for c in nb.cells), desc=path.stem, unit="cell",
                   disable=not progress, leave=False)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}},
                                on_cell_executed=lambda **kw: bar.update(1))
        start = time.perf_counter()
        try:
            client.execute()
            status = "ok"
        except Exception as e:  # report and go on: the instructor wants the whole table
            status = f"FAILED: {type(e).__name__}"
        bar.close()
        seconds = time.perf_counter() - start
        rows.append((path.name, status, seconds))
        print(f"{path.name:45s} {status:10s} {seconds:7.1f} s", flush=True)
    print(f"{'total':45s} {'':10s} {sum(r[2] for r in rows):7.1f} s")
    return rows


BENCHES = ["all", "epoch", "structured", "int8", "tucker", "notebooks", "avx2"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m compresslab bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=BENCHES, default="all")
    args = p.parse_args(argv)
    from .hardware import summary
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {summary()}")
    if args.what in ("all", "epoch"):
        r = bench_epoch()
        print(f"LeNet-5, one MNIST epoch (60,000 images, batch 128): {r['epoch_s']:.1f} s")
        print(f"data pipeline alone: {r['data_s']:.2f} s = {r['data_share_%']:.1f}% of the "
              f"model's compute")
    if args.what in ("all", "structured"):
        bench_structured()
    if args.what in ("all", "int8"):
        bench_int8()
    if args.what in ("all", "tucker"):
        bench_tucker()
    if args.what == "avx2":
        bench_avx2()
    ok = True
    if args.what in ("all", "notebooks"):
        ok = all(status == "ok" for _, status, _ in bench_notebooks())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
