"""Evaluate a checkpoint: per-class IoU/precision/recall/F1, mIoU, timings, images.

    python test.py --checkpoint checkpoints/DeepLabV3_plus_Xception/best.keras
    python test.py --checkpoint best.keras --scales 0.75,1,1.25 --flip --tile 512

Besides per_class.csv and overall.csv it writes scores.json, confusion_matrix.csv,
plots/confusion_matrix.png (normalised per row) and worst/<rank>_<stem>.png, the five
images of lowest per-image mean IoU. --tile/--overlap/--scales/--flip run the same
inference code as the exported models, so their mIoU gain is measured here.

The dataset, classes and input normalisation come from the checkpoint; pass
``--dataset`` to evaluate on another folder with the same classes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
ONEDNN_FROM_USER = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # trains faster on every CPU kind measured: cli.log_cpu_path

from semseg_suite import data, evaluation, export  # noqa: E402
from semseg_suite.cli import (  # noqa: E402
    add_dataset_arguments, add_inference_arguments, dataset_options, inference_options, log_cpu_path, non_negative_int,
    setup_logging,
)
from semseg_suite.inference import Segmenter, check_output_folder, error_line  # noqa: E402
from semseg_suite.tiling import InferenceOptions  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=".keras or .h5 checkpoint written by train.py")
    add_dataset_arguments(parser.add_argument_group("data", "default: the dataset the checkpoint was trained on"))
    parser.add_argument("--split", help="split to evaluate (default: test if present, else val)")
    parser.add_argument("--output", "--output-dir", dest="output_dir",
                        help="where tables and images go (default: beside the checkpoint)")
    parser.add_argument("--num-images", type=non_negative_int, default=10, help="prediction images to save (default: 10)")
    add_inference_arguments(parser.add_argument_group("inference", "sliding window and test-time augmentation"))
    args = parser.parse_args(argv)
    args.inference = InferenceOptions(**inference_options(parser, args))
    return args


def describe(options: InferenceOptions) -> str:
    """One line naming the inference options, e.g. ``tile 512 (overlap 128), scales 0.75,1,1.25, flip``."""
    parts = [f"tile {options.tile} (overlap {options.overlap})" if options.tile else "whole image"]
    parts.append("scales " + ",".join(f"{scale:g}" for scale in options.scales))
    if options.flip:
        parts.append("flip")
    return ", ".join(parts)


def main(argv=None) -> int:
    setup_logging()
    log_cpu_path(ONEDNN_FROM_USER)
    args = parse_args(argv)
    try:
        if args.output_dir is not None:
            check_output_folder(args.output_dir)  # before the model loads
        segmenter = Segmenter.from_checkpoint(args.checkpoint, args.inference)
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
    except (data.DatasetError, export.CheckpointError, ValueError, OSError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 2
    model_name = meta.get("model", checkpoint.stem)
    if meta.get("frontend"):
        model_name = f"{model_name} + {meta['frontend']}"
    print(f"{model_name} on {info.spec} [{split}]")
    print(f"inference: {describe(args.inference)}")
    print(evaluation.format_table(scores, info.class_names))
    if scores["worst"]:
        print(f"Worst {len(scores['worst'])} images by mean IoU:")
        for item in scores["worst"]:
            print(f"  {item['rank']}. {item['image']}  mean IoU {item['mean_iou']:.4f}  -> {out_dir / item['panel']}")
    print(f"Wrote per_class.csv, overall.csv, scores.json, confusion_matrix.csv, plots/{evaluation.CONFUSION_IMAGE}, "
          f"{min(args.num_images, scores['num_images'])} images and {len(scores['worst'])} worst to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
