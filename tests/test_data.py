
import numpy as np
import pytest
import torch

from compresslab import data
from compresslab.data import DatasetNotFoundError, load_dataset, take_subset

from .conftest import fake_arrays


def test_cache_round_trip(isolated_data):
    arrays = fake_arrays("cifar10")
    path = isolated_data / "data" / "cifar10.npz"
    data.write_cache(path, arrays)
    for k, v in data.read_cache(path).items():
        np.testing.assert_array_equal(v, arrays[k])
    ds = load_dataset("cifar10")
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    # HWC -> CHW keeps every pixel where it was.
    assert torch.equal(ds.x_train[3].permute(1, 2, 0), torch.from_numpy(arrays["x_train"][3]))
    assert ds.y_test.dtype == torch.int64


def test_env_var_folder_wins_and_is_used_offline(isolated_data, monkeypatch):
    folder = isolated_data / "instructor"
    data.write_cache(folder / "mnist.npz", fake_arrays("mnist", seed=1))
    data.write_cache(isolated_data / "data" / "mnist.npz", fake_arrays("mnist", seed=2))
    monkeypatch.setenv(data.ENV_VAR, str(folder))
    monkeypatch.setattr(data, "download", lambda *a: pytest.fail("must not download"))
    ds = load_dataset("mnist")
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(fake_arrays("mnist", seed=1)["x_train"]))


def test_offline_without_cache_names_the_file_and_folder(isolated_data, no_network):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "mnist.npz" in msg and str(data.DATA_DIR) in msg and data.ENV_VAR in msg
    assert not (data.DATA_DIR / "mnist.npz").exists()


def test_caches_are_read_with_sockets_blocked(isolated_data, monkeypatch, no_network):
    folder = isolated_data / "instructor"
    data.write_cache(folder / "cifar10.npz", fake_arrays("cifar10"))
    data.write_cache(data.DATA_DIR / "mnist.npz", fake_arrays("mnist"))
    monkeypatch.setenv(data.ENV_VAR, str(folder))
    for name in ("mnist", "cifar10"):
        ds = load_dataset(name)
        x, y = next(iter(ds.loader("train", 16, augment=True)))
        assert x.shape[0] == 16 and data.dataset_label(name) == data.PRETTY[name]
    assert no_network == []


def test_real_data_and_checkpoints_need_no_network(no_network):
    """What every notebook does first: load both datasets and a checkpoint, from the caches."""
    from compresslab import zoo

    for name in ("mnist", "cifar10"):
        ds = load_dataset(name)
        data.dataset_label(name)
        next(iter(ds.loader("test", 256)))
    zoo.load_pretrained("cifar_cnn", "cpu")
    assert no_network == []


