"""Fused batch norm in training and folded batch norm at inference, side by side.

    python benchmarks/batch_norm.py
    python benchmarks/batch_norm.py --models DeepLabV3_plus:Xception ENet --crop 256 --batch 8

For each model (``MODEL`` or ``MODEL:FRONTEND``), two copies are built as train.py
builds them (``train_speed.build_variant``): one whose batch norms train through
TensorFlow's ``FusedBatchNormV3`` (``semseg_suite.layers.BatchNormalization``, the
suite's default) and one whose training step was traced with that layer on Keras'
own unfused path. Inference is timed on the model as built and on its
``export.fold_batch_norm`` copy (what test.py, predict.py and the exporters run).
All four calls are warmed up, then timed in alternation (``train_speed.alternate``),
so load from other processes hits them alike. Prints images per second and the
ratios; run it once per ``TF_ENABLE_ONEDNN_OPTS`` setting to compare CPU paths.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak, train_speed  # noqa: E402
from semseg_suite import export, layers  # noqa: E402

DEFAULT_MODELS = (
    "DeepLabV3_plus:MobileNetV2", "DeepLabV3_plus:ResNet50", "DeepLabV3_plus:Xception",
    "LinkNet:ResNet18", "BiSeNet:ResNet18", "ENet", "FC-DenseNet56", "U-Net",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL[:FRONTEND]")
    parser.add_argument("--crop", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="timed calls of each variant (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first (default: 2)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def unfused():
    """The suite's ``BatchNormalization`` takes Keras' unfused path in what is traced meanwhile."""
    original = layers.BatchNormalization._fusable
    layers.BatchNormalization._fusable = lambda self, *args: False
    try:
        yield
    finally:
        layers.BatchNormalization._fusable = original


def measure(model_name: str, frontend: str | None, args) -> dict[str, float]:
    """Images per second of fused and unfused training, unfolded and folded inference."""
    keras.backend.clear_session()
    batch = train_speed.random_batch(args.batch, args.crop, args.num_classes)
    fused = train_speed.build_variant(model_name, frontend, "float32", num_classes=args.num_classes)
    plain = train_speed.build_variant(model_name, frontend, "float32", num_classes=args.num_classes)
    with unfused():
        plain.train_step(batch)  # traced now, unfused for good
    folded_model = export.fold_batch_norm(fused.inference)
    folded = tf.function(lambda images: folded_model(images, training=False))
    calls = {
        "train fused": lambda: fused.train_step(batch),
        "train Keras BN": lambda: plain.train_step(batch),
        "inference folded": lambda: folded(batch[0]).numpy(),
        "inference unfolded": lambda: fused.infer(batch[0]),
    }
    seconds = train_speed.alternate(calls, args.steps, args.warmup)
    return {name: args.batch / value for name, value in seconds.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))))
    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}; crop {args.crop}x{args.crop}, "
          f"batch {args.batch}, float32; median of {args.steps} alternating timed calls after {args.warmup} warm-up")
    print()
    print("| model | frontend | train img/s, Keras BN | train img/s, fused | fused speed-up "
          "| inference img/s | folded | folded speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.models:
        model_name, _, frontend = spec.partition(":")
        speeds = measure(model_name, frontend or None, args)
        cells = [
            model_name, frontend or semseg_suite.default_frontend(model_name) or "own encoder",
            f"{speeds['train Keras BN']:.2f}", f"{speeds['train fused']:.2f}",
            f"{speeds['train fused'] / speeds['train Keras BN']:.2f}x", f"{speeds['inference unfolded']:.2f}",
            f"{speeds['inference folded']:.2f}", f"{speeds['inference folded'] / speeds['inference unfolded']:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
