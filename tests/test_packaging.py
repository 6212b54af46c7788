"""One list of dependencies (pyproject.toml); everything else must agree with it."""
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (dev extras)
    import tomli as tomllib

import compresslab

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_the_package_through_pip():
    env = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+-\s+(.+)$", env.split("- pip:")[1], re.M)
    assert pip_lines == ['-e ".[dev]"'], "environment.yml must install the package, not its own list"
    # and lists no package of pyproject.toml a second time, where the two could drift
    conda_deps = re.findall(r"^  - ([A-Za-z][\w-]*)", env.split("dependencies:")[1], re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in
             project["dependencies"] + project["optional-dependencies"]["dev"]}
    assert not names & {d.lower() for d in conda_deps}


def test_pyproject_lists_the_workbook_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert {"torch", "torchvision", "matplotlib", "seaborn", "pandas", "tqdm", "jupyterlab"} <= names
    dev = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["optional-dependencies"]["dev"]}
    assert {"pytest", "nbval"} <= dev


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert ci.strip().splitlines()[-1] == "make test"


def test_import_is_light():
    out = subprocess.run([sys.executable, "-c", "import compresslab; print(compresslab.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == compresslab.__version__


def code_of(source: str) -> str:
    """Python source without its comments and strings (docstrings may name any API)."""
    import io
    import tokenize

    drop = (tokenize.COMMENT, tokenize.STRING)
    if hasattr(tokenize, "FSTRING_MIDDLE"):
        drop += (tokenize.FSTRING_MIDDLE,)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return " ".join(t.string for t in tokens if t.type not in drop).replace(" . ", ".").replace(" (", "(")


# APIs that moved between torch releases or are private: each used in one module only, so that a
# torch upgrade breaks (and is fixed in) one function instead of every notebook.
MOVING_APIS = {
    "torch.load(": "zoo.py",                   # weights_only's default changed in torch 2.6
    "weights_only =": "zoo.py",
    "torch.onnx.export(": "deploy.py",          # TorchScript -> torch.export-based exporter
    "torch.export.": "deploy.py",
    "onnxruntime.quantization": "deploy.py",
    "FlopCounterMode": "metrics.py",            # torch.utils.flop_counter, new in 2.1, still evolving
    "_is_mkldnn_bf16_supported": "train.py",    # private
    "torch.ao.": None,                          # torch.ao.quantization is deprecated: not used at all
}


def test_moving_apis_sit_behind_one_compresslab_function():
    import nbformat

    sources = {p.name: p.read_text() for p in (ROOT / "compresslab").rglob("*.py")}
    for nb in (ROOT / "notebooks").glob("[0-9]*.ipynb"):
        cells = nbformat.read(nb, 4).cells
        sources[nb.name] = "\n".join(c.source for c in cells if c.cell_type == "code" and
                                     not c.source.lstrip().startswith(("%", "!")))
    code = {name: code_of(src) for name, src in sources.items()}
    assert "torch.load(" in code["zoo.py"]  # the scanner sees real calls
    for api, home in MOVING_APIS.items():
        users = sorted(name for name, text in code.items() if api in text)
        assert users == ([home] if home else []), f"{api} is used in {users}; keep it in {home or 'no module'}"


def notebook_code(path) -> str:
    import nbformat

    return "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")


def package_modules() -> list[str]:
    """compresslab's modules and subpackages, by the name a student imports."""
    pkg = ROOT / "compresslab"
    names = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")}
    names |= {p.parent.name for p in pkg.glob("*/__init__.py")}
    return sorted(names)


def test_package_docstring_lists_every_module():
    missing = [m for m in package_modules() if f":mod:`compresslab.{m}`" not in compresslab.__doc__]
    assert not missing, f"add these modules to the package docstring (compresslab/__init__.py): {missing}"


def test_notebooks_call_the_workflow_from_the_package_root():
    """One public path: what the root exports (cl.fit, cl.load_pretrained, ...) is never called
    through its module in a notebook (zoo.load_pretrained, train.fit, from compresslab.models import ...)."""
    names = "|".join(compresslab.__all__)
    through_module = re.compile(rf"(?<![\w.])(?:data|models|train|zoo)\.({names})\b")
    imported = re.compile(rf"from compresslab\.\w+ import .*\b({names})\b")
    for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        code = code_of(notebook_code(nb))
        hits = through_module.findall(code) + imported.findall(notebook_code(nb))
        assert not hits, f"{nb.name} calls {sorted(set(hits))} through a module: use cl.<name>"


def test_the_no_cuda_runtime_note_is_dropped_and_nothing_else():
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    log.addHandler(handler)
    try:
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        log.warning("some other warning")
    finally:
        log.removeHandler(handler)
    assert records == ["some other warning"]


def test_no_committed_notebook_shows_the_no_cuda_runtime_note():
    for nb in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        assert "No CUDA runtime is found" not in nb.read_text(), nb.name


# Python 3.10 is supported (requires-python): no 3.11-only syntax or standard-library names in the
# package, the tests or the notebooks. The unit tests also ran under a real 3.10 interpreter (README).
PY311_ONLY_MODULES = {"tomllib", "wsgiref.types"}
PY311_ONLY_NAMES = re.compile(r"\b(typing\.Self|StrEnum|datetime\.UTC|TaskGroup|file_digest|"
                              r"contextlib\.chdir|ExceptionGroup|math\.cbrt|math\.exp2)\b")


def unguarded_imports(tree) -> set[str]:
    """Modules imported outside a ``try: ... except ImportError`` fallback."""
    import ast

    guarded = set()
    for node in ast.walk(tree):
        caught = {n.id for h in getattr(node, "handlers", []) if h.type is not None
                  for n in ast.walk(h.type) if isinstance(n, ast.Name)}
        if isinstance(node, ast.Try) and caught & {"ImportError", "ModuleNotFoundError"}:
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_code_parses_and_imports_under_python_3_10():
    import ast

    floor = tuple(int(x) for x in re.search(r'requires-python = ">=(\d+)\.(\d+)"',
                                            (ROOT / "pyproject.toml").read_text()).groups())
    assert floor == (3, 10)
    files = {p: p.read_text() for p in [*(ROOT / "compresslab").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]}
    for nb in (ROOT / "notebooks").rglob("*.ipynb"):
        files[nb] = "\n".join(line for line in notebook_code(nb).splitlines()
                              if not line.lstrip().startswith(("%", "!")))
    for path, src in files.items():
        tree = ast.parse(src, filename=str(path), feature_version=floor)  # SyntaxError: file and line
        assert not unguarded_imports(tree) & PY311_ONLY_MODULES, f"{path.name} imports a 3.11-only module"
        hit = PY311_ONLY_NAMES.search(code_of(src))
        assert not hit, f"{path.name} uses {hit.group(0)}, new in Python 3.11"


def test_long_modules_say_why_at_their_top():
    """One sitting per module: over ~350 lines, the module docstring says why it is not split."""
    for path in sorted((ROOT / "compresslab").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 360:
            assert "on purpose" in "\n".join(text.splitlines()[:12]), \
                f"{path.name} has {text.count(chr(10))} lines: split it, or say at its top why not"
