"""``python -m semseg_suite.data check DATASET``: the dataset doctor (`semseg_suite.data.doctor`).

Exit status: 0 when no problem is found, 1 when one is (or the dataset cannot be
opened), 2 for a usage error.
"""

import argparse
import sys

from semseg_suite import cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semseg_suite.data",
        description="Tools for segmentation datasets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="the dataset doctor: read every file, report statistics and every problem",
        description="Reads every image and label of a dataset once, in parallel, and prints per split the "
                    "pair count, image sizes and modes, label encoding, class pixel frequencies, absent "
                    "classes and every problem with its file. Writes the class statistics (the cache that "
                    "train.py --class-weights reads), the median-frequency and ENet weights as CSV, and a bar "
                    "plot beside the dataset: in DATASET/.semseg_suite/, or under $SEMSEG_SUITE_STATS_DIR, "
                    "or under ~/.cache/semseg_suite/stats/ for a read-only folder. Exits 1 on any problem.",
    )
    check.add_argument("spec", nargs="?", metavar="DATASET", help="a dataset folder or tfds:NAME[:CONFIG]")
    cli.add_dataset_arguments(check)
    check.add_argument("--ignore-class", type=cli.ignore_class, metavar="NAME|INDEX",
                       help="the ignored class, as in train.py (default: the format's own)")
    check.add_argument("--workers", type=cli.positive_int, help="reading threads (default: cores + 4, up to 32)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.add_argument("--no-write", action="store_true", help="report only; write no statistics, weights or plot")
    args = parser.parse_args(argv)
    if args.spec and args.dataset and args.spec != args.dataset:
        parser.error(f"two datasets given: {args.spec} and --dataset {args.dataset}")
    args.spec = args.spec or args.dataset
    if args.spec is None and args.images is None:
        parser.error("give a DATASET (folder or tfds:NAME) or --images DIR --masks DIR")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    from semseg_suite import data  # after parsing: --help stays fast
    from semseg_suite.data import doctor

    try:
        info = data.open_dataset(args.spec, ignore_class=args.ignore_class, check_files=False,
                                 **cli.dataset_options(args))
    except data.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = doctor.examine(info, workers=args.workers, progress=False if args.no_progress else None,
                            write=not args.no_write)
    print(doctor.format_report(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
