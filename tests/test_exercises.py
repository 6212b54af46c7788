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
        assert "assert " in text


def test_student_copies_are_up_to_date():
    nbs = exercises.notebooks_with_exercises()
    assert nbs, "no notebook has exercises"
    for nb in nbs:
        copy = exercises.STUDENT_DIR / nb.name
        assert copy.exists(), f"missing {copy}: run `python -m compresslab exercises`"
        assert copy.read_text() == exercises.student_copy(nb), \
            f"{copy} is stale: run `python -m compresslab exercises`"
        assert "### BEGIN SOLUTION" not in copy.read_text()
