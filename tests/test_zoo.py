import shutil

import pytest
import torch

from compresslab import zoo
from compresslab.data import dataset_label


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.RECIPES))
def test_checkpoint_checksum_and_score(name):
    """Each committed checkpoint verifies and reaches its target on the data it was measured on
    (the manifest says which copy; the MNIST test set and the committed corpus are the same
    everywhere): test accuracy at least the target, the language model's validation nats per
    character at most its ceiling."""
    model = zoo.load_pretrained(name, "cpu")
    value = zoo.score(name, model)
    entry = zoo.read_manifest()[name]
    if zoo.label_of(name) == entry["dataset_label"]:
        assert zoo.meets_target(name, value), f"{name}: {zoo.describe(name, value)}"
        tolerance = 0.05 if zoo.metric(name) == "test_accuracy" else 1e-3
        assert abs(entry[zoo.metric(name)] - value) < tolerance, "the manifest must record what was measured"
    else:  # another copy of the dataset (e.g. the original CIFAR-10): close, not equal
        assert value >= zoo.TARGETS[name] - 3, f"{name}: {value:.2f}% on {dataset_label(zoo.dataset_of(name))}"


def test_language_model_target_is_a_ceiling():
    assert zoo.metric("char_gpt") == "val_nats_per_char" and zoo.metric("vit") == "test_accuracy"
    assert zoo.meets_target("char_gpt", zoo.TARGETS["char_gpt"] - 0.01)
    assert not zoo.meets_target("char_gpt", zoo.TARGETS["char_gpt"] + 0.01)
    assert zoo.meets_target("lenet5", 99.5) and not zoo.meets_target("lenet5", 90.0)


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
    for name in zoo.RECIPES:
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


def test_pruned_checkpoint_is_physically_smaller():
    """cifar_cnn_pruned is rebuilt at the widths the manifest records: about half the FLOPs."""
    from compresslab.metrics import flops
    base, pruned = zoo.load_pretrained("cifar_cnn", "cpu"), zoo.load_pretrained("cifar_cnn_pruned", "cpu")
    assert zoo.read_manifest()["cifar_cnn_pruned"]["options"]["widths"] == [45, 45, 90, 90, 179, 179]
    assert 0.45 < flops(pruned, (3, 32, 32)) / flops(base, (3, 32, 32)) < 0.55


def test_float16_storage_rounds_weights_and_loads_into_float32(tmp_path):
    from compresslab.models import build_model
    model = build_model("lenet300", seed=0)
    state = zoo.stored_state(model, "float16")
    assert all(v.dtype == torch.float16 for v in state.values())
    assert zoo.stored_state(model, "float32") is None
    fresh = build_model("lenet300")
    fresh.load_state_dict(state)  # cast back into the float32 parameters
    assert fresh.fc1.weight.dtype == torch.float32
    torch.testing.assert_close(fresh.fc1.weight, model.fc1.weight.half().float())
    with pytest.raises(ValueError, match="Unknown store"):
        zoo.stored_state(model, "int8")


@pytest.mark.parametrize("prune_first", [False, True])
def test_model_options_rebuild_factorized_and_pruned_models(prune_first):
    """What the manifest records (widths, Tucker-2 ranks) rebuilds a model of the same shapes."""
    from compresslab.factorization import tucker2_factorize
    from compresslab.models import build_model
    from compresslab.structured import prune_filters
    model = build_model("cifar_cnn", seed=0)
    if prune_first:
        model = prune_filters(model, {"conv2": 0.5, "conv5": 0.25}, (3, 32, 32))
    model = tucker2_factorize(model, ranks={"conv3": (16, 8), "conv6": 32})
    options = zoo.model_options(model, "cifar_cnn_tucker")
    assert options["tucker_ranks"] == {"conv3": [16, 8], "conv6": [32, 32]}
    assert ("widths" in options) == prune_first
    rebuilt = zoo.build_architecture("cifar_cnn_tucker", options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_derived_checkpoints_record_their_architecture():
    from compresslab.metrics import flops
    manifest = zoo.read_manifest()
    assert set(manifest["cifar_cnn_tucker"]["options"]["tucker_ranks"]) == {"conv2", "conv3", "conv4", "conv5", "conv6"}
    base, tucker = zoo.load_pretrained("cifar_cnn", "cpu"), zoo.load_pretrained("cifar_cnn_tucker", "cpu")
    assert flops(base, (3, 32, 32)) / flops(tucker, (3, 32, 32)) > 2  # issue 6: at least 2x fewer FLOPs
    assert zoo.RECIPES["cifar_cnn_pruned_kd"]["teacher"] == "cifar_cnn"


def test_importing_compresslab_loads_no_compression_technique():
    """zoo (imported by compresslab/__init__.py) only loads checkpoints: the techniques and the
    recipes that train with them are imported when something is trained or compressed."""
    import subprocess
    import sys
    techniques = ["quantization", "pruning", "structured", "distillation", "factorization",
                  "deep_compression", "recipes"]
    code = ("import sys, compresslab, compresslab.zoo; "
            f"print([m for m in {techniques!r} if 'compresslab.' + m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
