"""One list of dependencies (pyproject.toml); everything else must agree with it."""
import re
import subprocess
import sys
from pathlib import Path

import tomllib

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

    sources = {p.name: p.read_text() for p in (ROOT / "compresslab").glob("*.py")}
    for nb in (ROOT / "notebooks").glob("[0-9]*.ipynb"):
        cells = nbformat.read(nb, 4).cells
        sources[nb.name] = "\n".join(c.source for c in cells if c.cell_type == "code" and
                                     not c.source.lstrip().startswith(("%", "!")))
    code = {name: code_of(src) for name, src in sources.items()}
    assert "torch.load(" in code["zoo.py"]  # the scanner sees real calls
    for api, home in MOVING_APIS.items():
        users = sorted(name for name, text in code.items() if api in text)
        assert users == ([home] if home else []), f"{api} is used in {users}; keep it in {home or 'no module'}"
