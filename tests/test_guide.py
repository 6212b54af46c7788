"""Keeps docs/instructor_guide.md honest against the notebooks, the README and the CLI.

Each check is a function that returns a list of problems (empty = fine), so the tests at the
bottom can also show that every check fails on a guide that is wrong.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from unittest import mock

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "instructor_guide.md"
README = ROOT / "README.md"
CHECKPOINTS_README = ROOT / "data" / "checkpoints" / "README.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

TIME = r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)? min"  # "1.3 min", "4.1-4.5 min"
EXERCISE = re.compile(r"\*\*Exercise (\d+) — (.+?)\.?\*\*")  # "**Exercise 1 — parameters by hand.**"
QUESTION = re.compile(r"\*\*Question (\d+) — (.+?)\*\*", re.S)  # "**Question 1 — why is the masked model no faster?**"
COMMAND = re.compile(r"python -m compresslab\b([^`#>\n]*)")


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def stems() -> list[str]:
    return [p.stem for p in NOTEBOOKS]


# --- what the sources say -------------------------------------------------------------------

def readme_run_times(readme: str) -> dict[str, str]:
    """Run time per notebook from the README's notebook table (section "The notebooks")."""
    section = readme.split("## The notebooks", 1)[1].split("\n## ", 1)[0]
    times = {}
    for line in section.splitlines():
        m = re.match(rf"\|\s*`(\d\d[a-z]?_\w+)`\s*\|.*\|\s*({TIME})\s*\|\s*$", line)
        if m:
            times[m.group(1)] = m.group(2)
    return times


def notebook_exercises(path: Path, pattern: re.Pattern = EXERCISE) -> list[tuple[str, str]]:
    """(number, title) of every "**Exercise N — title.**" (or, with ``QUESTION``, every
    "**Question N — title?**") in a notebook's markdown cells."""
    nb = nbformat.read(path, as_version=4)
    return [(m[1], " ".join(m[2].split())) for cell in nb.cells if cell.cell_type == "markdown"
            for m in pattern.finditer(cell.source)]  # a title may wrap over lines


def minutes(figure: str) -> tuple[float, float]:
    lo, _, hi = figure.removesuffix(" min").partition("-")
    return float(lo), float(hi or lo)


def fmt_range(lo: float, hi: float) -> str:
    return f"{lo:.1f} min" if abs(lo - hi) < 1e-9 else f"{lo:.1f}-{hi:.1f} min"


# --- what the guide says --------------------------------------------------------------------

