"""Will the workbook run on this machine?  ``python -m compresslab doctor``

Run it before a lab (or when something breaks). Each check prints one line:

    ok    all is well
    note  information (the hardware found, say)
    warn  the workbook runs, but look at this first (e.g. a dataset still to download)
    FAIL  the workbook cannot run until this is fixed; the line below says how

and the command exits with 1 if anything FAILed. The network is touched only when a
dataset cache is missing, to tell whether the download a notebook would start can work.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import data

PYPROJECT = data.ROOT / "pyproject.toml"
# Where torchvision downloads each dataset from, and roughly how much it fetches.
DOWNLOADS = {"mnist": ("ossci-datasets.s3.amazonaws.com", 11), "cifar10": ("www.cs.toronto.edu", 170)}
SETUP = 'pip install -e ".[dev]"  (or `make lab`, which does it)'


@dataclass
class Finding:
    status: str  # "ok", "note", "warn" or "FAIL"
    what: str
    fix: str = ""


def requirements() -> tuple[str, list[Requirement], list[Requirement]]:
    """``requires-python``, the dependencies and the dev extras (tests) from pyproject.toml.

    Read from the file rather than from the installed metadata, which is stale when someone
    pulls a newer workbook without reinstalling it.
    """
    try:
        import tomllib  # Python >= 3.11
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        core, dev = project["dependencies"], project["optional-dependencies"]["dev"]
        requires = project["requires-python"]
    except (ImportError, OSError, KeyError):  # Python 3.10, or an installed copy without the file
        requires = metadata.metadata("compresslab")["Requires-Python"]
        listed = metadata.requires("compresslab")
        core = [r for r in listed if "extra ==" not in r]
        dev = [r.split(";")[0] for r in listed if 'extra == "dev"' in r]
    return requires, [Requirement(r) for r in core], [Requirement(r) for r in dev]


def check_python(requires: str) -> Finding:
    version = platform.python_version()
    if Version(version) in SpecifierSet(requires):
        return Finding("ok", f"Python {version} ({sys.executable})")
    return Finding("FAIL", f"Python {version}, the workbook needs {requires}",
                   "install a newer Python (python.org or conda), then set the workbook up again")


def check_packages(reqs: list[Requirement], dev: list[Requirement] = ()) -> list[Finding]:
    """Every dependency installed, at or above the oldest version pyproject.toml allows.
    A missing dependency stops the notebooks (FAIL); a missing test tool only the tests (warn)."""
    found, problems = {}, []
    for req in [*reqs, *dev]:
        status = "FAIL" if req in reqs else "warn"
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(Finding(status, f"{req.name} is not installed (needs {req.specifier})", SETUP))
            continue
        found[req.name] = version
        if not req.specifier.contains(version, prereleases=True):
            problems.append(Finding(status, f"{req.name} {version} is older than the workbook supports ({req})",
                                    f'pip install "{req}"'))
    shown = ", ".join(f"{n} {found[n]}" for n in ("torch", "torchvision", "onnxruntime") if n in found)
    ok = [Finding("ok", f"{len(found)} of {len(reqs) + len(dev)} packages installed ({shown})")] if found else []
    return ok + problems


CONSTRAINTS = data.ROOT / "constraints.txt"


def dependency_closure(reqs: list[Requirement]) -> dict[str, str]:
    """Name -> installed version of every distribution that ``reqs`` need, directly or not."""
    from packaging.utils import canonicalize_name

    pins, todo = {}, [(r, "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        pins[name] = dist.version
        todo += [(Requirement(r), e) for r in dist.requires or [] for e in ("", *req.extras)]
    return dict(sorted(pins.items()))


def pinned_constraints() -> str:
    """constraints.txt: the versions installed here, the set the suite last passed with.
    Pinned only for this Python minor version: elsewhere pip resolves freely within pyproject's floors."""
    _, reqs, dev = requirements()
    python = ".".join(platform.python_version_tuple()[:2])
    lines = [f'{name}=={version}; python_version == "{python}"'
             for name, version in dependency_closure(reqs + dev).items() if name != "compresslab"]
    return ("# The package versions `make test` last passed with (`python -m compresslab doctor --pin`).\n"
            "# `make setup` installs with these; pin a class to them with pip's -c constraints.txt.\n"
            + "\n".join(lines) + "\n")


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    """The pins of constraints.txt that apply to this Python."""
    pins = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[req.name] = str(req.specifier).removeprefix("==")
    return pins