def test_notebooks_get_data_only_through_the_data_layer():
    """No notebook downloads by itself: offline use rests on data.py alone."""
    import nbformat

    for path in sorted((data.ROOT / "notebooks").glob("[0-9]*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")
        for forbidden in ("download=True", "urllib", "requests.", "torchvision.datasets", "http://", "https://"):
            assert forbidden not in code, f"{path.name} uses {forbidden!r}; load data with cl.load_dataset"


def test_download_is_converted_once_into_the_cache(isolated_data, monkeypatch):
    calls = []
    def fake_download(name, raw_dir):
        calls.append(name)
        return fake_arrays(name)
    monkeypatch.setattr(data, "download", fake_download)
    load_dataset("mnist")
    load_dataset("mnist")
    assert calls == ["mnist"]
    assert (data.DATA_DIR / "mnist.npz").exists()


def test_bad_names_and_files(isolated_data):
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    bad = isolated_data / "data" / "mnist.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset("mnist")
    np.savez(bad, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="lacks the arrays"):
        load_dataset("mnist")


def test_import_npz_never_overwrites(isolated_data):
    src = isolated_data / "handout.npz"
    data.write_cache(src, fake_arrays("mnist"))
    target = data.import_npz(src, "mnist")
    assert target.exists()
    with pytest.raises(FileExistsError, match="force=True"):
        data.import_npz(src, "mnist")
    data.import_npz(src, "mnist", force=True)


@pytest.mark.slow
def test_normalization_statistics_of_real_data():
    """The normalized training set has per-channel mean ~0 and std ~1."""
    for name in ("mnist", "cifar10"):
        ds = load_dataset(name)
        x = torch.cat([xb for xb, _ in ds.loader("train", 10000, shuffle=False, subset=20000)])
        mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
        assert torch.allclose(mean, torch.zeros_like(mean), atol=0.02), (name, mean)
        assert torch.allclose(std, torch.ones_like(std), atol=0.03), (name, std)


def test_real_datasets_layout():
    mnist, cifar = load_dataset("mnist"), load_dataset("cifar10")
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_test.shape == (10000, 1, 28, 28)
    assert cifar.x_train.shape == (50000, 3, 32, 32) and cifar.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(cifar.y_test).tolist() == [1000] * 10


def test_subset_is_deterministic_and_balanced():
    y = torch.arange(1000) // 100  # sorted by class, like the offline CIFAR copy
    x = torch.arange(1000)
    xa, ya = take_subset(x, y, 200, seed=3)
    xb, yb = take_subset(x, y, 200, seed=3)
    assert torch.equal(xa, xb)
    assert torch.bincount(ya).tolist() == [20] * 10
    assert not torch.equal(take_subset(x, y, 200, seed=4)[0], xa)
    with pytest.raises(ValueError, match="subset must be between"):
        take_subset(x, y, 0)


def test_loader_batches_and_augmentation(isolated_data):
    data.write_cache(isolated_data / "data" / "cifar10.npz", fake_arrays("cifar10", n_train=50))
    ds = load_dataset("cifar10")
    batches = list(ds.loader("train", 16, shuffle=False))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert batches[0][0].dtype == torch.float32 and batches[0][0].shape == (16, 3, 32, 32)
    a = [x for x, _ in ds.loader("train", 16, augment=True, seed=5)]
    b = [x for x, _ in ds.loader("train", 16, augment=True, seed=5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_an_epoch_is_drawn_from_its_seed_and_number_so_two_runs_see_the_same_batches(isolated_data):
    data.write_cache(isolated_data / "data" / "cifar10.npz", fake_arrays("cifar10", n_train=50))
    loader = load_dataset("cifar10").loader("train", 16, augment=True, seed=5)
    first, second = [y for _, y in loader], [y for _, y in loader]
    assert not all(torch.equal(p, q) for p, q in zip(first, second))  # epoch 1 reshuffles
    loader.set_epoch(0)  # what fit does before its first epoch
    again = [y for _, y in loader]
    assert all(torch.equal(p, q) for p, q in zip(first, again))


def test_fit_twice_from_one_loader_is_the_same_run(isolated_data):
    from compresslab.models import build_model
    from compresslab.train import fit
    data.write_cache(isolated_data / "data" / "mnist.npz", fake_arrays("mnist", n_train=64))
    loader = load_dataset("mnist").loader("train", 16, augment=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("lenet300")
        fit(model, loader, epochs=2, lr=0.01, progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_val_split_is_training_images_never_test_images(isolated_data):
    data.write_cache(isolated_data / "data" / "mnist.npz", fake_arrays("mnist", n_train=64))
    ds = load_dataset("mnist")
    val = ds.loader("val", 8, subset=20)
    assert sum(len(y) for _, y in val) == 20 and not val.shuffle
    x_val = torch.cat([x for x, _ in val])
    train = ds.normalize(ds.x_train)
    assert all(any(torch.equal(v, t) for t in train) for v in x_val)
    with pytest.raises(ValueError, match="'val'"):
        ds.loader("validation")


def test_random_crop_flip_moves_pixels_not_values():
    g = torch.Generator().manual_seed(0)
    x = (torch.arange(2 * 3 * 6 * 6) + 1).to(torch.uint8).reshape(2, 3, 6, 6)
    out = data.random_crop_flip(x, pad=0, flip=True, g=g)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    shifted = data.random_crop_flip(x, pad=2, flip=False, g=g)
    assert shifted.shape == x.shape
    # every non-zero pixel of a shifted image comes from the original image
    for i in range(2):
        vals = set(shifted[i].unique().tolist()) - {0}
        assert vals <= set(x[i].unique().tolist())
