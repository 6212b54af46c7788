"""Every recipe in compresslab/recipes.py, run for real on a tiny budget.

The recipe code is the one `checkpoints retrain` runs; only what it is given shrinks: the
datasets are cut to a few batches and each training call is capped at one epoch (one round
for Deep Compression). The calls are recorded on the way, so each test also checks that the
function trains with the settings zoo.RECIPES records (what the manifest and notebooks show).
"""
import dataclasses
import functools
import inspect

import pytest
import torch

from compresslab import recipes, text, zoo
from compresslab.data import load_dataset
from compresslab.deep_compression import HAN

N_TRAIN, N_TEST = 256, 200  # each test takes 0.5-3 s on 2 idle cores (tucker's SVDs, CIFAR's first load)


@functools.cache
def tiny(name):
    """The first N_TRAIN training and N_TEST test images of a dataset (one CIFAR batch)."""
    ds = load_dataset(name)
    return dataclasses.replace(ds, x_train=ds.x_train[:N_TRAIN].clone(), y_train=ds.y_train[:N_TRAIN].clone(),
                               x_test=ds.x_test[:N_TEST].clone(), y_test=ds.y_test[:N_TEST].clone())


@pytest.fixture
def budget(monkeypatch):
    """Tiny datasets, one epoch per fit, one round of Deep Compression; returns the calls made."""
    calls = {"fit": [], "prune_and_retrain": [], "share_weights": [], "distillation_loss_fn": [],
             "hard_distillation_loss_fn": [], "slimming_loss": [], "load_pretrained": []}

    def spy(name, short=lambda args, kwargs: (args, kwargs)):
        real = getattr(recipes, name)

        def wrapper(*args, **kwargs):
            calls[name].append(inspect.signature(real).bind(*args, **kwargs).arguments)
            args, kwargs = short(args, kwargs)
            return real(*args, **kwargs)
        monkeypatch.setattr(recipes, name, wrapper)

    monkeypatch.setattr(recipes, "load_dataset", tiny)
    spy("fit", lambda a, k: ((a[0], few_windows(a[1]), min(a[2], 1), *a[3:]), k))    # epochs <= 1
    spy("prune_and_retrain", lambda a, k: ((*a[:3], 1, 1, *a[5:]), k))              # 1 round of 1 epoch
    for name in ("share_weights", "distillation_loss_fn", "hard_distillation_loss_fn", "slimming_loss",
                 "load_pretrained"):
        spy(name)
    return calls


def few_windows(loader):
    """The language model's loader cut to 2 batches (the image loaders are cut by `tiny`)."""
    if isinstance(loader, text.WindowLoader):
        return text.WindowLoader(loader.ids, loader.batch_size, loader.context, 2, loader.seed)
    return loader


def expected_shapes(name):
    model = zoo.build_architecture(name, zoo.read_manifest()[name].get("options", {}))
    return type(model), {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(zoo.RECIPES))
