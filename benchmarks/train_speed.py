"""Training and inference throughput per precision and XLA setting, measured side by side.

    python benchmarks/train_speed.py --model DeepLabV3_plus --frontend Xception --crop 256 --batch 4
    python benchmarks/train_speed.py --frontend MobileNetV2 Xception --precision float32 mixed_bfloat16 --xla off
    python benchmarks/train_speed.py --backend jax --precision float32 mixed_float16 --xla on off --peak

Random inputs, the suite's own training step (``semseg_suite.training.Trainer``,
the same code train.py runs, auxiliary heads included) and a ``tf.function``
inference call of the main logits. For each model and frontend, one model per
(precision, XLA) variant is built; all are warmed up (tracing, XLA compilation),
then timed in alternation, one step of each variant per round, so that load from
other processes hits them alike. Throughput is the batch over the median step time.
Prints a Markdown table of images per second and, for every precision but
float32, its speed relative to float32.

``--backend jax`` (``pip install -r requirements-bench-jax.txt``) needs no
TensorFlow: the suite's builders are Keras only, and the step is Keras' own, ``compile(jit_compile=XLA)`` with
``train_on_batch`` (cross-entropy on the main logits, Adam) and ``predict_on_batch``;
auxiliary heads are not built there (the Trainer that weighs them is TensorFlow's).
``--peak`` adds each variant's achieved GFLOP/s (forward FLOPs of
``semseg_suite.flops``, 3x for a training step) as a share of the matmul peak
measured in the same run on the same device (``peak.matmul_call``) in the
precision's compute dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

BACKENDS = ("tensorflow", "jax")


def _backend_argument(argv: list[str]) -> str | None:
    """``--backend``'s value in ``argv``: Keras fixes its backend when it is imported."""
    for index, arg in enumerate(argv):
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--backend="):
            return arg.partition("=")[2]
    return None


if __name__ == "__main__" and _backend_argument(sys.argv[1:]) in BACKENDS:
    os.environ["KERAS_BACKEND"] = _backend_argument(sys.argv[1:])
if importlib.util.find_spec(os.environ.get("KERAS_BACKEND", "tensorflow")) is None:
    sys.exit(f"error: the {os.environ['KERAS_BACKEND']} backend is not installed "
             "(for JAX: pip install -r requirements-bench-jax.txt)")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import builders  # noqa: E402
import semseg_suite  # noqa: E402
from benchmarks import peak  # noqa: E402
from semseg_suite import export  # noqa: E402
from semseg_suite.flops import count_flops  # noqa: E402

if keras.backend.backend() == "tensorflow":  # the suite's data and training code is TensorFlow's
    import tensorflow as tf

    from semseg_suite import training

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
# Training FLOPs per image = 3 x the forward's: the backward pass computes the
# gradients of the inputs and of the weights of every layer, each about as costly
# as its forward (optimizer update, batch norm and losses not counted).
TRAIN_FLOPS_PER_FORWARD = 3


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
    parser.add_argument("--backend", choices=BACKENDS, default=keras.backend.backend(),
                        help="Keras backend (default: KERAS_BACKEND's, else tensorflow); must be given on the "
                             "command line or in KERAS_BACKEND, before Keras is imported")
    parser.add_argument("--peak", action="store_true",
                        help="also print achieved GFLOP/s as a share of the measured matmul peak")
    parser.add_argument("--peak-size", type=int, default=4096, help="--peak matmul side (default: 4096)")
    args = parser.parse_args(argv)
    if args.backend != keras.backend.backend():
        parser.error(f"--backend {args.backend}: Keras was imported with the {keras.backend.backend()} backend; "
                     f"run `KERAS_BACKEND={args.backend} python benchmarks/train_speed.py ...`")
    return args


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
    infer: Callable[[object], None]


def build_variant(model_name, frontend, precision, *, num_classes, input_shape=(None, None, 3), xla=False) -> Variant:
    """Builds ``model_name`` on ``frontend`` under ``precision`` as train.py does (auxiliary
    heads with their loss weights, Adam, loss scaling for float16) with its steps; on
    another backend than TensorFlow, Keras' own steps (``build_keras_variant``)."""
    if keras.backend.backend() != "tensorflow":
        return build_keras_variant(model_name, frontend, precision, num_classes=num_classes,
                                   input_shape=input_shape, xla=xla)
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


def build_keras_variant(model_name, frontend, precision, *, num_classes, input_shape=(None, None, 3),
                        xla=False) -> Variant:
    """``model_name`` on ``frontend`` under ``precision`` (main logits only), trained by
    Keras' ``train_on_batch`` after ``compile(jit_compile=xla)`` (Adam, loss scaling
    for float16, cross-entropy; ``random_batch`` has no void labels) and run by
    ``predict_on_batch``."""
    with dtype_policy(precision):
        model = semseg_suite.build_model(model_name, frontend, num_classes=num_classes, input_shape=input_shape)
    optimizer = keras.optimizers.Adam(1e-4)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=xla)
    return Variant(
        inference=model,
        train_step=lambda batch: model.train_on_batch(*batch),
        infer=lambda images: model.predict_on_batch(images),
    )