def guide_sections(guide: str) -> dict[str, str]:
    """The guide's per-notebook sections: headings "### NN_name" -> text up to the next heading."""
    sections = {}
    parts = re.split(r"^(#{2,3} .*)$", guide, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        m = re.match(r"### `?(\d\d[a-z]?_\w+)`?\s*$", heading)
        if m:
            sections[m.group(1)] = body
    return sections


def guide_run_times(guide: str) -> list[tuple[str, str]]:
    """(notebook, figure) for every run time the guide quotes for a notebook: the
    "**Run time:**" line of its section and any table row naming it."""
    quoted = []
    for stem, body in guide_sections(guide).items():
        quoted += [(stem, m) for m in re.findall(rf"\*\*Run time:?\*\*:?\s*({TIME})", body)]
    for line in guide.splitlines():
        m = re.match(r"\|\s*`(\d\d[a-z]?_\w+)`\s*\|(.*)$", line)
        if m:
            quoted += [(m.group(1), t) for t in re.findall(TIME, m.group(2))]
    return quoted


# --- the checks -----------------------------------------------------------------------------

def missing_sections(guide: str, names: list[str]) -> list[str]:
    sections = guide_sections(guide)
    problems = [f"no section '### {n}' in the guide" for n in names if n not in sections]
    problems += [f"section '### {s}' names no notebook in notebooks/" for s in sections if s not in names]
    return problems


def wrong_run_times(guide: str, readme: str) -> list[str]:
    table = readme_run_times(readme)
    problems = []
    quoted = guide_run_times(guide)
    for stem in guide_sections(guide):
        if not any(s == stem for s, _ in quoted):
            problems.append(f"{stem}: the guide's section quotes no run time")
    for stem, figure in quoted:
        if table.get(stem) != figure:
            problems.append(f"{stem}: the guide says {figure}, the README's table {table.get(stem)}")
    return problems


def unsourced_minutes(guide: str, sources: list[str], readme: str) -> list[str]:
    """Every "N min" in the guide must appear in a source file, or be the sum of the README's
    notebook table (the one figure the guide computes)."""
    times = readme_run_times(readme)
    lo = sum(minutes(t)[0] for t in times.values())
    hi = sum(minutes(t)[1] for t in times.values())
    allowed = {fmt_range(lo, hi)}
    problems = []
    for figure in sorted(set(re.findall(TIME, guide))):
        if figure not in allowed and not any(re.search(rf"(?<![\d.]){re.escape(figure)}", s) for s in sources):
            problems.append(f"'{figure}' in the guide is in no source and is not the notebooks' total ({fmt_range(lo, hi)})")
    return problems


def missing_exercises(guide: str, exercises: dict[str, list[tuple[str, str]]], kind: str = "Exercise") -> list[str]:
    """Every exercise (or question) of a notebook is listed, under its number and title, in that
    notebook's section, and the section lists no other."""
    sections = guide_sections(guide)
    problems = []
    for stem, found in exercises.items():
        body = sections.get(stem, "")
        for number, title in found:
            if f"{kind} {number} — {title}" not in body:
                problems.append(f"{stem}: '{kind} {number} — {title}' is not in its section")
        listed = re.findall(rf"^\s*- {kind} (\d+) — ", body, flags=re.M)
        if sorted(listed) != sorted(n for n, _ in found):
            problems.append(f"{stem}: the guide lists {kind.lower()}s {listed}, the notebook has {[n for n, _ in found]}")
    return problems


def commands_in(guide: str) -> list[list[str]]:
    return [shlex.split(m) for m in COMMAND.findall(guide)]


@pytest.fixture(scope="module")
def cli_parser() -> argparse.ArgumentParser:
    """The real parser of ``python -m compresslab``."""
    from compresslab import __main__ as cli

    return cli.build_parser()


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def bad_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None if the parser accepts argv, else why not (argparse's message, without exiting)."""
    def error(self, message):
        raise ValueError(message)

    try:
        with mock.patch.object(argparse.ArgumentParser, "error", error):
            parser.parse_args(argv)
    except ValueError as e:
        return str(e)
    except SystemExit as e:  # --help
        return None if e.code == 0 else f"exit {e.code}"
    return None


# --- the tests ------------------------------------------------------------------------------

def test_sources_parse():
    """The README table and the notebooks are read correctly (an empty parse would pass anything)."""
    assert len(NOTEBOOKS) >= 10
    assert set(readme_run_times(README.read_text(encoding="utf-8"))) == set(stems())
    assert all(notebook_exercises(p) for p in NOTEBOOKS), "a notebook without exercise titles"


def test_guide_has_a_section_for_every_notebook():
    assert missing_sections(guide_text(), stems()) == []


def test_run_times_equal_the_readme():
    assert wrong_run_times(guide_text(), README.read_text(encoding="utf-8")) == []


def test_every_minute_figure_has_a_source():
    readme = README.read_text(encoding="utf-8")
    sources = [readme, CHECKPOINTS_README.read_text(encoding="utf-8")]
    assert unsourced_minutes(guide_text(), sources, readme) == []


def test_every_exercise_is_in_the_guide():
    exercises = {p.stem: notebook_exercises(p) for p in NOTEBOOKS}
    assert missing_exercises(guide_text(), exercises) == []


def test_every_question_has_a_model_answer_in_the_guide():
    questions = {p.stem: notebook_exercises(p, QUESTION) for p in NOTEBOOKS}
    assert all(2 <= len(q) <= 3 for q in questions.values()), \
        f"2-3 'why?' questions per notebook: {({stem: len(q) for stem, q in questions.items()})}"
    assert missing_exercises(guide_text(), questions, "Question") == []
    sections = guide_sections(guide_text())
    for stem, found in questions.items():
        for number, title in found:
            answer = sections[stem].split(f"Question {number} — {title}", 1)[-1].split("\n  - ", 1)[0]
            assert len(answer.strip(" :\n")) > 80, f"{stem}: question {number} has no model answer in the guide"


def test_the_guide_names_commands():
    names = {argv[0] for argv in commands_in(guide_text()) if argv}
    assert {"doctor", "run", "datasets", "checkpoints"} <= names


@pytest.mark.parametrize("name", sorted({a[0] for a in commands_in(guide_text()) if a}))
def test_command_is_a_real_subcommand(cli_parser, name):
    assert name in subcommands(cli_parser), \
        f"`python -m compresslab {name}` is in the guide but not a subcommand of {sorted(subcommands(cli_parser))}"


@pytest.mark.parametrize("argv", sorted({" ".join(a) for a in commands_in(guide_text()) if a}))
def test_command_line_parses(cli_parser, argv):
    """Every full command line in the guide is accepted by the parser (flags, choices)."""
    assert bad_command(cli_parser, shlex.split(argv)) is None, f"`python -m compresslab {argv}`"


# --- the checks can fail --------------------------------------------------------------------

def test_checks_catch_a_wrong_guide(cli_parser):
    guide = guide_text()
    readme = README.read_text(encoding="utf-8")
    first, last = stems()[0], stems()[-1]

    dropped = re.sub(rf"^### {last}$", "### 99_not_a_notebook", guide, flags=re.M)
    assert any(last in p for p in missing_sections(dropped, stems()))
    assert any("99_not_a_notebook" in p for p in missing_sections(dropped, stems()))

    right = readme_run_times(readme)[first]
    wrong = guide.replace(f"**Run time:** {right}", "**Run time:** 9.9 min", 1)
    assert wrong != guide and any(first in p for p in wrong_run_times(wrong, readme))
    assert any("9.9 min" in p for p in unsourced_minutes(wrong, [readme], readme))

    number, title = notebook_exercises(NOTEBOOKS[0])[0]
    renamed = guide.replace(f"Exercise {number} — {title}", f"Exercise {number} — something else", 1)
    assert missing_exercises(renamed, {first: notebook_exercises(NOTEBOOKS[0])})
    number, title = notebook_exercises(NOTEBOOKS[0], QUESTION)[0]
    renamed = guide.replace(f"Question {number} — {title}", f"Question {number} — something else", 1)
    assert missing_exercises(renamed, {first: notebook_exercises(NOTEBOOKS[0], QUESTION)}, "Question")

    assert "nosuchcommand" not in subcommands(cli_parser)
    assert bad_command(cli_parser, ["run", "--timeout"]) is not None
    assert bad_command(cli_parser, ["datasets", "--name", "imagenet"]) is not None
    assert bad_command(cli_parser, ["checkpoints", "verify"]) is None