def test_recipe_trains_the_checkpoints_architecture_with_its_recorded_settings(name, budget):
    model, history = recipes.BY_NAME[name](seed=0, device="cpu", progress=False)
    kind, shapes = expected_shapes(name)
    assert type(model) is kind
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())

    settings = zoo.RECIPES[name]
    assert [c["name"] for c in budget["load_pretrained"]] == \
        [settings[k] for k in ("start_from", "teacher") if k in settings]
    if "deep_compression" in settings:
        han = HAN[settings["deep_compression"]]
        (stage1,), (stage2,) = budget["prune_and_retrain"], budget["share_weights"]
        assert stage1["amounts"] == han["amounts"] and stage2["bits"] == han["bits"]
        assert (stage1["rounds"], stage1["epochs"], stage1["lr"], stage1["weight_decay"]) == \
            (settings["rounds"], settings["epochs"], settings["lr"], settings.get("weight_decay", 0.0))
        assert stage2["train_loader"] is stage1["train_loader"]
        train = stage1["train_loader"]
        assert len(history) == 0 and not budget["fit"]
    else:
        (call,) = budget["fit"]
        options = call  # fit's keyword arguments all have names: bound like the positional ones
        assert (call["epochs"], call["lr"]) == (settings["epochs"], settings["lr"])
        assert options["weight_decay"] == settings["weight_decay"]
        assert options.get("optimizer", "sgd") == settings.get("optimizer", "sgd")
        assert options.get("schedule", "onecycle") == settings.get("schedule", "onecycle")
        if "corpus" in settings:  # the language model: no test loader, scored on validation text afterwards
            train = call["train_loader"]
            assert options["test_loader"] is None and options["loss_fn"] is text.lm_loss
            assert (train.batch_size, train.context, train.batches) == \
                (settings["batch_size"], settings["context"], settings["batches"])
            assert len(train.ids) == len(text.load_text(settings["corpus"]).split("train"))
            assert list(history["epoch"]) == [1] and history["train_loss"].notna().all()
            return
        if "bn_l1" in settings:  # the label smoothing goes into the slimming loss
            (loss,) = budget["slimming_loss"]
            assert (loss["lam"], loss["label_smoothing"]) == (settings["bn_l1"], settings["label_smoothing"])
        elif settings.get("distillation") == "hard":  # DeiT: smoothing on the true label, inside the loss
            (kd,) = budget["hard_distillation_loss_fn"]
            assert kd["label_smoothing"] == settings["label_smoothing"] and not budget["distillation_loss_fn"]
            assert options.get("label_smoothing", 0.0) == 0.0
        else:
            assert options.get("label_smoothing", 0.0) == settings.get("label_smoothing", 0.0)
        if settings.get("distillation") == "hard":
            assert options["loss_fn"] is not None
        elif "teacher" in settings:
            (kd,) = budget["distillation_loss_fn"]
            assert (kd["T"], kd["alpha"]) == (settings["T"], settings["alpha"])
            assert options["loss_fn"] is not None
        assert ("loss_fn" in options) == ("teacher" in settings or "bn_l1" in settings)
        assert options["test_loader"] is not None and options["seed"] == 0
        assert list(history["epoch"]) == [1] and history["test_acc"].notna().all()
        train = call["train_loader"]
    assert (train.batch_size, train.augment) == (settings["batch_size"], settings["augment"])
    if "drop_class" in settings:
        assert 0 < len(train.y) < N_TRAIN and not (train.y == settings["drop_class"]).any()
    else:
        assert len(train.y) == N_TRAIN


def test_every_checkpoint_has_a_recipe_and_every_recipe_a_checkpoint():
    assert set(zoo.read_manifest()) == set(recipes.BY_NAME) == set(zoo.RECIPES) == set(zoo.TARGETS)
    for name, make in recipes.BY_NAME.items():
        assert make.__name__ == name and make.__doc__
        params = inspect.signature(make).parameters
        assert list(params)[:3] == ["seed", "device", "progress"]
        # train_checkpoint passes `directory` exactly to the recipes that read another checkpoint
        needs_base = "start_from" in zoo.RECIPES[name] or "teacher" in zoo.RECIPES[name]
        assert ("directory" in params) == needs_base, name


def test_retrain_calls_the_recipe_and_records_its_settings(budget, tmp_path):
    """A teacher's recipe, stored in float16: the file is measured as stored, then described."""
    manifest = zoo.retrain(["mlp800_kd"], tmp_path, progress=False, device="cpu")
    entry = manifest["mlp800_kd"]
    assert entry["recipe"] == zoo.RECIPES["mlp800_kd"] and entry["model"] == "mlp800"
    assert [c["name"] for c in budget["load_pretrained"]] == ["mlp1200"]
    state = torch.load(tmp_path / "mlp800_kd.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    assert zoo.load_pretrained("mlp800_kd", "cpu", tmp_path)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert "`mlp800_kd`" in (tmp_path / "README.md").read_text()
