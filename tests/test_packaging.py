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
