"""The workbook's command line: ``python -m compresslab <command> ...``.

    python -m compresslab datasets                     # load (download once) and describe both datasets
    python -m compresslab datasets --import FILE.npz   # install an .npz handed out by an instructor
    python -m compresslab checkpoints verify           # checksums + test accuracy of the zoo
    python -m compresslab checkpoints retrain [NAMES] [--force] [--out DIR]
    python -m compresslab exercises                    # regenerate notebooks/exercises/
    python -m compresslab bench [epoch|structured|int8|notebooks]   # speed figures
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def cmd_exercises(args) -> int:
    from . import exercises

    for path in exercises.write_student_copies():
        print(f"wrote {path.relative_to(exercises.ROOT)}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main([args.what])


def main(argv=None) -> int:
    from .zoo import RECIPES

    p = argparse.ArgumentParser(prog="python -m compresslab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

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

    e = sub.add_parser("exercises", help="regenerate the student copies in notebooks/exercises/")
    e.set_defaults(run=cmd_exercises)

    b = sub.add_parser("bench", help="print speed figures")
    b.add_argument("what", nargs="?", choices=["all", "epoch", "structured", "int8", "notebooks"], default="all")
    b.set_defaults(run=cmd_bench)

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
