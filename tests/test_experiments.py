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
