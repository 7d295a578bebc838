"""Training and inference throughput per precision and XLA setting, measured side by side.

    python benchmarks/train_speed.py --model DeepLabV3_plus --frontend Xception --crop 256 --batch 4
    python benchmarks/train_speed.py --frontend MobileNetV2 Xception --precision float32 mixed_bfloat16 --xla off

Random inputs, the suite's own training step (``semseg_suite.training.Trainer``,
the same code train.py runs, auxiliary heads included) and a ``tf.function``
inference call of the main logits. For each model and frontend, one model per
(precision, XLA) variant is built; all are warmed up (tracing, XLA compilation),
then timed in alternation, one step of each variant per round, so that load from
other processes hits them alike. Throughput is the batch over the median step time.
Prints a Markdown table of images per second and, for every precision but
float32, its speed relative to float32.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import builders  # noqa: E402
import semseg_suite  # noqa: E402
from benchmarks import peak  # noqa: E402
from semseg_suite import export, training  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["DeepLabV3_plus"], choices=semseg_suite.list_models())
    parser.add_argument("--frontend", nargs="+", default=["Xception", "MobileNetV2"],
                        choices=semseg_suite.list_frontends())
    parser.add_argument("--crop", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--num-classes", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default: 3)")
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=PRECISIONS,
                        help="Keras dtype policies to compare (default: float32)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Sets Keras's global dtype policy while models are built, then restores float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@dataclasses.dataclass
class Variant:
    """One model ready to be timed: a training step and an inference call.

    Attributes:
        inference: the main-logits model (over the layers of the training model,
            which has the auxiliary heads, if any).
        train_step: runs one ``Trainer`` step on a batch (images, labels) and waits for it.
        infer: runs the ``tf.function`` inference on images and waits for it.
    """

    inference: keras.Model
    train_step: Callable[[tuple], None]
    infer: Callable[[tf.Tensor], None]


def build_variant(model_name, frontend, precision, *, num_classes, input_shape=(None, None, 3), xla=False) -> Variant:
    """Builds ``model_name`` on ``frontend`` under ``precision`` as train.py does (auxiliary
    heads with their loss weights, Adam, loss scaling for float16) with its steps."""
    with dtype_policy(precision):
        model = semseg_suite.build_model(
            model_name, frontend, num_classes=num_classes, input_shape=input_shape, auxiliary=True
        )
    optimizer = keras.optimizers.Adam(1e-4)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    trainer = training.Trainer(
        model, tf.distribute.get_strategy(), num_classes, jit_compile=xla,
        loss_weights=semseg_suite.models.loss_weights(model_name),
    )
    inference = export.inference_model(model)
    predict = tf.function(lambda images: inference(images, training=False), jit_compile=xla)
    return Variant(
        inference=inference,
        train_step=lambda batch: trainer.train_step(batch).numpy(),
        infer=lambda images: predict(images).numpy(),
    )


def random_batch(batch: int, size: int, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Normal images (batch, size, size, 3) and uniform labels (batch, size, size)."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(batch, size, size, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, num_classes, (batch, size, size)), tf.int32)
    return images, labels


def alternate(calls: dict, rounds: int, warmup: int) -> dict:
    """Median seconds of each zero-argument call, timed in turn in ``rounds`` rounds.

    Args:
        calls: name -> function to time.
        rounds: timed calls of each function.
        warmup: untimed calls of each function first.

    Returns:
        name -> median seconds per call.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    times = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)  # rotate the order, so load drifts touch every call alike
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def median_ms(calls: dict, rounds: int, warmup: int) -> dict[str, float]:
    """``alternate`` in milliseconds."""
    return {name: 1000 * seconds for name, seconds in alternate(calls, rounds, warmup).items()}


def measure(model_name, frontend, args) -> dict:
    """Train and inference images/s of every (precision, XLA) variant of one model."""
    keras.backend.clear_session()
    batch = random_batch(args.batch, args.crop, args.num_classes)
    calls = {}
    for precision in args.precision:
        for xla in args.xla:
            variant = build_variant(model_name, frontend, precision, num_classes=args.num_classes, xla=xla == "on")
            calls[("train", precision, xla)] = lambda v=variant: v.train_step(batch)
            calls[("infer", precision, xla)] = lambda v=variant: v.infer(batch[0])
    seconds = alternate(calls, args.steps, args.warmup)
    return {key: args.batch / value for key, value in seconds.items()}


def model_frontends(model_name: str, frontends: list[str]) -> list[str | None]:
    """``frontends``, or ``[None]`` for a model with its own encoder."""
    return frontends if builders.MODELS.get(model_name).takes_frontend else [None]


def render_rows(model_name, frontend, speeds, args) -> list[str]:
    """Table rows of one model: images/s per variant and the ratio to float32."""
    rows = []
    for xla in args.xla:
        for precision in args.precision:
            train, infer = speeds[("train", precision, xla)], speeds[("infer", precision, xla)]
            cells = [model_name, frontend or "own encoder", xla, precision, f"{train:.2f}", f"{infer:.2f}", "", ""]
            if precision != "float32" and "float32" in args.precision:
                cells[6] = f"{train / speeds[('train', 'float32', xla)]:.2f}x"
                cells[7] = f"{infer / speeds[('infer', 'float32', xla)]:.2f}x"
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))))
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        print(f"Device: {gpus[0].name}")
    print(f"crop {args.crop}x{args.crop}, batch {args.batch}; median of {args.steps} alternating timed steps "
          f"per variant after {args.warmup} warm-up steps")
    print()
    print("| model | frontend | XLA | precision | train img/s | inference img/s | train vs float32 "
          "| inference vs float32 |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for model_name in args.model:
        for frontend in model_frontends(model_name, args.frontend):
            speeds = measure(model_name, frontend, args)
            print("\n".join(render_rows(model_name, frontend, speeds, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
