"""Student copies of the notebooks, with the exercise solutions taken out.

In the full notebooks a solution sits between nbgrader's markers::

    ### BEGIN SOLUTION
    answer = 42
    ### END SOLUTION
    assert answer == 42, "hint for the student"

The student copy in ``notebooks/exercises/`` keeps everything but the lines between the
markers, which become ``raise NotImplementedError`` (nbgrader's own convention), and has
no outputs. Regenerate the copies after editing a notebook::

    python -m compresslab exercises
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .data import ROOT

NOTEBOOKS = ROOT / "notebooks"
STUDENT_DIR = NOTEBOOKS / "exercises"
SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.M | re.S)


def strip_solutions(source: str) -> str:
    """Replace each marked solution block by ``raise NotImplementedError``, same indent."""
    return SOLUTION.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError",
                        source)


def student_copy(nb_path: Path) -> str:
    """The student version of a notebook as JSON text (solutions out, outputs cleared)."""
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata.pop("widgets", None)  # the sliders' saved state belongs to the cleared outputs
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
    return nbformat.writes(nb) + "\n"


def notebooks_with_exercises() -> list[Path]:
    return [p for p in sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
            if "### BEGIN SOLUTION" in p.read_text(encoding="utf-8")]


def write_student_copies(out_dir: Path = STUDENT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in notebooks_with_exercises():
        target = out_dir / nb.name
        target.write_text(student_copy(nb), encoding="utf-8")
        written.append(target)
    return written
