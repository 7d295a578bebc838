"""Training and inference throughput, XLA on vs off, measured in one run.

    python benchmarks/train_speed.py --model DeepLabV3_plus --frontend Xception --crop 256 --batch 4

Random inputs, the suite's own training step (``semseg_suite.training.Trainer``,
the same code train.py runs) and a ``tf.function`` inference call; each
configuration is warmed up (tracing, XLA compilation) before it is timed. Prints a
Markdown table of images per second.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import semseg_suite  # noqa: E402
from semseg_suite import training  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["DeepLabV3_plus"], choices=semseg_suite.list_models())
    parser.add_argument("--frontend", nargs="+", default=["Xception", "MobileNetV2"],
                        choices=semseg_suite.list_frontends())
    parser.add_argument("--crop", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    return parser.parse_args(argv)


def images_per_second(step, batch, steps, warmup) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def measure(model_name, frontend, xla, args):
    keras.backend.clear_session()
    strategy = tf.distribute.get_strategy()
    model = semseg_suite.build_model(model_name, frontend, num_classes=args.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    trainer = training.Trainer(model, strategy, args.num_classes, jit_compile=xla)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(args.batch, args.crop, args.crop, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, args.num_classes, (args.batch, args.crop, args.crop)), tf.int32)
    predict = tf.function(lambda x: model(x, training=False), jit_compile=xla)

    def train_step():
        trainer.train_step((images, labels)).numpy()

    def infer_step():
        predict(images).numpy()

    return (
        images_per_second(train_step, args.batch, args.steps, args.warmup),
        images_per_second(infer_step, args.batch, args.steps, args.warmup),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    device = tf.config.list_logical_devices("GPU")
    where = device[0].name if device else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {where}")
    print(f"crop {args.crop}x{args.crop}, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up")
    print("command: python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print()
    print("| model | frontend | XLA | train img/s | inference img/s |")
    print("|---|---|---|---:|---:|")
    for model_name in args.model:
        for frontend in args.frontend:
            for xla in args.xla:
                train_ips, infer_ips = measure(model_name, frontend, xla == "on", args)
                print(f"| {model_name} | {frontend} | {xla} | {train_ips:.2f} | {infer_ips:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
