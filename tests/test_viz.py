"""The workbook's plots: one colour-blind-safe style, labelled axes, explorers that redraw."""
import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from compresslab import viz
from compresslab.models import lenet300

matplotlib.use("Agg")


def test_theme_uses_the_colour_blind_palette():
    viz.set_theme()
    cycle = [matplotlib.colors.to_hex(c["color"]) for c in plt.rcParams["axes.prop_cycle"]]
    assert cycle == sns.color_palette("colorblind").as_hex()


def test_shared_plots_label_their_axes_and_have_titles():
    viz.set_theme()
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "test_loss": [1.1, 0.6], "test_acc": [80, 90]})
    tradeoff = pd.DataFrame({"MB": [1.0, 2.0], "accuracy_%": [90.0, 95.0], "name": ["a", "b"]})
    figures = [viz.plot_history(history)]
    for draw in (lambda ax: viz.plot_weight_histogram(lenet300(), ax=ax),
                 lambda ax: viz.plot_layer_bars({"fc1": 10, "fc2": 20}, "kept (%)", "kept per layer", ax=ax),
                 lambda ax: viz.plot_tradeoff(tradeoff, "MB", label="name", ax=ax, xlabel="size (MB)"),
                 lambda ax: viz.plot_confusion(np.eye(3, dtype=int), ["a", "b", "c"], ax=ax)):
        fig, ax = plt.subplots()
        draw(ax)
        figures.append(fig)
    for fig in figures:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax
        plt.close(fig)


def test_explore_draws_the_default_then_redraws_when_a_slider_moves():
    calls = []

    def draw(fig, bits, label):
        calls.append((bits, label))
        ax = fig.subplots()
        ax.plot(torch.arange(2 ** bits))
        ax.set(xlabel="level", ylabel="value", title=f"{label}: {2 ** bits} levels")

    bits, label = widgets.IntSlider(value=2, min=1, max=8), widgets.Dropdown(options=["a", "b"], value="a")
    fig = viz.explore(draw, bits=bits, label=label)
    assert calls == [(2, "a")] and fig.axes[0].get_title() == "a: 4 levels"
    bits.value = 5
    label.value = "b"
    assert calls == [(2, "a"), (5, "a"), (5, "b")]
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "b: 32 levels"  # redrawn, not stacked
    assert not bits.continuous_update  # redraw on release: cheap on a slow laptop


def test_speedup_bars_have_error_bars_and_the_noise_band():
    speed = pd.DataFrame({"model": ["dense", "dense", "small", "small", "dense again (A/A control)", "dense again (A/A control)"],
                          "batch": [1, 256] * 3, "speed-up x": [1.0, 1.0, 1.5, 1.8, 1.02, 0.97],
                          "speed-up lo": [1.0, 1.0, 1.4, 1.6, 0.95, 0.9], "speed-up hi": [1.0, 1.0, 1.6, 1.9, 1.05, 1.03],
                          "noise +/-": [0.05, 0.1] * 3})
    fig, ax = plt.subplots()
    viz.plot_speedups(speed, ax=ax, title="small is faster")
    assert ax.get_title() == "small is faster" and ax.get_xlabel() == "batch size"
    assert len(ax.patches) >= 6 and len(ax.collections) >= 2  # bars, and the two noise bands
    assert "A/A noise band" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
