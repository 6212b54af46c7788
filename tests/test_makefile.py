"""The Makefile's commands, run with a stand-in Python that records what it was asked to do."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def run_make(tmp_path, target, uid, pip_offline_ok=True):
    """`make TARGET` with PYTHON a script that logs its arguments, and `id -u` printing ``uid``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    fake_python = bin_dir / "python"
    fake_python.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        # the offline install fails when asked to, as on a machine that lacks a package
        f'case "$*" in *--no-index*) {"exit 0" if pip_offline_ok else "echo ERROR: No matching distribution found for torch; exit 1"};; esac\n'
        "exit 0\n")
    fake_id = bin_dir / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    for f in (fake_python, fake_id):
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp_path)}
    env.pop("CONDA_PREFIX", None)
    out = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target,
                          f"PYTHON={fake_python}", f"SETUP_LOG={tmp_path / 'setup.log'}"],
                         capture_output=True, text=True, env=env, timeout=60)
    return out, log.read_text().splitlines()


def test_lab_as_root_passes_allow_root_and_says_so(tmp_path):
    out, calls = run_make(tmp_path, "lab", uid=0)
    assert out.returncode == 0, out.stderr
    assert calls[-1] == "-m jupyter lab --allow-root notebooks/"
    assert "running as root" in out.stdout


def test_lab_as_a_normal_user_starts_jupyter_plainly(tmp_path):
    out, calls = run_make(tmp_path, "lab", uid=1000)
    assert out.returncode == 0, out.stderr
    assert calls[-1] == "-m jupyter lab notebooks/"
    assert "root" not in out.stdout


def test_setup_says_why_it_goes_online(tmp_path):
    out, calls = run_make(tmp_path, "setup", uid=1000, pip_offline_ok=False)
    assert out.returncode == 0, out.stderr
    assert any("--no-index" in c for c in calls) and "--no-index" not in calls[-1]
    assert "No matching distribution found for torch" in out.stdout  # the offline error is shown
    assert "CPU-only" in out.stdout and "package index" in out.stdout


def test_setup_offline_is_quiet_and_check_runs_the_fast_lane(tmp_path):
    out, calls = run_make(tmp_path, "check", uid=1000)
    assert out.returncode == 0, out.stderr
    assert "package index" not in out.stdout
    assert calls[-1] == '-m pytest tests -m not slow -q'
