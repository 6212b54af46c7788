"""`python -m compresslab doctor`: each check finds what it is meant to find, with a fix."""
import shutil

import pytest

from packaging.requirements import Requirement

from compresslab import __main__ as cli
from compresslab import data, doctor, zoo
from tests.conftest import fake_arrays


@pytest.mark.slow
def test_doctor_passes_on_this_machine_without_touching_the_network(no_network, capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "can run on this machine" in out
    for name in ("mnist", "cifar10"):
        digest = data.sha256(data.find_cache(name))
        assert f"{name}: " in out and digest in out  # the checksum an instructor compares across machines
    assert no_network == []  # caches present: no download, so no reachability check either


def test_missing_dataset_offline_fails_with_the_import_command(isolated_data, no_network):
    f = doctor.check_dataset("mnist")
    assert f.status == "FAIL" and "cannot be reached" in f.what
    assert "datasets --import mnist.npz --name mnist" in f.fix and data.ENV_VAR in f.fix
    assert no_network  # this time the network was asked


def test_missing_dataset_online_is_a_warning_to_download_before_class(isolated_data, monkeypatch):
    monkeypatch.setattr(doctor, "reachable", lambda host, *a, **k: True)
    f = doctor.check_dataset("cifar10")
    assert f.status == "warn" and "170 MB" in f.what and "compresslab datasets" in f.fix


def test_cached_dataset_is_checked_and_a_corrupt_one_fails(isolated_data):
    path = data.DATA_DIR / "mnist.npz"
    data.write_cache(path, fake_arrays("mnist"))
    f = doctor.check_dataset("mnist")
    assert f.status == "ok" and data.sha256(path) in f.what and "50 train" in f.what
    path.write_bytes(b"not a zip file")
    f = doctor.check_dataset("mnist")
    assert f.status == "FAIL" and f"delete {path}" in f.fix


def test_versions_below_the_supported_ones_fail_and_missing_test_tools_warn():
    problems = {f.what.split()[0]: f for f in doctor.check_packages(
        [Requirement("torch>=99.0"), Requirement("not-a-real-package>=1")], [Requirement("also-not-real>=1")])
        if f.status != "ok"}
    assert problems["torch"].status == "FAIL" and 'pip install "torch>=99.0"' in problems["torch"].fix
    assert problems["not-a-real-package"].status == "FAIL" and "pip install -e" in problems["not-a-real-package"].fix
    assert problems["also-not-real"].status == "warn"
    assert doctor.check_python(">=99").status == "FAIL"
    assert doctor.check_python(">=3.10").status == "ok"


def test_requirements_are_those_of_pyproject():
    requires, core, dev = doctor.requirements()
    assert requires == ">=3.10"
    assert {"torch", "torchvision", "ipywidgets", "onnxruntime"} <= {r.name for r in core}
    assert {"nbval", "hypothesis"} <= {r.name for r in dev}


def test_unwritable_data_folder_fails(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    f = doctor.check_writable(blocker / "data")  # a folder cannot be made under a file, even by root
    assert f.status == "FAIL" and "folder you own" in f.fix
    assert doctor.check_writable(tmp_path / "data").status == "ok"


def test_tampered_checkpoint_is_named_with_its_fix(tmp_path):
    shutil.copytree(zoo.CHECKPOINT_DIR, tmp_path, dirs_exist_ok=True)
    target = tmp_path / zoo.read_manifest(tmp_path)["lenet300"]["file"]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    findings = doctor.check_checkpoints(tmp_path)
    failed = [f for f in findings if f.status == "FAIL"]
    assert len(failed) == 1 and "lenet300" in failed[0].what and "corrupt" in failed[0].what
    assert "retrain lenet300" in failed[0].fix
    assert findings[0].what.startswith(f"{len(zoo.RECIPES) - 1} of {len(zoo.RECIPES)}")


def test_exit_code_is_one_when_the_workbook_cannot_run(isolated_data, no_network, capsys):
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "FAIL  mnist" in out and "fix: copy mnist.npz" in out and "cannot run" in out


def test_constraints_pin_every_dependency_and_match_what_is_installed():
    """constraints.txt is the tested set (`make setup` installs it): complete, and what runs here."""
    from packaging.utils import canonicalize_name

    _, reqs, dev = doctor.requirements()
    pins = doctor.read_constraints()
    if not pins:
        pytest.skip("constraints.txt pins no versions for this Python")
    missing = [r.name for r in reqs + dev if r.marker is None and canonicalize_name(r.name) not in pins]
    assert not missing, "regenerate: python -m compresslab doctor --pin > constraints.txt"
    finding = doctor.check_constraints()
    assert finding.status == "ok", f"{finding.what}; fix: {finding.fix}"


def test_constraints_check_names_a_package_off_its_pin(tmp_path):
    pinned = tmp_path / "constraints.txt"
    pinned.write_text('# tested\npytest==0.0.1; python_version >= "3"\nnot-installed-pkg==1.0\n')
    finding = doctor.check_constraints(pinned)
    assert finding.status == "warn" and "pytest" in finding.what and "tested 0.0.1" in finding.what
    assert "constraints.txt" in finding.fix
