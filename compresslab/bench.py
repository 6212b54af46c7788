"""Speed benchmarks that print their figures (timings are too noisy for unit tests).

    python -m compresslab bench epoch       # one MNIST epoch of LeNet-5, and the data pipeline's share
    python -m compresslab bench notebooks   # execute every notebook in a fresh kernel, time each
    python -m compresslab bench             # both
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .data import ROOT, load_dataset
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


def bench_notebooks(paths: list[Path] | None = None, timeout: int = 1800) -> list[tuple[str, str, float]]:
    """Execute notebooks top to bottom in a fresh kernel (the files are not modified)."""
    import nbformat
    from nbclient import NotebookClient

    paths = paths or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    rows = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            status = "ok"
        except Exception as e:  # report and go on: the instructor wants the whole table
            status = f"FAILED: {type(e).__name__}"
        seconds = time.perf_counter() - start
        rows.append((path.name, status, seconds))
        print(f"{path.name:45s} {status:10s} {seconds:7.1f} s", flush=True)
    print(f"{'total':45s} {'':10s} {sum(r[2] for r in rows):7.1f} s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m compresslab bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=["all", "epoch", "notebooks"], default="all")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.what in ("all", "epoch"):
        r = bench_epoch()
        print(f"LeNet-5, one MNIST epoch (60,000 images, batch 128): {r['epoch_s']:.1f} s "
              f"(goal: <= 10 s)")
        print(f"data pipeline alone: {r['data_s']:.2f} s = {r['data_share_%']:.1f}% of the "
              f"model's compute (goal: < 10%)")
    ok = True
    if args.what in ("all", "notebooks"):
        ok = all(status == "ok" for _, status, _ in bench_notebooks())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
