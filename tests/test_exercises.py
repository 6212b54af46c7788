import re

import nbformat

from compresslab import exercises


def test_strip_solutions_keeps_indent_and_checks():
    src = ("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
           "assert f(2) == 4, 'f should double'\n")
    out = exercises.strip_solutions(src)
    assert "return 2 * x" not in out
    assert "    raise NotImplementedError" in out
    assert out.endswith("assert f(2) == 4, 'f should double'\n")


def test_every_notebook_has_exercises_with_self_checks():
    for nb in exercises.notebooks_with_exercises():
        text = nb.read_text()
        assert text.count("### BEGIN SOLUTION") == text.count("### END SOLUTION")
        assert "grading." in text


def test_student_copies_are_up_to_date():
    nbs = exercises.notebooks_with_exercises()
    assert nbs, "no notebook has exercises"
    for nb in nbs:
        copy = exercises.STUDENT_DIR / nb.name
        assert copy.exists(), f"missing {copy}: run `python -m compresslab exercises`"
        assert copy.read_text() == exercises.student_copy(nb), \
            f"{copy} is stale: run `python -m compresslab exercises`"
        assert "### BEGIN SOLUTION" not in copy.read_text()


def exercise_cells(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "### END SOLUTION" in c.source]


def test_every_notebook_has_an_implementation_exercise_and_a_design_task():
    """The student writes the technique once (implement:) and meets a target once (design:)."""
    for nb in exercises.notebook_paths():
        titles = re.findall(r"\*\*Exercise \d+ — (.+?)\*\*", nb.read_text(encoding="utf-8"))
        assert any(t.startswith("implement:") for t in titles), f"{nb.name}: no 'Exercise N — implement: ...'"
        assert any(t.startswith("design:") for t in titles), f"{nb.name}: no 'Exercise N — design: ...'"


def test_every_check_calls_a_grading_checker():
    """The checks after ``### END SOLUTION`` call a checker of compresslab.grading, which knows
    the reference; a visible ``assert x == reference(...)`` would show the student the answer."""
    for nb in exercises.notebook_paths():
        for source in exercise_cells(nb):
            check = source.rsplit("### END SOLUTION", 1)[1]
            assert "grading." in check, f"{nb.name}: a check without a grading checker:\n{check[:300]}"


def test_every_question_has_an_answer_cell():
    for nb_path in exercises.notebook_paths():
        cells = nbformat.read(nb_path, as_version=4).cells
        for i, cell in enumerate(cells):
            if cell.cell_type == "markdown" and re.search(r"\*\*Question \d+ — ", cell.source):
                assert i + 1 < len(cells) and cells[i + 1].source.strip() == exercises.WRITTEN_ANSWER, \
                    f"{nb_path.name}: the question in cell {i} is not followed by a '{exercises.WRITTEN_ANSWER}' cell"
