"""MNIST and CIFAR-10 as in-memory uint8 tensors, cached once as a small `.npz`.

Where a dataset comes from, in this order (the first hit wins, nothing is re-downloaded):

1. ``$COMPRESSLAB_DATA/<name>.npz``  - a folder an instructor or CI points at;
2. ``data/<name>.npz``               - the cache this package writes;
3. a torchvision download into ``data/raw/``, converted once into ``data/<name>.npz``.

The cache has the layout of Keras' ``mnist.npz``: ``x_train, y_train, x_test, y_test``,
all uint8, images as (N, H, W) for MNIST and (N, H, W, C) for CIFAR-10.

Why not ``torchvision.datasets`` + ``DataLoader``? They decode one PIL image per sample,
which on a 2-core laptop costs more than a LeNet-5 forward pass. Here a batch is a slice
of one uint8 tensor, turned into floats and normalized in a single vectorized step.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
ENV_VAR = "COMPRESSLAB_DATA"

# Per-channel mean and standard deviation of the original training sets (pixels in [0, 1]).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}
SHAPES = {"mnist": (28, 28), "cifar10": (32, 32, 3)}
KEYS = ("x_train", "y_train", "x_test", "y_test")
PRETTY = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# Known re-encoded copies (sha256 of the .npz), whose results must not be quoted as
# results on the original dataset. This one is a JPEG (quality 75) re-encoding.
KNOWN_COPIES = {
    "c85dde7ee140815586d82495210631a228a9b561c31cd76ca8321d859e43ab04":
        "CIFAR-10 (offline JPEG copy)",
}


class DatasetNotFoundError(FileNotFoundError):
    """No cached copy of a dataset was found and it could not be downloaded."""


def check_name(name: str) -> str:
    name = name.lower().replace("-", "")
    if name not in STATS:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {sorted(STATS)}.")
    return name


def cache_candidates(name: str) -> list[Path]:
    """The places searched for ``<name>.npz``, in order."""
    places = []
    if os.environ.get(ENV_VAR):
        places.append(Path(os.environ[ENV_VAR]).expanduser() / f"{name}.npz")
    places.append(DATA_DIR / f"{name}.npz")
    return places


def find_cache(name: str) -> Path | None:
    """The cache file a load would read, or None if there is none yet."""
    return next((p for p in cache_candidates(check_name(name)) if p.exists()), None)


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_label(name: str) -> str:
    """How to name results measured on the cached data: 'MNIST', 'CIFAR-10', or the
    name of a known re-encoded copy, e.g. 'CIFAR-10 (offline JPEG copy)'."""
    path = find_cache(name)
    if path is None:
        return PRETTY[check_name(name)]
    return KNOWN_COPIES.get(cached_sha256(path, path.stat().st_mtime), PRETTY[check_name(name)])


@functools.lru_cache(maxsize=None)
def cached_sha256(path: Path, mtime: float) -> str:
    return sha256(path)  # hashing 170 MB once per session is enough


def read_cache(path: Path, name: str | None = None) -> dict[str, np.ndarray]:
    """Read and validate a cache file; a wrong layout gets an error that names the file."""
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / pickle / truncation errors all mean the same thing
        raise ValueError(f"{path} is not a readable .npz file ({e}). Delete it and load again.") from e
    name = name or path.stem
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing}; expected {list(KEYS)} "
                         "(the layout of Keras' mnist.npz).")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or len(x) != len(y):
            raise ValueError(f"{path}: x_{split} must be uint8 with one label per image, "
                             f"got {x.dtype} {x.shape} and {y.shape} labels.")
        if name in SHAPES and x.shape[1:] != SHAPES[name]:
            raise ValueError(f"{path}: x_{split} has images of shape {x.shape[1:]}, "
                             f"expected {SHAPES[name]}.")
    return arrays


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache atomically (a half-written file never looks like a cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.ascontiguousarray(arrays[k]) for k in KEYS})
    tmp.replace(path)


def download(name: str, raw_dir: Path) -> dict[str, np.ndarray]:
    """Fetch the dataset with torchvision and return it as uint8 arrays."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(str(raw_dir), train=train, download=True)
        x = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
        y = ds.targets.numpy() if torch.is_tensor(ds.targets) else np.asarray(ds.targets)
        out[f"x_{split}"], out[f"y_{split}"] = x.astype(np.uint8), y.astype(np.uint8)
    return out


def load_arrays(name: str, download_if_missing: bool = True) -> dict[str, np.ndarray]:
    """Return ``{x_train, y_train, x_test, y_test}`` as numpy uint8 arrays."""
    name = check_name(name)
    for path in cache_candidates(name):
        if path.exists():
            return read_cache(path, name)
    target = DATA_DIR / f"{name}.npz"
    hint = (f"Put {name}.npz (uint8 arrays x_train, y_train, x_test, y_test) into {DATA_DIR}/ "
            f"or into a folder named by the environment variable {ENV_VAR}.")
    if not download_if_missing:
        raise DatasetNotFoundError(f"No cached {name} found. {hint}")
    try:
        arrays = download(name, DATA_DIR / "raw")
    except Exception as e:
        raise DatasetNotFoundError(f"No cached {name} found and the download failed "
                                   f"({type(e).__name__}: {e}). {hint}") from e
    write_cache(target, arrays)
    return arrays


