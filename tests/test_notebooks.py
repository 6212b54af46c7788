"""The committed notebooks: executed, deterministic where nbval checks them, explorers in place."""
import re
from pathlib import Path

import nbformat
import pytest

from .test_guide import minutes, readme_run_times

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
EXPLORERS = {"01": "sparsity", "06b": "bits", "07": "temperature"}


def code_cells(path):
    return [c for c in nbformat.read(path, 4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_top_to_bottom_without_errors(path):
    cells = code_cells(path)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), \
        f"re-run {path.name} top to bottom in a fresh kernel before committing"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]


# What would make a checked output differ between two runs on one machine, or between machines.
VARYING = ("fit(", "fine_tune(", "latency(", "speed_table(", "benchmark.", "time.", "perf_counter")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_cells_neither_train_nor_time(path):
    for cell in code_cells(path):
        if "NBVAL_CHECK_OUTPUT" in cell.source:
            for call in VARYING:
                assert call not in cell.source, f"{path.name}: a checked cell calls {call}; its output would vary"


def sanitize(text):
    """What nbval does to an output before comparing it, with the project's rules."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text


def test_sanitizer_hides_timings_addresses_and_progress_bars():
    assert sanitize("median 12.3 ms, total 4 s, 2.5 min") == "median TIME, total TIME, TIME"
    assert sanitize("<Sequential object at 0x7f3a2b10>") == "<Sequential object at ADDRESS>"
    assert sanitize("epochs: 100%|██████████| 3/3 [00:07<00:00]") == "epochs: PROGRESS"
    assert sanitize("98.44% accuracy, 12x fewer") == "98.44% accuracy, 12x fewer"  # results stay checked


@pytest.mark.parametrize("number,what", EXPLORERS.items())
def test_explorer_shows_a_static_default_view_and_its_sliders(number, what):
    path = next(p for p in NOTEBOOKS if p.name.startswith(number))
    cells = [c for c in code_cells(path) if "viz.explore(" in c.source]
    assert len(cells) == 1, f"{path.name} should have one '{what}' explorer"
    outputs = [o.get("data", {}) for o in cells[0].outputs if o.output_type == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in d for d in outputs), "no sliders displayed"
    assert any("image/png" in d for d in outputs), "no default view for static copies"


def test_each_notebook_states_its_measured_run_time():
    measured = {stem: minutes(t)[1] for stem, t in readme_run_times((ROOT / "README.md").read_text()).items()}
    assert set(measured) == {p.stem for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        header = nbformat.read(path, 4).cells[0].source
        stated = re.search(r"\*\*Run time\*\*: about ([\d.]+) minutes?", header)
        assert stated, f"{path.name}: the first cell should say '**Run time**: about N minutes'"
        assert abs(float(stated[1]) - measured[path.stem]) <= 0.35 * measured[path.stem], \
            f"{path.name} says about {stated[1]} min, the README measured {measured[path.stem]} min"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_outputs_show_no_widget_text_or_stalled_progress_bars(path):
    """Opened before its kernel runs, a committed notebook shows finished work: no
    "HBox(children=...)" text above an explorer's figure, no training bar stuck at 0%."""
    for i, cell in enumerate(code_cells(path)):
        for out in cell.outputs:
            text = out.get("data", {}).get("text/plain", "") if "data" in out else out.get("text", "")
            assert "children=(" not in text, f"{path.name} code cell {i} saved a widget's text fallback"
            assert not re.search(r"(^|\s)0%\|", text), f"{path.name} code cell {i} saved a stalled progress bar"
