"""Text for the language model: a character corpus, batches of windows, perplexity, sampling.

The corpus is a public-domain text committed under ``data/text/`` (its provenance and licence
are in ``data/text/README.md``), so it is there offline and is never downloaded. Characters are
the tokens: the vocabulary is the sorted set of characters of the whole text, and the split is
fixed, the first 90% for training and the last 10% for validation (as in nanoGPT's
character-level Shakespeare).

Language models are scored by the mean negative log-likelihood of the next character, in nats
per character, and by its exponential, the perplexity: a perplexity of 4 means the model is, on
average, as unsure as a fair choice among 4 characters. ``nats_per_char`` reads the text in
consecutive, non-overlapping windows of ``context`` characters, each character predicted from the
ones before it in its window (the convention of the GPTQ and Wanda papers' WikiText-2 tables,
there with 2,048 tokens a window).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .data import DATA_DIR, epoch_generator
from .train import model_device

TEXT_DIR = DATA_DIR / "text"
CORPORA = {"shakespeare": "shakespeare.txt"}
VAL_FRACTION = 0.1


class CharCorpus:
    """A text as a sequence of character ids, split once into ``train`` and ``val``."""

    def __init__(self, text: str, name: str = "text"):
        if len(text) < 1000:
            raise ValueError(f"A corpus needs at least 1,000 characters, got {len(text)}.")
        self.name = name
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        ids = self.encode(text)
        n = int(len(ids) * (1 - VAL_FRACTION))
        self.splits = {"train": ids[:n], "val": ids[n:]}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        unknown = sorted(set(s) - set(self.stoi))
        if unknown:
            raise ValueError(f"Characters not in the {self.name} vocabulary: {unknown!r}.")
        return torch.tensor([self.stoi[c] for c in s], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in torch.as_tensor(ids).tolist())

    def split(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            raise ValueError(f"Unknown split {split!r}: use 'train' or 'val'.")
        return self.splits[split]

    def loader(self, split: str, batch_size: int, context: int, batches: int, seed: int = 0) -> "WindowLoader":
        """``batches`` random windows of ``batch_size`` per epoch (what ``train.fit`` iterates)."""
        return WindowLoader(self.split(split), batch_size, context, batches, seed)

    def windows(self, split: str, context: int, limit: int | None = None):
        """Consecutive windows: x (n, context) and y = x shifted by one character, for evaluation.
        ``limit``: at most that many windows, from the start of the split."""
        ids = self.split(split)
        n = (len(ids) - 1) // context
        n = n if limit is None else min(n, limit)
        x = ids[: n * context].view(n, context)
        y = ids[1: n * context + 1].view(n, context)
        return x, y


class WindowLoader:
    """Batches (x, y) of random windows: x = text[i : i + T], y = text[i + 1 : i + T + 1].

    Epoch e draws its window starts from a generator seeded with (seed, e), like ``data.Loader``:
    the same seed is the same run."""

    def __init__(self, ids: torch.Tensor, batch_size: int, context: int, batches: int, seed: int):
        if batch_size < 1 or batches < 1 or not 0 < context < len(ids):
            raise ValueError(f"Need batch_size >= 1, batches >= 1 and 0 < context < {len(ids)}, "
                             f"got {batch_size}, {batches}, {context}.")
        self.ids, self.batch_size, self.context, self.batches = ids, batch_size, context, batches
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        g = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        offsets = torch.arange(self.context + 1)
        for _ in range(self.batches):
            starts = torch.randint(len(self.ids) - self.context, (self.batch_size,), generator=g)
            window = self.ids[starts[:, None] + offsets]              # (B, T + 1)
            yield window[:, :-1], window[:, 1:]


def load_text(name: str = "shakespeare") -> CharCorpus:
    """A committed corpus by name (see ``data/text/README.md``)."""
    if name not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}: choose one of {sorted(CORPORA)}.")
    path = TEXT_DIR / CORPORA[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. It is part of the repository: restore it with "
                                f"`git checkout -- {Path('data/text') / CORPORA[name]}`.")
    return CharCorpus(path.read_text(encoding="utf-8"), name)


def calibration_windows(corpus: CharCorpus, context: int = 128, batches: int = 4,
                        batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed calibration text of GPTQ, AWQ, SmoothQuant and the pruners: ``batches`` batches of
    ``batch_size`` random training windows of ``context`` characters, always drawn with seed 0, so
    the notebook, its exercises and the report calibrate on the same characters."""
    return list(corpus.loader("train", batch_size, context, batches=batches, seed=0))


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next character over every position: a ``train.fit`` loss_fn."""
    logits = model(x)                                             # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def nats_per_window(model: nn.Module, corpus: CharCorpus, split: str = "val", limit: int | None = None,
                    batch_size: int = 64, start: int = 0) -> torch.Tensor:
    """Mean -log p(next character) in each consecutive window of the model's context (windows
    ``start`` to ``start + limit``): one number per window, for paired comparisons of models."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    x, y = corpus.windows(split, model.context, None if limit is None else start + limit)
    x, y = x[start:], y[start:]
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device)).float()
        nll = F.cross_entropy(logits.transpose(1, 2), y[i:i + batch_size].to(device), reduction="none")
        out.append(nll.mean(1).cpu())                             # (batch,): one mean per window
    model.train(was_training)
    return torch.cat(out)


def nats_per_char(model: nn.Module, corpus: CharCorpus, split: str = "val", limit: int | None = None,
                  batch_size: int = 64, start: int = 0) -> float:
    """Mean -log p(next character) over consecutive windows of the model's context."""
    return float(nats_per_window(model, corpus, split, limit, batch_size, start).mean())


def perplexity(model: nn.Module, corpus: CharCorpus, split: str = "val", limit: int | None = None,
               start: int = 0) -> float:
    """exp(nats per character)."""
    return math.exp(nats_per_char(model, corpus, split, limit, start=start))


@torch.no_grad()
def generate(model: nn.Module, corpus: CharCorpus, prompt: str, length: int, temperature: float = 0.8,
             seed: int = 0) -> str:
    """``prompt`` and ``length`` more characters, each drawn from softmax(logits / temperature)
    of the last ``context`` characters (temperature 0: always the most likely one)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    g = torch.Generator().manual_seed(seed)
    ids = corpus.encode(prompt).tolist()
    for _ in range(length):
        logits = model(torch.tensor([ids[-model.context:]], device=device))[0, -1].float().cpu()
        if temperature == 0:
            ids.append(int(logits.argmax()))
        else:
            ids.append(int(torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=g)))
    model.train(was_training)
    return corpus.decode(ids)
