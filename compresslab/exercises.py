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

The "why?" questions are answered in a markdown cell that holds only ``YOUR ANSWER HERE``
(nbgrader's own stub for written answers); the model answers are in the instructor's guide.

For an autograded nbgrader course, ``nbgrader_source`` splits every exercise cell after
``### END SOLUTION`` into an "autograded answer" cell and a locked "autograder tests" cell worth
one point, and marks every written answer as a manually graded cell worth one point (nbgrader's
cell metadata); ``write_nbgrader_course`` lays out a course folder::

    python -m compresslab exercises --nbgrader COURSE [--assignment lab] [00 06a ...]
    cd COURSE && nbgrader generate_assignment lab     # then release, collect, autograde
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .data import ROOT

NOTEBOOKS = ROOT / "notebooks"
STUDENT_DIR = NOTEBOOKS / "exercises"
WRITTEN_ANSWER = "YOUR ANSWER HERE"
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


def notebook_paths(names=None) -> list[Path]:
    """The numbered notebooks, or those whose file name starts with one of ``names`` ("07", "07_distillation")."""
    every = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not names:
        return every
    chosen = [p for p in every if any(p.name.startswith(n) for n in names)]
    unknown = [n for n in names if not any(p.name.startswith(n) for p in every)]
    if unknown:
        raise ValueError(f"No notebook matches {unknown}: choose from {[p.stem for p in every]}.")
    return chosen


def notebooks_with_exercises() -> list[Path]:
    return [p for p in notebook_paths() if "### BEGIN SOLUTION" in p.read_text(encoding="utf-8")]


def write_student_copies(out_dir: Path = STUDENT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in notebooks_with_exercises():
        target = out_dir / nb.name
        target.write_text(student_copy(nb), encoding="utf-8")
        written.append(target)
    return written


NBGRADER_CONFIG = """c = get_config()
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError"}  # as in the student copies
c.Execute.timeout = 1800  # seconds per cell (nbgrader's default, 30, is shorter than our training cells)
"""


def nbgrader_source(nb_path: Path) -> nbformat.NotebookNode:
    """The notebook as an nbgrader source notebook: each exercise cell split into its answer
    (``solution``) and its checks (``grade``, locked, 1 point), grade ids ``ex1``, ``ex2``, ...;
    each written answer a manually graded cell (``solution`` and ``grade``, 1 point), ``why1``, ..."""
    nb = nbformat.read(nb_path, as_version=4)
    cells, n, n_why = [], 0, 0
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.strip() == WRITTEN_ANSWER:
            n_why += 1
            cell.metadata["nbgrader"] = {"solution": True, "grade": True, "locked": False, "points": 1,
                                         "grade_id": f"why{n_why}", "schema_version": 3}
            cells.append(cell)
            continue
        if cell.cell_type != "code" or "### END SOLUTION" not in cell.source:
            cells.append(cell)
            continue
        n += 1
        head, tail = cell.source.rsplit("### END SOLUTION", 1)
        answer = nbformat.v4.new_code_cell(head + "### END SOLUTION")
        answer.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                       "grade_id": f"ex{n}", "schema_version": 3}
        checks = nbformat.v4.new_code_cell(tail.lstrip("\n"))
        checks.metadata["nbgrader"] = {"solution": False, "grade": True, "locked": True, "points": 1,
                                       "grade_id": f"ex{n}_checks", "schema_version": 3}
        cells += [answer, checks]
    if n == 0:
        raise ValueError(f"{nb_path.name} has no exercise (no ### END SOLUTION): nothing to grade.")
    nb.cells = cells
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def write_nbgrader_course(course: Path, notebooks: list[Path], assignment: str = "lab") -> list[Path]:
    """``course/nbgrader_config.py`` and ``course/source/<assignment>/<notebook>.ipynb``; refuses
    to overwrite a source notebook that is already there (an instructor's edits)."""
    source = Path(course) / "source" / assignment
    targets = [source / nb.name for nb in notebooks]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist: remove them first, or choose another --assignment.")
    source.mkdir(parents=True, exist_ok=True)
    config = Path(course) / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG, encoding="utf-8")
    for nb, target in zip(notebooks, targets):
        nbformat.write(nbgrader_source(nb), target)
    return targets
