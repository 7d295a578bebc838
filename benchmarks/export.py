"""Exported formats against Keras: ms/image and MB on disk, at 512x512 on this CPU.

    python benchmarks/export.py                       # DeepLabV3_plus (MobileNetV2) and BiSeNet (ResNet18)
    python benchmarks/export.py --models ENet --rounds 20

Per model (random weights: speed does not depend on them): Keras, the baseline, is
``semseg_suite.inference.Segmenter.predict`` (a ``tf.function`` over the model plus
the argmax, as predict.py runs today); each format is exported with
``semseg_suite.export`` (``--outputs ids``, no tiling or test-time augmentation)
and run with ``semseg_suite.export.runtime.load(path).predict``: TFLite through
``tf.lite.Interpreter`` (XNNPACK, threads = cores), ONNX through onnxruntime's CPU
provider (intra-op threads = cores), SavedModel through TensorFlow. ms/image: the
median of ``--rounds`` calls on one uint8 512x512 image, batch 1, after
``--warmup`` untimed calls (which include TFLite's tensor allocation). MB: the
file, the SavedModel folder, or the ``.keras`` checkpoint for Keras. int8 is
calibrated on ``--calibration`` random images (calibration data changes the
accuracy, not the speed). Prints a Markdown table; paste it into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak  # noqa: E402
from semseg_suite import export, inference  # noqa: E402
from semseg_suite.export import formats, runtime  # noqa: E402

SIZE = 512
DEFAULT_MODELS = ("DeepLabV3_plus:MobileNetV2", "BiSeNet")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL[:FRONTEND]",
                        help="models, on their default frontend unless given (default: %(default)s)")
    parser.add_argument("--formats", nargs="+", default=list(formats.FORMATS), choices=formats.FORMATS)
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default: 21, as docs/MODELS.md)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"square image side (default: {SIZE})")
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per format (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per format first (default: 2)")
    parser.add_argument("--calibration", type=int, default=8, help="random images calibrating int8 (default: 8)")
    return parser.parse_args(argv)


def disk_mb(path: pathlib.Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def time_ms(predict, image, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        predict(image)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        predict(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def benchmark_model(spec: str, args, folder: pathlib.Path) -> list[tuple]:
    name, _, frontend = spec.partition(":")
    frontend = frontend or semseg_suite.default_frontend(name)
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model(name, frontend, num_classes=args.num_classes, frontend_weights=None)
    metadata = {
        "model": name, "frontend": frontend, "num_classes": args.num_classes,
        "class_names": [f"class{i}" for i in range(args.num_classes)],
        "colors": [[(37 * i) % 256, (91 * i) % 256, (173 * i) % 256] for i in range(args.num_classes)],
        "preprocessing": semseg_suite.preprocessing_mode(frontend), "crop_size": [args.size, args.size],
    }
    checkpoint = export.save_checkpoint(model, folder / f"{name}.keras", metadata)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    label = f"{name} ({frontend})" if frontend else name
    segmenter = inference.Segmenter(model, metadata)
    keras_ms = time_ms(segmenter.predict, image, args.rounds, args.warmup)
    rows = [(label, "Keras (Segmenter)", keras_ms, disk_mb(checkpoint), 1.0)]
    calibration = folder / "calibration"
    calibration.mkdir(exist_ok=True)
    for i in range(args.calibration):
        import cv2

        cv2.imwrite(str(calibration / f"{i}.png"), rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    for fmt in args.formats:
        start = time.perf_counter()
        path = formats.export_checkpoint(checkpoint, fmt, folder / (checkpoint.stem + formats.SUFFIX[fmt]),
                                         calibration=calibration if fmt == "tflite-int8" else None)
        convert_s = time.perf_counter() - start
        exported = runtime.load(path)
        ms = time_ms(exported.predict, image, args.rounds, args.warmup)
        rows.append((label, fmt, ms, disk_mb(path), keras_ms / ms, convert_s))
        print(f"  {label} {fmt}: {ms:.1f} ms, export {convert_s:.0f} s", file=sys.stderr, flush=True)
        del exported
    keras.backend.clear_session()
    return rows


def render(rows, args) -> str:
    lines = [f"- {line}" for line in peak.header_lines(peak.command_line(__file__))]
    lines += [f"- {args.size}x{args.size} uint8 RGB, batch 1, {args.num_classes} classes, random weights; "
              f"median of {args.rounds} calls after {args.warmup} warm-up; threads = {os.cpu_count()} cores", ""]
    lines += ["| model | format | ms/image | speed-up vs Keras | MB on disk | export s |", "|---|---|---|---|---|---|"]
    for row in rows:
        label, fmt, ms, mb, speedup = row[:5]
        convert = f"{row[5]:.0f}" if len(row) > 5 else ""
        lines.append(f"| {label} | {fmt} | {ms:.1f} | {speedup:.2f}x | {mb:.1f} | {convert} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="semseg_export_bench_") as folder:
        for spec in args.models:
            rows += benchmark_model(spec, args, pathlib.Path(folder))
    print(render(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
