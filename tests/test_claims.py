"""Every measured number stated in a notebook's markdown is shown by one of its outputs.

The project's standard: every number in a notebook comes from running the code; a takeaway or
verdict that depends on a measurement is computed from it, or worded as what to look for. This
test enforces the markdown half of it, with pure text processing (no kernel, no torch).

What counts as a *stated measurement* (markdown cells only):

* a percentage, ``88.3%``;
* a ratio, ``1.6x``, ``12×``, ``17 times`` (not a shape such as ``3×3`` or ``784 × 300``);
* a count of errors, ``146 errors``, ``67 test errors``;
* a size, ``120 KB`` (also KiB, kB, MB, MiB, GB, GiB);
* accuracy points, ``1.2 points``, ``±1 point``.

A range or list before one unit gives every member the unit: ``90-95%``, ``0.3 to 0.7 points``,
``92.73 / 81.61 / 16.23%``.

Never read: LaTeX math (``$...$``, ``$$...$$``), inline code and code blocks, the first cell's
``**Run time**`` paragraph, a heading's section number (``## 4 ·``), and a bibliography (from a
``**References**`` line to the end of its cell).

A stated number is **a setting**, not a measurement, when the same value is a number literal in
some code cell's source of that notebook (``amount=0.9`` makes ``90%`` a setting: a percentage
also matches its fraction).

A stated number is **supported** when some output of that notebook (stream text; text/plain,
text/markdown or text/html of a display_data / execute_result) shows a number that rounds to it
at the precision it is written with: ``88.3%`` is supported by ``88.31`` or ``0.8831``, ``1.6x``
by ``1.57`` or ``1.62``, ``12x`` by ``11.8``. Percentages and points also match a fraction
(``0.883`` <-> ``88.3%``); signs are ignored (a loss of ``-1.2`` supports ``1.2 points``).

A stated number is **another source's figure**, exempt, when the text around it names that
source, with one of these markers (the exemption rule):

* the scope is the *sentence* it sits in, or the whole *list item*, or the whole *table row*;
  a table column whose header has a marker exempts that column;
* the markers: ``et al.``, ``paper`` / ``papers`` / ``paper's``, ``report`` / ``reports`` /
  ``reported``,
  ``the authors``, ``Table N`` / ``Tables N``, ``Fig`` / ``Figure``, and a year in parentheses
  (``(2015)``, ``(Han et al. 2015)``, ``(ICLR 2019)``).

Everything else must be supported. A sentence that mixes the paper's figures with our own
measurements is exempt as a whole, so keep a measured number out of such a sentence, or point
at the output that shows it.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

# --------------------------------------------------------------------------------------------
# Numbers in text
# --------------------------------------------------------------------------------------------

NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
SEP = r"\s*(?:-|–|—|/|\bto\b)\s*"
UNITS = {
    "%": r"\s?%",
    "x": r"\s?[x×](?![\w×]|\s*\d)|\s+times\b",
    "errors": r"\s+(?:test\s+)?errors?\b",
    "KB": r"\s?(?:KB|KiB|kB|MB|MiB|GB|GiB)\b",
    "points": r"\s+(?:accuracy\s+)?points?\b",
}
CLAIM = re.compile(
    r"(?<![\w.,])(?P<chain>(?:%s)(?:%s(?:%s))*)(?P<unit>%s)"
    % (NUM, SEP, NUM, "|".join(f"(?:{u})" for u in UNITS.values())))
ONE_NUMBER = re.compile(NUM)
UNIT_OF = [(name, re.compile(pattern)) for name, pattern in UNITS.items()]

OUTPUT_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+")
CODE_NUMBER = re.compile(r"(?<![\w.])(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

MARKER = re.compile(
    r"et al\.|\bpapers?\b|\bpaper's\b|\breport(?:s|ed)?\b|\bthe authors\b|\bTables?\s+\d"
    r"|\bFig(?:\.|ure)?\b|\([^()]*\b(?:19|20)\d\d\b[^()]*\)",
    re.IGNORECASE)
ABBREVIATIONS = ("al", "e.g", "i.e", "vs", "fig", "cf", "no", "eq", "approx", "resp")


def _value(text):
    return float(text.replace(",", ""))


def _decimals(text):
    return len(text.split(".")[1]) if "." in text else 0


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# --------------------------------------------------------------------------------------------
# Markdown: blocks, sentences, claims
# --------------------------------------------------------------------------------------------

def _blank(match):
    return " … "


def clean_markdown(text, first_cell=False):
    """The prose of a markdown cell: math, code and the bibliography blanked out."""
    text = re.sub(r"```.*?```", _blank, text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", _blank, text, flags=re.S)
    text = re.sub(r"(?<!\\)\$.+?(?<!\\)\$", _blank, text, flags=re.S)
    text = re.sub(r"`[^`]*`", _blank, text)
    text = re.sub(r"<[^>\n]*>", " ", text)                            # html tags, not their text
    text = re.sub(r"\]\([^)\s]*\)", "]", text)                         # link targets
    text = re.sub(r"(?m)^\*\*References\*\*.*", "", text, flags=re.S)
    text = re.sub(r"(?m)^(\s*#+\s*)\d+(?:\.\d+)*\s*·", r"\1", text)    # section numbers
    if first_cell:
        text = re.sub(r"(?ms)^\*\*Run time\*\*.*?(?:\n\s*\n|\Z)", "\n\n", text)
    return text


def _sentences(text):
    """Split a paragraph at '.', '!' or '?' followed by space, except after an abbreviation."""
    out, start = [], 0
    for m in re.finditer(r"[.!?][*_\"')\]]*\s+", text):
        words = text[start:m.start()].split()
        last = words[-1].lower().lstrip("(*_") if words else ""
        if last in ABBREVIATIONS:
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _table_cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def scopes(text):
    """Yield (scope_text, exempt) pairs: sentences of paragraphs, list items, table rows."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("|"):                       # a table
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            header = _table_cells(rows[0])
            marked_cols = {k for k, h in enumerate(header) if MARKER.search(h)}
            for row in rows:
                if re.fullmatch(r"[\s|:\-]*", row):
                    continue
                if MARKER.search(row):
                    yield row, True
                    continue
                for k, cell in enumerate(_table_cells(row)):
                    yield cell, k in marked_cols
        elif re.match(r"\s*(?:[-*+]|\d+\.)\s", line):              # a list item
            item = [line]
            i += 1
            while (i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("|")
                   and not re.match(r"\s*(?:[-*+]|\d+\.)\s|\s*#", lines[i])):
                item.append(lines[i])
                i += 1
            item = " ".join(s.strip() for s in item)
            if MARKER.search(item):
                yield item, True
            else:
                for s in _sentences(item):
                    yield s, False
        elif line.lstrip().startswith("#"):                        # a heading
            yield line.strip(), bool(MARKER.search(line))
            i += 1
        else:                                                      # a paragraph
            para = []
            while (i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#"))
                   and not re.match(r"\s*(?:[-*+]|\d+\.)\s", lines[i])):
                para.append(lines[i].strip())
                i += 1
            for s in _sentences(" ".join(para)):
                yield s, bool(MARKER.search(s))


