"""Helpers shared by the command-line scripts."""

from __future__ import annotations

import argparse
import logging


def setup_logging() -> None:
    """One-line ``LEVEL: message`` records from the suite's logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("semseg_suite")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def log_cpu_path(from_user: str | None) -> None:
    """Logs which CPU kernels TensorFlow runs and who chose them.

    train.py, test.py and predict.py set ``TF_ENABLE_ONEDNN_OPTS=1`` before TensorFlow
    loads unless the user's environment sets it (``from_user``, its value then): oneDNN
    trained every model measured 1.15-1.99x faster than TensorFlow's own kernels, on
    AVX-512 and on an AVX2 instruction set alike, and ran inference faster or on par
    (0.93-1.60x; docs/BENCHMARKS.md, section 9); it also has the gradient kernels of
    dilated convolutions that TensorFlow's own lack.
    """
    from semseg_suite import layers

    state = "on" if layers.onednn_enabled() else "off"
    if from_user is None:
        source = "the suite's default TF_ENABLE_ONEDNN_OPTS=1; set TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own kernels"
    else:
        source = f"TF_ENABLE_ONEDNN_OPTS={from_user} from your environment"
    logging.getLogger("semseg_suite").info("CPU kernels: oneDNN %s (%s)", state, source)


def given_options(parser: argparse.ArgumentParser, argv, args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the options given on the command line ``argv``.

    Parses ``argv`` again into a namespace that already holds a marker for every
    destination of ``args`` (the first parse): argparse sets no default where a
    value is present, so whatever still holds the marker was not given.
    """
    unset = object()
    probe = parser.parse_args(argv, argparse.Namespace(**{dest: unset for dest in vars(args)}))
    return frozenset(dest for dest, value in vars(probe).items() if value is not unset)


def str2bool(value: str) -> bool:
    """Parses the old suite's boolean flag values (``--h_flip True``)."""
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def ignore_class(value: str) -> str | int:
    """``--ignore-class``: a class index if numeric, else a class name."""
    return int(value) if value.lstrip("-").isdigit() else value


def add_dataset_arguments(group) -> None:
    """The flags that say which dataset to read and how (train.py and test.py)."""
    group.add_argument("--dataset", metavar="FOLDER|tfds:NAME[:CONFIG]",
                       help="a dataset folder (the suite's colour or index layout, Pascal VOC 2012, Cityscapes, "
                            "ADE20K SceneParsing; recognised by its contents) or a TensorFlow Datasets name")
    group.add_argument("--images", metavar="DIR", help="plain folders: the images (with --masks and --classes)")
    group.add_argument("--masks", metavar="DIR",
                       help="plain folders: masks paired by file stem; index, palette, RGB-colour or 0/255 binary "
                            "PNGs (detected and reported)")
    group.add_argument("--classes", metavar="FILE",
                       help="name,r,g,b class table for plain folders or a TFDS dataset without class names")
    group.add_argument("--val-fraction", type=unit_interval_open,
                       help="plain folders without train/ val/ subfolders: share of the pairs held out for "
                            "validation, chosen by file stem (default: 0.1)")
    group.add_argument("--sbd", metavar="DIR",
                       help="Pascal VOC: add the SBD augmented masks (benchmark_RELEASE/dataset, cls/*.mat, or a "
                            "SegmentationClassAug PNG folder) to the training split, minus VOC val")
    group.add_argument("--tfds-image-key", help="TFDS: the image feature (default: inferred)")
    group.add_argument("--tfds-mask-key", help="TFDS: the mask feature (default: inferred)")
    group.add_argument("--tfds-data-dir", metavar="DIR",
                       help="TFDS: where prepared datasets are (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")


_DATASET_OPTION_FLAGS = (
    "images", "masks", "classes", "val_fraction", "sbd", "tfds_image_key", "tfds_mask_key", "tfds_data_dir",
)


def dataset_options(args: argparse.Namespace) -> dict:
    """The dataset flags a user gave, as `semseg_suite.data.DatasetOptions` fields."""
    return {name: getattr(args, name) for name in _DATASET_OPTION_FLAGS if getattr(args, name) is not None}


def _number_type(convert, name, accepts, rule):
    """An argparse ``type=`` that converts with `convert` and refuses what `accepts` rejects."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _number_type(int, "an integer", lambda v: v > 0, "> 0")
non_negative_int = _number_type(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _number_type(float, "a number", lambda v: v > 0, "> 0")
non_negative_float = _number_type(float, "a number", lambda v: v >= 0, ">= 0")
unit_interval_open = _number_type(float, "a number", lambda v: 0 <= v < 1, "in [0, 1)")
unit_interval_left_open = _number_type(float, "a number", lambda v: 0 < v <= 1, "in (0, 1]")
unit_interval = _number_type(float, "a number", lambda v: 0 <= v <= 1, "in [0, 1]")


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """An argparse ``type=`` for a float in ``[low, high]`` (ends open where asked)."""
    rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return _number_type(
        float, "a number", lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high), rule
    )


def scale_list(text: str) -> tuple[float, ...]:
    """``--scales 0.75,1,1.25``: positive factors, comma-separated."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not scales or not all(0 < scale <= 8 for scale in scales):
        raise argparse.ArgumentTypeError(f"scales must be in (0, 8], got {text}")
    return scales


def add_inference_arguments(group) -> None:
    """``--tile/--overlap/--scales/--flip``: how test.py, predict.py and exported models infer."""
    group.add_argument("--tile", type=positive_int, metavar="PIXELS",
                       help="sliding window: square tiles of this side, blended where they overlap "
                            "(default: the whole image at once)")
    group.add_argument("--overlap", type=non_negative_int, default=None, metavar="PIXELS",
                       help="sliding window: pixels shared by neighbouring tiles (default: a quarter of --tile)")
    group.add_argument("--scales", type=scale_list, default=(1.0,), metavar="S1,S2,...",
                       help="multi-scale inference: softmax averaged over these input scales (default: 1)")
    group.add_argument("--flip", action="store_true",
                       help="also average the horizontally flipped image's softmax (default: off)")


def inference_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The inference flags as `semseg_suite.tiling.InferenceOptions` fields.

    Refuses (``parser.error``) an --overlap without --tile or not below it.
    """
    if args.overlap is not None and args.tile is None:
        parser.error("--overlap needs --tile")
    overlap = args.overlap if args.overlap is not None else (args.tile // 4 if args.tile else 0)
    if args.tile is not None and overlap >= args.tile:
        parser.error(f"--overlap {overlap} must be smaller than --tile {args.tile}")
    return {"tile": args.tile, "overlap": overlap, "scales": tuple(args.scales), "flip": bool(args.flip)}