def random_batch(batch: int, size: int, num_classes: int) -> tuple:
    """Normal images (batch, size, size, 3) and uniform labels (batch, size, size), as
    TensorFlow tensors on TensorFlow, else NumPy arrays."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
    if keras.backend.backend() == "tensorflow":
        return tf.constant(images), tf.constant(labels)
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
    """Train and inference images/s of every (precision, XLA) variant of one model; with
    ``--peak`` also ``"gflops"`` (forward, per image) and ``"peak"`` (dtype -> measured
    matmul GFLOP/s, timed in alternation with the variants)."""
    keras.backend.clear_session()
    batch = random_batch(args.batch, args.crop, args.num_classes)
    input_shape = (args.crop, args.crop, 3) if args.peak else (None, None, 3)  # FLOPs need static sizes
    calls, gflops = {}, None
    for precision in args.precision:
        for xla in args.xla:
            variant = build_variant(model_name, frontend, precision, num_classes=args.num_classes,
                                    input_shape=input_shape, xla=xla == "on")
            calls[("train", precision, xla)] = lambda v=variant: v.train_step(batch)
            calls[("infer", precision, xla)] = lambda v=variant: v.infer(batch[0])
            if args.peak and gflops is None:
                gflops = count_flops(variant.inference) / 1e9
    dtypes = sorted({COMPUTE_DTYPE[p] for p in args.precision}) if args.peak else []
    calls.update({("matmul", dtype): peak.matmul_call(dtype, args.peak_size) for dtype in dtypes})
    seconds = alternate(calls, args.steps, args.warmup)
    speeds = {key: args.batch / value for key, value in seconds.items() if key[0] != "matmul"}
    if args.peak:
        speeds["gflops"] = gflops
        speeds["peak"] = {dtype: 2 * args.peak_size**3 / seconds[("matmul", dtype)] / 1e9 for dtype in dtypes}
    return speeds


def model_frontends(model_name: str, frontends: list[str]) -> list[str | None]:
    """``frontends``, or ``[None]`` for a model with its own encoder."""
    return frontends if builders.MODELS.get(model_name).takes_frontend else [None]


def render_rows(model_name, frontend, speeds, args) -> list[str]:
    """Table rows of one model: images/s per variant, the ratio to float32 and, with
    ``--peak``, achieved GFLOP/s as a share of the compute dtype's matmul peak."""
    rows = []
    for xla in args.xla:
        for precision in args.precision:
            train, infer = speeds[("train", precision, xla)], speeds[("infer", precision, xla)]
            cells = [model_name, frontend or "own encoder", xla, precision, f"{train:.2f}", f"{infer:.2f}", "", ""]
            if precision != "float32" and "float32" in args.precision:
                cells[6] = f"{train / speeds[('train', 'float32', xla)]:.2f}x"
                cells[7] = f"{infer / speeds[('infer', 'float32', xla)]:.2f}x"
            if args.peak:
                matmul = speeds["peak"][COMPUTE_DTYPE[precision]]
                train_gflops = TRAIN_FLOPS_PER_FORWARD * speeds["gflops"] * train
                cells += [f"{train_gflops:.0f} ({train_gflops / matmul:.0%})",
                          f"{speeds['gflops'] * infer:.0f} ({speeds['gflops'] * infer / matmul:.0%})"]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))))
    if keras.backend.backend() == "tensorflow" and tf.config.list_logical_devices("GPU"):
        print(f"Device: {tf.config.list_logical_devices('GPU')[0].name}")
    step = "semseg_suite.training.Trainer" if keras.backend.backend() == "tensorflow" else "Keras train_on_batch"
    print(f"{keras.backend.backend()} backend, {step}; crop {args.crop}x{args.crop}, batch {args.batch}; "
          f"median of {args.steps} alternating timed steps per variant after {args.warmup} warm-up steps")
    print()
    header = ["model", "frontend", "XLA", "precision", "train img/s", "inference img/s", "train vs float32",
              "inference vs float32"]
    if args.peak:
        header += ["train GFLOP/s (% of matmul peak)", "inference GFLOP/s (% of matmul peak)"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|" + "---:|" * (len(header) - 4))
    for model_name in args.model:
        for frontend in model_frontends(model_name, args.frontend):
            speeds = measure(model_name, frontend, args)
            print("\n".join(render_rows(model_name, frontend, speeds, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