@dataclass
class Dataset:
    """One dataset in memory: images as uint8 (N, C, H, W) tensors, labels as int64."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def classes(self) -> list[str]:
        return CLASSES[self.name]

    @property
    def mean(self) -> torch.Tensor:
        return torch.tensor(STATS[self.name][0]).view(1, -1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return torch.tensor(STATS[self.name][1]).view(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 with (x / 255 - mean) / std per channel."""
        return (x.float().div_(255) - self.mean) / self.std

    def loader(self, split: str = "train", batch_size: int = 128, shuffle: bool | None = None,
               augment: bool = False, subset: int | None = None, seed: int = 0,
               device: str | torch.device = "cpu") -> "Loader":
        """Batches of normalized float images and labels (see :class:`Loader`).

        ``split="val"``: a class-balanced subset of the *training* images (``subset``, 5,000 by
        default), for every choice a notebook makes (ratios, bit widths, thresholds), so that
        the test set only scores the final choice. The zoo's models trained on all training
        images, so their accuracy on "val" runs higher than on "test": compare drops, not levels.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}.")
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        if split == "val" and subset is None:
            subset = VAL_SIZE
        if subset is not None:
            x, y = take_subset(x, y, subset, seed)
        shuffle = (split == "train") if shuffle is None else shuffle
        return Loader(self, x, y, batch_size, shuffle, augment, seed, device)


def take_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0):
    """A deterministic, class-balanced subset of ``n`` samples (same seed, same samples).

    Balanced because the offline CIFAR-10 copy is stored class by class: the first n
    samples would all be airplanes.
    """
    if not 0 < n <= len(y):
        raise ValueError(f"subset must be between 1 and {len(y)}, got {n}.")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    # Sort the shuffled indices by class rank: take the i-th sample of every class in turn.
    rank = torch.empty_like(order)
    for c in y.unique():
        idx = (y[order] == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx))
    keep = order[torch.argsort(rank, stable=True)[:n]].sort().values
    return x[keep], y[keep]


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip, on a batch.

    x: (N, C, H, W). Each image gets its own shift (dy, dx) in [0, 2*pad]; done with one
    gather instead of a Python loop over images.
    """
    n, c, h, w = x.shape
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * pad)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
        x = x.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


VAL_SIZE = 5000  # images of the "val" split (taken from the training set)
# Batch size for evaluation passes. Larger is not faster on a CPU: big batches' activations no
# longer fit in the cache and every batch allocates fresh memory. On a 2-core AMD EPYC the 10,000
# CIFAR-10 test images took 66 s through the ViT at batch 1,000 and 19 s at batch 64 (cifar_cnn:
# 14.5 s and 7.0 s: ``compresslab.predict(model, loader("test", b))`` timed for both b); on a 2-core
# Intel Xeon with AMX, cifar_cnn took 11.4 s and 7.3 s (``compresslab.evaluate``, best of two).
# Accuracy does not depend on it (eval mode: no batch statistics).
EVAL_BATCH = 64


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for one epoch: the same (seed, epoch) always draws the same numbers."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Loader:
    """Iterates over (images, labels) batches of an in-memory dataset.

    ``augment=True`` applies random crop (padding 4 for CIFAR-10, 2 for MNIST) and, for
    CIFAR-10 only, horizontal flip (a flipped digit is another symbol).

    Epoch e's shuffle and augmentation come from a generator seeded with (seed, e), not from
    one generator that runs on: ``fit`` calls ``set_epoch(0)``, ``set_epoch(1)``, ... (as
    ``DistributedSampler.set_epoch`` does), so two fine-tunes from one loader see the same
    batches, and the same seed is the same run, cell after cell. Iterating by hand goes on
    from the last epoch.
    """

    def __init__(self, ds: Dataset, x, y, batch_size, shuffle, augment, seed, device):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.ds, self.x, self.y = ds, x, y
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.device = torch.device(device)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The next pass over the data is epoch ``epoch`` (its shuffle and augmentation)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.y)
        g = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=g) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else \
                order[start:start + self.batch_size]
            x, y = self.x[idx], self.y[idx]
            if self.augment:
                cifar = self.ds.name == "cifar10"
                x = random_crop_flip(x, pad=4 if cifar else 2, flip=cifar, g=g)
            yield (self.ds.normalize(x).to(self.device, non_blocking=True),
                   y.to(self.device, non_blocking=True))


def load_dataset(name: str, download: bool = True) -> Dataset:
    """Load MNIST or CIFAR-10 (``"mnist"`` / ``"cifar10"``) into memory.

    >>> ds = load_dataset("mnist")
    >>> ds.x_train.shape, ds.x_train.dtype
    (torch.Size([60000, 1, 28, 28]), torch.uint8)
    """
    name = check_name(name)
    a = load_arrays(name, download_if_missing=download)

    def images(x):
        x = torch.from_numpy(x)
        return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()

    def labels(y):
        return torch.from_numpy(y.astype(np.int64)).reshape(-1)

    return Dataset(name, images(a["x_train"]), labels(a["y_train"]),
                   images(a["x_test"]), labels(a["y_test"]))


def import_npz(src: str | Path, name: str | None = None, force: bool = False) -> Path:
    """Copy an ``.npz`` handed out by an instructor into ``data/`` after checking its layout."""
    src = Path(src)
    name = check_name(name or src.stem)
    arrays = read_cache(src, name)
    target = DATA_DIR / f"{name}.npz"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists already; pass force=True to replace it.")
    write_cache(target, arrays)
    return target