def check_constraints(path: Path = CONSTRAINTS) -> Finding:
    """Are the installed versions the ones the suite was last run with?"""
    pins = read_constraints(path)
    if not pins:
        return Finding("note", "no tested versions pinned for this Python: versions resolved within pyproject.toml")
    off = [f"{n} {metadata.version(n)} (tested {v})" for n, v in pins.items()
           if _installed(n) and metadata.version(n) != v]
    if not off:
        return Finding("ok", f"the {len(pins)} package versions the suite was last run with (constraints.txt)")
    return Finding("warn", f"{len(off)} packages differ from the tested versions: {', '.join(off[:4])}"
                           f"{' ...' if len(off) > 4 else ''}", 'pip install -c constraints.txt -e ".[dev]"')


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def check_torch() -> list[Finding]:
    """torch and torchvision import together; the hardware torch will use."""
    try:
        import torch
        import torchvision  # noqa: F401  (a torchvision built for another torch fails here)
    except Exception as e:  # noqa: BLE001  any import failure means the same to a student
        return [Finding("FAIL", f"torch / torchvision do not import: {type(e).__name__}: {e}",
                        "install a torchvision built for your torch (pytorch.org lists the pairs), then "
                        + SETUP)]
    from .train import get_device
    device = get_device()
    name = {"cuda": lambda: f"CUDA, {torch.cuda.get_device_name(0)}", "mps": lambda: "Apple MPS",
            "cpu": lambda: "no GPU or MPS: CPU only, which every notebook is sized for"}[device.type]()
    from .hardware import summary
    # The CPU decides which int8 and bf16 kernels run, so speed-ups differ between machines.
    return [Finding("note", f"{os.cpu_count()} CPU cores, torch uses {torch.get_num_threads()} threads; "
                            f"device: {name}"), Finding("note", summary())]


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_dataset(name: str) -> Finding:
    """The cache a notebook would read: layout checked and sha256 printed (compare it across
    lab machines); or, if there is none, whether the download could work."""
    path = data.find_cache(name)
    if path is not None:
        try:
            arrays = data.read_cache(path, name)
        except ValueError as e:
            return Finding("FAIL", f"{name}: {e}", f"delete {path} and run `python -m compresslab datasets`, "
                                                   "or import a good copy with `datasets --import`")
        label = data.dataset_label(name)
        return Finding("ok", f"{name}: {path} ({label}, {len(arrays['y_train']):,} train + "
                             f"{len(arrays['y_test']):,} test images), sha256 {data.cached_sha256(path, path.stat().st_mtime)}")
    host, mb = DOWNLOADS[name]
    fix = (f"copy {name}.npz from a machine that has it and run `python -m compresslab datasets --import "
           f"{name}.npz --name {name}`, or set {data.ENV_VAR} to a folder holding it")
    free_mb = shutil.disk_usage(nearest_existing(data.DATA_DIR)).free / 2**20
    if free_mb < 3 * mb:
        return Finding("FAIL", f"{name}: no cache, and only {free_mb:.0f} MB free for its {mb} MB download", fix)
    if not reachable(host):
        return Finding("FAIL", f"{name}: no cache in {[str(p) for p in data.cache_candidates(name)]}, "
                               f"and {host} cannot be reached to download it", fix)
    return Finding("warn", f"{name}: not downloaded yet; the first notebook that needs it downloads {mb} MB "
                           f"from {host}", "run `python -m compresslab datasets` now, not in class")


def nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_writable(folder: Path) -> Finding:
    """The workbook writes dataset caches, ONNX files and results into data/."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return Finding("ok", f"{folder} is writable")
    except OSError as e:
        return Finding("FAIL", f"cannot write into {folder} ({e.strerror or e})",
                       "clone the workbook into a folder you own (e.g. your home directory)")


def check_checkpoints(directory: Path | None = None) -> list[Finding]:
    """Every zoo checkpoint: checksum as in the manifest, loads with weights_only=True into its model."""
    from . import zoo
    problems = []
    for name in zoo.RECIPES:
        try:
            zoo.load_pretrained(name, "cpu", directory or zoo.CHECKPOINT_DIR)
        except Exception as e:  # noqa: BLE001  the zoo's errors already say how to fix them
            problems.append(Finding("FAIL", f"checkpoint {name}: {e}",
                                    f"`git checkout data/checkpoints` or `python -m compresslab checkpoints "
                                    f"retrain {name}`"))
    n_ok = len(zoo.RECIPES) - len(problems)
    return [Finding("ok", f"{n_ok} of {len(zoo.RECIPES)} checkpoints match their checksums and load "
                          "(test accuracies: `python -m compresslab checkpoints verify`, ~2 min)")] + problems


def check_kernel() -> Finding:
    """nbval, `run` and JupyterLab start the kernel named in the notebooks: python3."""
    from jupyter_client.kernelspec import KernelSpecManager
    if "python3" in KernelSpecManager().find_kernel_specs():
        return Finding("ok", "Jupyter kernel python3 found")
    return Finding("FAIL", "no Jupyter kernel named python3", "python -m ipykernel install --user")


def diagnose() -> list[Finding]:
    requires, reqs, dev = requirements()
    findings = [check_python(requires), *check_packages(reqs, dev), check_constraints(), *check_torch(),
                check_kernel()]
    findings += [check_dataset(name) for name in data.STATS]
    findings += [check_writable(data.DATA_DIR), *check_checkpoints()]
    return findings


def main() -> int:
    """Print every finding, fixes under the problems; exit code 1 if the workbook cannot run."""
    findings = diagnose()
    for f in findings:
        print(f"{f.status:5s} {f.what}")
        if f.fix:
            print(f"      fix: {f.fix}")
    failed = [f for f in findings if f.status == "FAIL"]
    warned = [f for f in findings if f.status == "warn"]
    if failed:
        print(f"\n{len(failed)} problem(s): the workbook cannot run on this machine until they are fixed.")
        return 1
    print(f"\nThe workbook can run on this machine{f' ({len(warned)} warning(s) above)' if warned else ''}.")
    return 0