def claims_in(text):
    """The stated measurements of a text: (written number, unit) pairs, in order."""
    found = []
    for m in CLAIM.finditer(text):
        unit = next(name for name, rx in UNIT_OF if rx.fullmatch(m.group("unit")))
        for number in ONE_NUMBER.findall(m.group("chain")):
            found.append((number, unit))
    return found


# --------------------------------------------------------------------------------------------
# Code and outputs
# --------------------------------------------------------------------------------------------

def output_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(_source({"source": out.get("text", "")}))
        elif out.get("output_type") in ("display_data", "execute_result"):
            data = out.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/html"):
                if mime in data:
                    parts.append(_source({"source": data[mime]}))
    return "\n".join(parts)


def output_numbers(nb):
    values = set()
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            text = output_text(cell)
            for token in OUTPUT_NUMBER.findall(text):
                values.add(_value(token))
                if "," in token:                         # "100,200" may be a list, not 100200
                    values.update(float(p) for p in token.split(",") if p)
    return values


def code_numbers(nb):
    values = set()
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            src = re.sub(r"(?<=\d)_(?=\d)", "", _source(cell))
            for token in CODE_NUMBER.findall(src):
                try:
                    values.add(float(token))
                except ValueError:
                    pass
    return values


def _close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def is_setting(number, unit, code):
    v = _value(number)
    candidates = [v, v / 100] if unit == "%" else [v]
    return any(_close(c, x) for c in candidates for x in code)


