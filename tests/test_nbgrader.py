"""nbgrader end to end, as an instructor runs it: our notebooks become an autograded course
(`python -m compresslab exercises --nbgrader COURSE`), `nbgrader generate_assignment` releases
it, and `nbgrader autograde` scores three submissions of notebook 00: fully solved (full marks),
the release untouched (0 on every exercise) and one planted wrong answer (loses exactly that
exercise's point)."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from compresslab import exercises

NOTEBOOK = exercises.NOTEBOOKS / "00_setup_and_baselines.ipynb"


def test_each_exercise_cell_becomes_an_answer_and_a_locked_one_point_check():
    nb = exercises.nbgrader_source(NOTEBOOK)
    meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata and c.cell_type == "code"]
    assert [m["grade_id"] for m in meta] == [f"ex{i}{part}" for i in range(1, 6) for part in ("", "_checks")]
    answers, checks = meta[0::2], meta[1::2]
    assert all(m["solution"] and not m["grade"] and not m["locked"] for m in answers)
    assert all(m["grade"] and m["locked"] and m["points"] == 1 and not m["solution"] for m in checks)
    cells = [c for c in nb.cells if "nbgrader" in c.metadata and c.cell_type == "code"]
    assert all(c.source.rstrip().endswith("### END SOLUTION") for c in cells[0::2])
    assert all("grading." in c.source and "SOLUTION" not in c.source for c in cells[1::2])
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_each_written_answer_becomes_a_manually_graded_cell():
    nb = exercises.nbgrader_source(NOTEBOOK)
    written = [c for c in nb.cells if c.cell_type == "markdown" and "nbgrader" in c.metadata]
    assert [c.metadata["nbgrader"]["grade_id"] for c in written] == ["why1", "why2", "why3"]
    assert all(c.source.strip() == exercises.WRITTEN_ANSWER for c in written)
    assert all(m["solution"] and m["grade"] and not m["locked"] and m["points"] == 1
               for m in (c.metadata["nbgrader"] for c in written))
    questions = [nb.cells[nb.cells.index(c) - 1].source for c in written]
    assert all(q.startswith(f"**Question {i} — ") for i, q in enumerate(questions, 1))


def test_a_course_is_written_once_and_never_overwritten(tmp_path):
    written = exercises.write_nbgrader_course(tmp_path, [NOTEBOOK], "lab")
    assert written == [tmp_path / "source" / "lab" / NOTEBOOK.name]
    assert "Execute.timeout" in (tmp_path / "nbgrader_config.py").read_text()
    with pytest.raises(FileExistsError, match="already exist"):
        exercises.write_nbgrader_course(tmp_path, [NOTEBOOK], "lab")


def test_a_notebook_without_exercises_is_refused(tmp_path):
    empty = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), empty)
    with pytest.raises(ValueError, match="no exercise"):
        exercises.nbgrader_source(empty)


def nbgrader(course: Path, *args: str) -> None:
    pytest.importorskip("nbgrader")
    # nbgrader calls the `alembic` program of its own environment to set up the gradebook
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"


def submission(release, source, wrong: dict[str, tuple[str, str]] | None = None):
    """The release copy with the source's answers typed in, as a student would; ``wrong``:
    grade id -> (text, replacement) planted in that answer."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.from_dict(release)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
            if wrong and grade_id in wrong:
                old, new = wrong[grade_id]
                assert old in cell.source
                cell.source = cell.source.replace(old, new)
    return nb


@pytest.mark.slow
def test_nbgrader_autogrades_full_marks_zero_and_exactly_one_lost_point(tmp_path):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    exercises.write_nbgrader_course(course, [NOTEBOOK], "lab")
    nbgrader(course, "generate_assignment", "lab")
    release = nbformat.read(course / "release" / "lab" / NOTEBOOK.name, as_version=4)
    source = nbformat.read(course / "source" / "lab" / NOTEBOOK.name, as_version=4)
    assert "raise NotImplementedError" in "".join(c.source for c in release.cells)
    assert "### BEGIN SOLUTION" not in "".join(c.source for c in release.cells)
    students = {"solved": submission(release, source), "unsolved": release,
                "one_wrong": submission(release, source, {"ex2": ("64 * 2 *", "64 *")})}  # forgot 2 FLOPs per MAC
    for student, nb in students.items():
        folder = course / "submitted" / student / "lab"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / NOTEBOOK.name)
    nbgrader(course, "autograde", "lab", "--create")
    expected = {"solved": [1, 1, 1, 1, 1], "unsolved": [0, 0, 0, 0, 0], "one_wrong": [1, 0, 1, 1, 1]}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: [gb.find_grade(f"ex{i}_checks", NOTEBOOK.stem, "lab", s).score for i in range(1, 6)]
                  for s in students}
    assert scores == expected
