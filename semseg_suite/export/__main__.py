"""Export a checkpoint as a serving model: uint8 RGB of any size in, class ids out.

    python -m semseg_suite.export run/best.keras --format tflite
    python -m semseg_suite.export run/best.keras --format onnx --tile 512 --overlap 128 --outputs probs
    python -m semseg_suite.export run/best.keras --format tflite-int8 --calibration 200
    python -m semseg_suite.export run/best.keras --format savedmodel --scales 0.75,1,1.25 --flip

The model normalises its input itself and returns ``class_ids`` (int32, batch x
height x width) and, with --outputs, ``probabilities`` or ``logits``. Class names,
colours and inference options travel with it: SavedModel ``assets/semseg_suite.json``
and a ``metadata`` signature; TFLite the flatbuffer metadata entry ``semseg_suite``
and ``<file>.json`` beside it (TFLite takes a batch of 1); ONNX ``metadata_props``
key ``semseg_suite``. Run an export with ``semseg_suite.export.runtime.load(path)``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from semseg_suite import cli, data, export, tiling  # noqa: E402
from semseg_suite.export import formats, serving  # noqa: E402


def calibration_arg(text: str):
    return int(text) if text.isdigit() else text


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m semseg_suite.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help=".keras or .h5 checkpoint written by train.py")
    parser.add_argument("--format", required=True, choices=formats.FORMATS, help="what to export")
    parser.add_argument("--output", help="file or folder to write (default: beside the checkpoint, "
                                         "e.g. best.tflite, best_int8.tflite, best_savedmodel)")
    parser.add_argument("--outputs", choices=serving.OUTPUTS, default="ids",
                        help="ids: class ids only; probs: also softmax probabilities; logits: also logits "
                             "(not with --tile/--scales/--flip) (default: ids)")
    parser.add_argument("--calibration", type=calibration_arg, metavar="DIR|N",
                        help=f"tflite-int8: a folder of images, or N images of the checkpoint's training split "
                             f"(default: {formats.DEFAULT_CALIBRATION} training images)")
    cli.add_inference_arguments(parser.add_argument_group("inference inside the exported graph"))
    args = parser.parse_args(argv)
    return parser, args


def main(argv=None) -> int:
    cli.setup_logging()
    parser, args = parse_args(argv)
    options = tiling.InferenceOptions(**cli.inference_options(parser, args))
    if args.calibration is not None and args.format != "tflite-int8":
        parser.error("--calibration applies only to --format tflite-int8")
    try:
        path = formats.export_checkpoint(args.checkpoint, args.format, args.output, options=options,
                                         outputs=args.outputs, calibration=args.calibration)
    except (formats.ExportError, export.CheckpointError, data.DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