def is_supported(number, unit, shown):
    v, d = _value(number), _decimals(number)
    half = 0.5 * 10 ** -d + 1e-9
    scales = (1, 100) if unit in ("%", "points") else (1,)
    return any(abs(abs(o) * s - v) <= half for o in shown for s in scales)


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------

def check(nb):
    """Every stated measurement of a notebook, each as a dict with its verdict.

    verdict: 'supported', 'setting', 'source' (another source's figure) or 'unsupported'.
    """
    shown, code = output_numbers(nb), code_numbers(nb)
    results = []
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "markdown":
            continue
        text = clean_markdown(_source(cell), first_cell=index == 0)
        for scope, exempt in scopes(text):
            for number, unit in claims_in(scope):
                if exempt:
                    verdict = "source"
                elif is_supported(number, unit, shown):
                    verdict = "supported"
                elif is_setting(number, unit, code):
                    verdict = "setting"
                else:
                    verdict = "unsupported"
                results.append({"cell": index, "number": number, "unit": unit,
                                "sentence": " ".join(scope.split()), "verdict": verdict})
    return results


def unsupported(nb):
    return [r for r in check(nb) if r["verdict"] == "unsupported"]


def _shown(r):
    return r["number"] + ("%" if r["unit"] == "%" else "x" if r["unit"] == "x" else " " + r["unit"])


def read_notebook(path, tries=5):
    """Read a notebook's JSON; retry while another process is rewriting it."""
    for attempt in range(tries):
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if attempt == tries - 1:
                raise
            time.sleep(1)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stated_measurement_is_shown_by_an_output(path):
    bad = unsupported(read_notebook(path))
    if bad:
        pytest.fail(
            f"{path.name}: {len(bad)} number(s) in markdown that no output shows (point at the "
            "output, word it as what to look for, or mark it as a paper's figure):\n"
            + "\n".join(f"  cell {r['cell']}: {_shown(r)} in: {r['sentence']}" for r in bad),
            pytrace=False)


def _planted(markdown, output):
    import nbformat

    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("evaluate(pruned)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    nb.cells = [nbformat.v4.new_markdown_cell("# Planted\n"), code, nbformat.v4.new_markdown_cell(markdown)]
    return nb


def test_checker_finds_a_planted_contradiction():
    bad = unsupported(_planted("Pruning keeps 97.3% accuracy.", "accuracy 95.10%\n"))
    assert [(r["cell"], r["number"], r["unit"]) for r in bad] == [(2, "97.3", "%")]
    assert "Pruning keeps 97.3% accuracy." in bad[0]["sentence"]


def test_checker_accepts_the_shown_value_at_the_stated_precision():
    assert unsupported(_planted("Pruning keeps 97.3% accuracy.", "accuracy 97.31%\n")) == []
    assert unsupported(_planted("Pruning keeps 97.3% accuracy.", "accuracy 0.9731\n")) == []
    assert unsupported(_planted("It is 1.6x faster.", "speed-up 1.57\n")) == []
    assert unsupported(_planted("It is 1.6x faster.", "speed-up 1.71\n")) != []


def test_checker_exempts_a_papers_figure_but_not_our_own():
    assert unsupported(_planted("(Han et al. 2015) report 97.3%.", "accuracy 95.10%\n")) == []
    assert unsupported(_planted("The paper gets 97.3%.", "accuracy 95.10%\n")) == []
    table = "| model | paper | ours |\n|---|---|---|\n| LeNet | 97.3% | 95.1% |\n"
    assert unsupported(_planted(table, "accuracy 95.10%\n")) == []
    assert [r["number"] for r in unsupported(_planted(table, "accuracy 94.20%\n"))] == ["95.1"]
    two = "Han et al. reach 97.3%. Ours keeps 96.0% of the weights."
    assert [r["number"] for r in unsupported(_planted(two, "accuracy 95.10%\n"))] == ["96.0"]


def test_checker_ignores_math_code_settings_and_shapes():
    md = ("Set $s = 97.3\\%$ and `amount=0.973`; a 3×3 conv, 784 × 300 weights. We prune 90% "
          "of the weights.\n\n```\n97.3%\n```\n")
    nb = _planted(md, "accuracy 95.10%\n")
    nb.cells[1].source = "prune(model, amount=0.9)"
    assert check(nb) == [{"cell": 2, "number": "90", "unit": "%", "verdict": "setting",
                          "sentence": "We prune 90% of the weights."}]
