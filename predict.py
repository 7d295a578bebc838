"""Segment images, folders, globs and videos with a checkpoint or an exported model.

    python predict.py --image photo.jpg --checkpoint checkpoints/DeepLabV3_plus_Xception/best.keras
    python predict.py folder/ 'shots/*.jpg' clip.mp4 --checkpoint best.h5 --output predictions
    python predict.py --image clip.avi --checkpoint best.keras --scales 0.75,1,1.25 --flip --batch-size 8
    python predict.py --image photos/ --checkpoint model.tflite --format tflite

For each image it writes ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png`` at the image's original size; a video (mp4, avi, mov, mkv,
webm) gets ``<stem>_overlay.mp4`` with the same frame rate and size (no audio),
read, segmented and written a batch of frames at a time. ``legend.png`` shows each
class name on its colour. Outputs appear in the folder only when every input
succeeded.

``--format tflite|onnx|savedmodel`` runs a file written by ``python -m
semseg_suite.export`` instead of a checkpoint (its sliding window and test-time
augmentation were fixed at export time).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
ONEDNN_FROM_USER = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # trains faster on every CPU kind measured: cli.log_cpu_path

from semseg_suite import data, export, inference  # noqa: E402
from semseg_suite.cli import (  # noqa: E402
    add_inference_arguments, inference_options, log_cpu_path, positive_int, setup_logging, unit_interval,
)
from semseg_suite.inference import check_output_folder, error_line  # noqa: E402
from semseg_suite.tiling import InferenceOptions  # noqa: E402

EXPORT_FORMATS = ("tflite", "onnx", "savedmodel")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="images, folders, globs or videos (as --image)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image, a folder of images and videos, a quoted glob ('dir/*.jpg') or a video; "
                             "may be repeated")
    parser.add_argument("--checkpoint", required=True,
                        help=".keras or .h5 checkpoint written by train.py, or with --format an exported model")
    parser.add_argument("--format", choices=EXPORT_FORMATS,
                        help="run an exported model (python -m semseg_suite.export) instead of a checkpoint")
    parser.add_argument("--output", "--output-dir", dest="output_dir", default="predictions", metavar="DIR",
                        help="where results go (default: predictions)")
    parser.add_argument("--alpha", type=unit_interval, default=0.5, help="mask opacity in the overlay (default: 0.5)")
    parser.add_argument("--batch-size", "--batch_size", type=positive_int, default=4,
                        help="images or video frames segmented at once (default: 4)")
    add_inference_arguments(parser.add_argument_group("inference", "sliding window and test-time augmentation"))
    args = parser.parse_intermixed_args(argv)  # paths may come before and after the flags
    args.inputs = [*args.image, *args.paths]
    if not args.inputs:
        parser.error("give at least one image, folder, glob or video (--image PATH or PATH)")
    args.inference = InferenceOptions(**inference_options(parser, args))
    if args.format and args.inference != InferenceOptions():
        parser.error("--tile/--overlap/--scales/--flip are fixed when a model is exported; "
                     "they cannot be used with --format")
    return args


def main(argv=None) -> int:
    setup_logging()
    log_cpu_path(ONEDNN_FROM_USER)
    args = parse_args(argv)
    out_dir = pathlib.Path(args.output_dir)
    try:
        check_output_folder(out_dir)
        items = inference.find_inputs(args.inputs)
        predictor = inference.load_predictor(args.checkpoint, args.format, args.inference)
        lines = inference.segment_inputs(predictor, items, out_dir, alpha=args.alpha, batch_size=args.batch_size)
    except (data.DatasetError, export.CheckpointError, ValueError, OSError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
