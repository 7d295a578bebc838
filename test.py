"""Evaluate a checkpoint: per-class IoU/precision/recall/F1, mIoU, timings, images.

    python test.py --checkpoint checkpoints/DeepLabV3_plus_Xception/best.keras

The dataset, classes and input normalisation come from the checkpoint; pass
``--dataset`` to evaluate on another folder with the same classes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from semseg_suite import data, evaluation, export  # noqa: E402
from semseg_suite.cli import add_dataset_arguments, dataset_options, non_negative_int, setup_logging  # noqa: E402
from semseg_suite.inference import Segmenter  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=".keras or .h5 checkpoint written by train.py")
    add_dataset_arguments(parser.add_argument_group("data", "default: the dataset the checkpoint was trained on"))
    parser.add_argument("--split", help="split to evaluate (default: test if present, else val)")
    parser.add_argument("--output-dir", help="where tables and images go (default: beside the checkpoint)")
    parser.add_argument("--num-images", type=non_negative_int, default=10, help="prediction images to save (default: 10)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        segmenter = Segmenter.from_checkpoint(args.checkpoint)
        meta = segmenter.metadata
        given = dataset_options(args)
        if args.dataset or given:
            spec, options = args.dataset, given
        else:
            spec, options = meta["dataset"], meta.get("dataset_options", {})
        info = data.open_dataset(spec, ignore_class=meta.get("ignore_class"), **options)
        if list(info.class_names) != segmenter.class_names:
            raise data.DatasetError(
                f"{info.spec}: classes {list(info.class_names)} differ from the checkpoint's {segmenter.class_names}"
            )
        split = args.split or ("test" if "test" in info.splits else "val")
        checkpoint = pathlib.Path(args.checkpoint)
        out_dir = pathlib.Path(args.output_dir or checkpoint.parent / f"test_{split}_{checkpoint.stem}")
        scores = evaluation.evaluate(segmenter, info, split, out_dir=out_dir, num_images=args.num_images)
    except (data.DatasetError, export.CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model_name = meta["model"] if meta["frontend"] is None else f"{meta['model']} + {meta['frontend']}"
    print(f"{model_name} on {info.spec} [{split}]")
    print(evaluation.format_table(scores, info.class_names))
    print(f"Wrote per_class.csv, overall.csv and {min(args.num_images, scores['num_images'])} images to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
