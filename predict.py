"""Segment images, folders of images or videos with a trained checkpoint.

    python predict.py --image photo.jpg --checkpoint checkpoints/DeepLabV3_plus_Xception/best.keras
    python predict.py --image folder/ --checkpoint best.h5 --output-dir predictions

For each image it writes ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png`` at the image's original size; a video gets
``<stem>_overlay.mp4``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from semseg_suite import data, export  # noqa: E402
from semseg_suite.cli import setup_logging, unit_interval  # noqa: E402
from semseg_suite.inference import Segmenter  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("--checkpoint", required=True, help=".keras or .h5 checkpoint written by train.py")
    parser.add_argument("--output-dir", default="predictions", help="where results go (default: predictions)")
    parser.add_argument("--alpha", type=unit_interval, default=0.5, help="mask opacity in the overlay (default: 0.5)")
    return parser.parse_args(argv)


def inputs(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        if not files:
            raise data.DatasetError(f"{path}: no images in folder")
        return files
    if not path.exists():
        raise data.DatasetError(f"{path}: no such file or folder")
    return [path]


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    out_dir = pathlib.Path(args.output_dir)
    try:
        files = inputs(pathlib.Path(args.image))
        segmenter = Segmenter.from_checkpoint(args.checkpoint)
        for path in files:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                frames = segmenter.segment_video(path, out_dir / f"{path.stem}_overlay.mp4", alpha=args.alpha)
                print(f"{path} -> {out_dir / (path.stem + '_overlay.mp4')} ({frames} frames)")
            else:
                mask, overlay = segmenter.segment_file(path, out_dir, alpha=args.alpha)
                print(f"{path} -> {mask}, {overlay}")
    except (data.DatasetError, export.CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
