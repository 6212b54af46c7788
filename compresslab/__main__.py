"""The workbook's command line: ``python -m compresslab <command> ...``.

    python -m compresslab doctor                       # will the workbook run here? every problem with its fix
    python -m compresslab datasets                     # load (download once) and describe both datasets
    python -m compresslab datasets --import FILE.npz   # install an .npz handed out by an instructor
    python -m compresslab checkpoints verify           # checksums + test accuracy of the zoo
    python -m compresslab checkpoints retrain [NAMES] [--force] [--out DIR]
    python -m compresslab experiments kd-cifar [--force] [--out DIR]   # long runs notebooks read
    python -m compresslab exercises                    # regenerate notebooks/exercises/
    python -m compresslab exercises --nbgrader COURSE [00 ...]   # an autograded nbgrader course
    python -m compresslab run [07 08 ...]              # execute notebooks headless: status + run time
    python -m compresslab report [--readme]            # the headline results as a Markdown table
    python -m compresslab bench [epoch|structured|int8|tucker|notebooks|avx2]   # speed figures (avx2: emulated)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_doctor(args) -> int:
    from . import doctor

    if args.pin:
        print(doctor.pinned_constraints(), end="")
        return 0
    return doctor.main()


def cmd_datasets(args) -> int:
    from . import data

    if args.import_file:
        target = data.import_npz(args.import_file, args.name, force=args.force)
        print(f"installed {target}")
        return 0
    for name in ("mnist", "cifar10"):
        ds = data.load_dataset(name, download=not args.offline)
        print(f"{data.dataset_label(name):30s} train {tuple(ds.x_train.shape)} test {tuple(ds.x_test.shape)} "
              f"from {data.find_cache(name)}")
    return 0


def cmd_checkpoints(args) -> int:
    from . import zoo

    if args.action == "verify":
        return 0 if zoo.verify() else 1
    zoo.retrain(args.names, args.out, args.force, args.seed, args.device)
    return 0


def cmd_experiments(args) -> int:
    from . import experiments

    experiments.run(args.name, args.out or experiments.RESULTS_DIR, args.force, args.device)
    return 0


def cmd_exercises(args) -> int:
    from . import exercises

    if args.notebooks and not args.nbgrader:
        raise ValueError("notebook names go with --nbgrader COURSE; plain `exercises` regenerates every student copy.")
    if args.nbgrader:
        paths = [p for p in exercises.notebook_paths(args.notebooks) if p in exercises.notebooks_with_exercises()]
        for path in exercises.write_nbgrader_course(args.nbgrader, paths, args.assignment):
            print(f"wrote {path}")
        print(f"next: cd {args.nbgrader} && nbgrader generate_assignment {args.assignment}")
        return 0
    for path in exercises.write_student_copies():
        print(f"wrote {path.relative_to(exercises.ROOT)}")
    return 0


def cmd_run(args) -> int:
    from . import bench

    rows = bench.bench_notebooks(bench.notebook_paths(args.notebooks), timeout=args.timeout,
                                 progress=not args.no_progress)
    failed = [name for name, status, _ in rows if status != "ok"]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {failed}. Open one and run it to see the error.", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from . import report

    table = report.markdown(report.results(latency=not args.no_latency))
    language = report.language_markdown(report.language_results())
    print(table, "", language, sep="\n")
    if args.readme:
        report.write_readme(table)
        report.write_readme(language, report.LM_START, report.LM_END)
        print(f"wrote the tables into {report.README}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main([args.what])


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options (the instructor's guide is tested against this)."""
    from .zoo import RECIPES

    p = argparse.ArgumentParser(prog="python -m compresslab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    doc = sub.add_parser("doctor", help="check this machine before a lab: versions, data, checkpoints; "
                         "every problem with its fix")
    doc.add_argument("--pin", action="store_true",
                     help="print the installed versions as constraints.txt (the set the suite passed with)")
    doc.set_defaults(run=cmd_doctor)

    d = sub.add_parser("datasets", help="prepare and describe the dataset caches")
    d.add_argument("--import", dest="import_file", type=Path, help="an .npz to copy into data/")
    d.add_argument("--name", choices=["mnist", "cifar10"], help="dataset of the imported file")
    d.add_argument("--force", action="store_true", help="replace an existing cache")
    d.add_argument("--offline", action="store_true", help="never download; fail if a cache is missing")
    d.set_defaults(run=cmd_datasets)

    c = sub.add_parser("checkpoints", help="verify or retrain the pretrained baselines")
    c.add_argument("action", choices=["verify", "retrain"])
    c.add_argument("names", nargs="*", metavar="NAME",
                   help=f"checkpoints to retrain (default: all of {list(RECIPES)})")
    c.add_argument("--out", type=Path, default=None, help="output folder (default: data/checkpoints)")
    c.add_argument("--force", action="store_true", help="replace existing checkpoints")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    c.set_defaults(run=cmd_checkpoints)

    x = sub.add_parser("experiments", help="run an experiment too long for a notebook; writes data/results/")
    from .experiments import EXPERIMENTS
    x.add_argument("name", choices=list(EXPERIMENTS), help="kd-cifar: notebook 07's CIFAR-10 students, 4 losses x 3 seeds (~20 min)")
    x.add_argument("--out", type=Path, default=None, help="output folder (default: data/results)")
    x.add_argument("--force", action="store_true", help="replace existing results")
    x.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    x.set_defaults(run=cmd_experiments)

    e = sub.add_parser("exercises", help="regenerate the student copies in notebooks/exercises/, or write an nbgrader course")
    e.add_argument("--nbgrader", type=Path, metavar="COURSE", default=None,
                   help="instead: write autograded nbgrader source notebooks into this course folder")
    e.add_argument("--assignment", default="lab", help="the nbgrader assignment's name (default: lab)")
    e.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="with --nbgrader: numbers or names (default: all)")
    e.set_defaults(run=cmd_exercises)

    r = sub.add_parser("run", help="execute notebooks headless (will the lab work on this machine?)")
    r.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                   help="numbers or names, e.g. 01 07_distillation (default: all)")
    r.add_argument("--timeout", type=int, default=1800, help="seconds a single cell may take (default 1800)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(run=cmd_run)

    t = sub.add_parser("report", help="recompute the headline results (a few minutes) and print them as Markdown")
    t.add_argument("--readme", action="store_true", help="also write the table into README.md (between its markers)")
    t.add_argument("--no-latency", action="store_true", help="skip the timing (the only column that varies between runs)")
    t.set_defaults(run=cmd_report)

    b = sub.add_parser("bench", help="print speed figures")
    from .bench import BENCHES
    b.add_argument("what", nargs="?", choices=BENCHES, default="all")
    b.set_defaults(run=cmd_bench)

    return p


def main(argv=None) -> int:
    from .zoo import RECIPES

    p = build_parser()
    args = p.parse_args(argv)
    if args.command == "checkpoints":
        from .zoo import CHECKPOINT_DIR
        args.out = args.out or CHECKPOINT_DIR
        unknown = [n for n in args.names if n not in RECIPES]
        if unknown:
            p.error(f"unknown model(s) {unknown}: choose from {list(RECIPES)}")
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
