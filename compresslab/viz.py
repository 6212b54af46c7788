"""One plotting style for the whole workbook, and the plots the notebooks share.

Colours come from seaborn's colour-blind-safe palette; every plot labels its axes with
units and takes a title that states the takeaway.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torch import nn

from .metrics import prunable_layers, weight_of


def set_theme() -> None:
    """The workbook's look: seaborn 'whitegrid', colour-blind palette, readable fonts."""
    sns.set_theme(style="whitegrid", palette="colorblind", context="notebook",
                  rc={"figure.figsize": (7, 4), "figure.dpi": 90, "axes.titleweight": "bold"})


def show_images(images: torch.Tensor, labels=None, classes=None, rows: int = 2, title: str = ""):
    """A grid of uint8 images (N, C, H, W) with their labels as captions."""
    n = len(images)
    cols = int(np.ceil(n / rows))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
        if labels is not None:
            lab = int(labels[i])
            ax.set_title(classes[lab] if classes else str(lab), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_weight_histogram(model_or_tensor, bins: int = 120, ax=None, title: str = "Weight distribution",
                          label: str | None = None, skip_zeros: bool = False):
    """Histogram of all conv / linear weights (or of one tensor)."""
    if isinstance(model_or_tensor, nn.Module):
        w = torch.cat([weight_of(m).flatten().cpu() for m in prunable_layers(model_or_tensor).values()])
    else:
        w = model_or_tensor.detach().flatten().cpu()
    if skip_zeros:
        w = w[w != 0]
    ax = ax or plt.gca()
    ax.hist(w.numpy(), bins=bins, alpha=0.75, label=label)
    ax.set(xlabel="weight value", ylabel="count", title=title)
    if label:
        ax.legend()
    return ax


def plot_layer_bars(values: pd.Series | dict, ylabel: str, title: str, ax=None, fmt: str = "{:.0f}"):
    """One bar per layer, each labelled with its value (e.g. kept weights in %)."""
    s = pd.Series(values)
    ax = ax or plt.gca()
    bars = ax.bar(s.index.astype(str), s.values, color=sns.color_palette("colorblind")[0])
    ax.bar_label(bars, labels=[fmt.format(v) for v in s.values], fontsize=8)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    return ax


def plot_history(history: pd.DataFrame, title: str = "Training curves"):
    """Loss and test accuracy per epoch from the DataFrame ``fit`` returns."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    a1.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    if "test_loss" in history:
        a1.plot(history["epoch"], history["test_loss"], marker="o", label="test")
    a1.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    a1.legend()
    if "test_acc" in history:
        a2.plot(history["epoch"], history["test_acc"], marker="o", color="C2")
    a2.set(xlabel="epoch", ylabel="test accuracy (%)", title="Accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_tradeoff(df: pd.DataFrame, x: str, y: str = "accuracy_%", hue: str | None = None,
                  label: str | None = None, ax=None, title: str = "Accuracy versus size",
                  xlabel: str | None = None, logx: bool = False):
    """Scatter-and-line plot of accuracy against a cost (size, FLOPs, latency).

    ``label`` names a column whose values are written next to each point.
    """
    ax = ax or plt.gca()
    sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", ax=ax, sort=True)
    if label:
        for _, r in df.iterrows():
            ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel or x, ylabel="test accuracy (%)" if y == "accuracy_%" else y, title=title)
    return ax


def plot_speedups(speed: pd.DataFrame, ax=None, title: str = "Speed-up over the first model"):
    """Grouped bars of ``metrics.speed_table``'s speed-ups, one group per batch size.

    Error bars span the per-round ratios (lo to hi); the grey band is 1 +/- the A/A control's
    noise at that batch size: a bar whose top stays inside it is no measurable change.
    """
    ax = ax or plt.gca()
    names, batches = list(dict.fromkeys(speed.model)), list(dict.fromkeys(speed.batch))
    width = 0.8 / len(names)
    colours = sns.color_palette(n_colors=len(names))
    for j, b in enumerate(batches):
        noise = speed[speed.batch == b]["noise +/-"].iloc[0] if "noise +/-" in speed else 0.0
        ax.fill_between([j - 0.45, j + 0.45], 1 - noise, 1 + noise, color="0.85", zorder=0,
                        label="A/A noise band" if j == 0 else None)
    for i, name in enumerate(names):
        rows = speed[speed.model == name].set_index("batch").loc[batches]
        xs = np.arange(len(batches)) - 0.4 + width * (i + 0.5)
        err = [rows["speed-up x"] - rows["speed-up lo"], rows["speed-up hi"] - rows["speed-up x"]]
        ax.bar(xs, rows["speed-up x"], width, yerr=np.clip(err, 0, None), capsize=2,
               color=colours[i], label=name, hatch="//" if "A/A" in name else None)
    ax.axhline(1, color="k", lw=1, ls="--")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set(xlabel="batch size", ylabel="speed-up (x)", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def plot_confusion(counts: np.ndarray, classes, title: str = "Confusion matrix", ax=None):
    """Heatmap of a confusion matrix (rows: true class, columns: predicted class)."""
    ax = ax or plt.gca()
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 7})
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return ax


def explore(draw, figsize=(11, 3.6), **sliders):
    """An interactive figure: ``draw(fig, **values)`` redraws ``fig`` whenever a slider moves.

    ``sliders`` are ipywidgets controls, e.g. ``sparsity=widgets.SelectionSlider(...)``. Keep
    ``draw`` cheap (read results computed earlier) and moving a slider is instant on a CPU.
    The first view is displayed as an ordinary figure, so a static copy of the notebook (nbval,
    GitHub, a PDF) still shows the default; later views replace it in place (a display id).
    """
    import ipywidgets as widgets
    from IPython.display import display

    def values():
        return {name: s.value for name, s in sliders.items()}

    fig = plt.figure(figsize=figsize)
    draw(fig, **values())
    # The sliders are shown without their text fallback: a saved copy of the notebook, opened
    # before its kernel runs, would print "HBox(children=(...))" above the default figure.
    controls = widgets.HBox(list(sliders.values()))
    bundle = controls._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    display({**bundle, "text/plain": ""}, raw=True)
    handle = display(fig, display_id=True)  # None outside IPython
    plt.close(fig)  # shown once, by the handle, not again at the end of the cell

    def redraw(change):
        fig.clear()
        draw(fig, **values())
        if handle is not None:
            handle.update(fig)

    for s in sliders.values():
        s.continuous_update = False  # redraw when the slider is released, not at every pixel
        s.style.description_width = "initial"
        s.observe(redraw, names="value")
    return fig
