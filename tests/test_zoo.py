import shutil

import pytest
import torch

from compresslab import zoo
from compresslab.data import dataset_label, load_dataset
from compresslab.models import DATASET_OF, MODELS
from compresslab.train import evaluate


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_checksum_and_accuracy(name):
    """Each committed checkpoint verifies and reaches its accuracy target on the data it was
    measured on (the manifest says which copy; the MNIST test set is the same everywhere)."""
    model = zoo.load_pretrained(name, "cpu")
    acc = evaluate(model, load_dataset(DATASET_OF[name]).loader("test", 1000))["accuracy"]
    entry = zoo.read_manifest()[name]
    if dataset_label(DATASET_OF[name]) == entry["dataset_label"]:
        assert acc >= zoo.TARGETS[name], f"{name}: {acc:.2f}% < target {zoo.TARGETS[name]}%"
        assert abs(entry["test_accuracy"] - acc) < 0.05, "the manifest must record what was measured"
    else:  # another copy of the dataset (e.g. the original CIFAR-10): close, not equal
        assert acc >= zoo.TARGETS[name] - 3, f"{name}: {acc:.2f}% on {dataset_label(DATASET_OF[name])}"


def test_tampered_checkpoint_is_refused(tmp_path):
    shutil.copytree(zoo.CHECKPOINT_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "lenet300.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(zoo.ChecksumError, match="corrupt or was modified.*git checkout"):
        zoo.load_pretrained("lenet300", "cpu", tmp_path)


def test_checkpoints_are_plain_tensors():
    """weights_only=True loads them: no pickled code inside."""
    for name in MODELS:
        state = torch.load(zoo.CHECKPOINT_DIR / f"{name}.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_missing_entry_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        zoo.load_pretrained("lenet5", "cpu", tmp_path)
    with pytest.raises(ValueError, match="Unknown model"):
        zoo.load_pretrained("vgg16", "cpu")


def test_retrain_refuses_to_overwrite(tmp_path):
    (tmp_path / "lenet5.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--force"):
        zoo.retrain(["lenet5"], tmp_path)
    assert (tmp_path / "lenet5.pt").read_bytes() == b"x"


def test_cli_rejects_unknown_model(capsys):
    from compresslab.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["checkpoints", "retrain", "alexnet"])
    assert e.value.code == 2
    assert "unknown model" in capsys.readouterr().err
