import json

import pandas as pd
import pytest

from compresslab import experiments
from compresslab.__main__ import main


def test_the_committed_kd_results_match_the_settings_and_are_complete():
    runs, info = experiments.load_results("kd-cifar")
    cfg = experiments.KD_CIFAR
    assert info["dataset_label"].startswith("CIFAR-10")  # the notebook prints which copy
    expected = {(v, s, e) for v in experiments.KD_VARIANTS for s in cfg["seeds"] for e in range(1, cfg["epochs"] + 1)}
    assert set(zip(runs["variant"], runs["seed"], runs["epoch"])) == expected and len(runs) == len(expected)
    assert runs["test_acc"].between(10, 100).all()


def test_results_from_other_settings_are_refused(tmp_path, monkeypatch):
    path = experiments.results_path("kd-cifar", tmp_path)
    with pytest.raises(FileNotFoundError, match="experiments kd-cifar --force"):
        experiments.load_results("kd-cifar", tmp_path)
    pd.DataFrame({"variant": ["scratch"], "seed": [0], "epoch": [1], "test_acc": [50.0]}).to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps({"settings": {**experiments.KD_CIFAR, "epochs": 99}}))
    with pytest.raises(ValueError, match="other settings.*rerun"):
        experiments.load_results("kd-cifar", tmp_path)
    with pytest.raises(ValueError, match="Unknown experiment 'kd-imagenet'"):
        experiments.results_path("kd-imagenet")


def test_run_refuses_to_overwrite(tmp_path, capsys):
    experiments.results_path("kd-cifar", tmp_path).write_text("old")
    assert main(["experiments", "kd-cifar", "--out", str(tmp_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert experiments.results_path("kd-cifar", tmp_path).read_text() == "old"


def test_run_command_names_notebooks_and_rejects_unknown_ones(capsys):
    from compresslab import bench
    assert [p.name for p in bench.notebook_paths(["07"])] == ["07_distillation.ipynb"]
    assert len(bench.notebook_paths()) >= 9
    assert main(["run", "99_nothing"]) == 2
    assert "No notebook matches ['99_nothing']" in capsys.readouterr().err


def test_accuracy_se_adds_the_seeds_spread_to_the_test_sets_noise():
    from compresslab.metrics import binomial_se
    assert experiments.accuracy_se([90.0], 10_000) == pytest.approx(binomial_se(90.0, 10_000))
    assert experiments.accuracy_se([90.0, 90.0, 90.0], 10_000) == pytest.approx(binomial_se(90.0, 10_000))
    spread = experiments.accuracy_se([88.0, 90.0, 92.0], 10_000)  # sd 2, k 3: seeds' SE 1.15
    assert spread == pytest.approx((4 / 3 + binomial_se(90.0, 10_000) ** 2) ** 0.5)
    assert experiments.accuracy_se([88.0, 92.0], 100) > experiments.accuracy_se([88.0, 92.0], 10_000)
    with pytest.raises(ValueError):
        experiments.accuracy_se([], 100)


def test_ranking_calls_differences_inside_two_standard_errors_a_tie():
    d, se = experiments.gap([98.5, 98.6, 98.4], [98.4, 98.5, 98.3], 10_000)
    assert d == pytest.approx(0.1) and se > 0.17  # two binomial SEs of ~0.12 each
    assert "tie" in experiments.ranking("global", [98.5, 98.6, 98.4], "layer-wise", [98.4, 98.5, 98.3], 10_000)
    assert experiments.ranking("a", [90.0], "b", [95.0], 10_000).startswith("b ahead of a by 5.00 ±")
    assert experiments.ranking("a", [95.0, 95.2], "b", [90.0, 90.1], 10_000).startswith("a ahead of b by 5.05")
    # The same difference on 100 test images is noise.
    assert "tie" in experiments.ranking("a", [90.0], "b", [95.0], 100)


def test_paired_gap_cancels_what_both_sides_share():
    # Three seeds far apart, each one point better after: paired, the rise is clear...
    before, after = [20.0, 30.0, 40.0], [21.0, 31.2, 40.8]
    d, se = experiments.paired_gap(after, before)
    assert d == pytest.approx(1.0) and se == pytest.approx(0.2 / 3 ** 0.5)
    # ... unpaired, the seeds' spread hides it.
    assert "tie" in experiments.ranking("after", after, "before", before, 10_000)
    with pytest.raises(ValueError, match="two or more pairs"):
        experiments.paired_gap([1.0], [0.0])
    with pytest.raises(ValueError, match="same runs on both sides"):
        experiments.paired_gap([1.0, 2.0, 3.0], [0.0, 1.0])


def test_bench_avx2_without_qemu_says_how_to_get_it(monkeypatch):
    import shutil

    from compresslab import bench

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt install qemu-user"):
        bench.bench_avx2()


def test_the_emulated_script_imports_no_torch():
    """Under QEMU, importing torch takes minutes: the script that runs there uses numpy and ORT."""
    import ast

    from compresslab import bench

    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(bench.ORT_ONLY))
                if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"sys", "numpy", "onnxruntime"}
