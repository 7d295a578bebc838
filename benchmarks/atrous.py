"""Dilated convolution: Keras's Conv2D against the suite's AtrousConv2D.

    python benchmarks/atrous.py                          # all four tables
    python benchmarks/atrous.py --sizes 8 32 --rates 1 6 18 --skip-models
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/atrous.py --skip-convs --skip-models --skip-aspp

On the TensorFlow backend ``keras.layers.Conv2D(dilation_rate=r)`` runs through
``tf.nn.convolution``, which wraps a dense convolution in space-to-batch and
batch-to-space for any ``r > 1``; ``semseg_suite.layers.AtrousConv2D`` calls the
native dilated kernel, ``tf.nn.conv2d(..., dilations=r)``. Four tables, each
timing its variants alternately (rotating their order every repeat) after
warm-up, and reporting the median:

1. One 3x3 convolution (2048 -> 256 channels, no bias, float32, batch
   ``--batch``) per map size and rate: Keras ``Conv2D`` vs ``AtrousConv2D``.
2. Whole-model inference at ``--image`` px, batch ``--model-batch``: DeepLabV3
   and DeepLabV3+ on ResNet50 at output stride 16 and 8, "before" (the same model
   cloned with every ``AtrousConv2D`` turned back into a plain ``Conv2D``, same
   weights) vs "after" (the suite's model).
3. The goal check: the suite's dense ASPP (``layers.aspp``, rates 6/12/18) on the
   ``image / 16`` map of 2048 channels (output stride 16) against the same ASPP
   with every rate set to 1, and against the Keras-``Conv2D`` ASPP. Goal: the
   dilated one within 1.5x of the rate-1 one.
4. Training: forward and backward (input and kernel gradients) of the table-1
   convolution, per ``--train-sizes`` and ``--train-rates``: Keras ``Conv2D``
   vs ``AtrousConv2D``. Which gradient ``AtrousConv2D`` takes depends on
   whether TensorFlow runs oneDNN (``TF_ENABLE_ONEDNN_OPTS``, fixed when it
   starts; on by default on CPUs with AVX-512): run the script once with each
   setting. The header says which one ran.

Every call is a ``tf.function`` (graph mode, as in training and inference), and
its output is fetched (``.numpy()``) inside the timed region.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak, train_speed  # noqa: E402
from semseg_suite import layers  # noqa: E402
from semseg_suite.layers import AtrousConv2D  # noqa: E402

MODELS = (("DeepLabV3", 16), ("DeepLabV3", 8), ("DeepLabV3_plus", 16), ("DeepLabV3_plus", 8))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="square map sizes of the convolution table (default: 8 16 32 64)")
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 2, 6, 12, 18, 24],
                        help="dilation rates of the convolution table (default: 1 2 6 12 18 24)")
    parser.add_argument("--batch", type=int, default=4, help="batch of the convolution table (default: 4)")
    parser.add_argument("--image", type=int, default=512, help="image size of the model and ASPP tables (default: 512)")
    parser.add_argument("--model-batch", type=int, default=1,
                        help="batch of the model and ASPP tables (default: 1, one image)")
    parser.add_argument("--frontend", default="ResNet50", choices=semseg_suite.list_frontends(),
                        help="frontend of the model table (default: ResNet50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first (default: 1)")
    parser.add_argument("--skip-convs", action="store_true", help="leave out the convolution table")
    parser.add_argument("--skip-models", action="store_true", help="leave out the model table")
    parser.add_argument("--skip-aspp", action="store_true", help="leave out the ASPP goal check")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[16, 32, 64],
                        help="square map sizes of the forward+backward table (default: 16 32 64)")
    parser.add_argument("--train-rates", type=int, nargs="+", default=[2, 6, 12, 24],
                        help="dilation rates of the forward+backward table (default: 2 6 12 24)")
    parser.add_argument("--skip-train", action="store_true", help="leave out the forward+backward table")
    return parser.parse_args(argv)


def inference(model_or_layer, x) -> Callable[[], object]:
    """A call of ``model_or_layer`` on ``x`` in a ``tf.function``, its output fetched."""
    run = tf.function(lambda inputs: model_or_layer(inputs, training=False), autograph=False)
    return lambda: run(x).numpy()


def forward_backward(layer, x) -> Callable[[], object]:
    """Forward and backward pass of ``layer`` on ``x`` (gradients of the input and
    the kernel against a fixed output gradient) in a ``tf.function``, fetched."""
    dy = tf.ones(layer.compute_output_shape(x.shape), x.dtype)

    @tf.function(autograph=False)
    def run(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
        return tape.gradient(outputs, [inputs, layer.kernel], output_gradients=dy)

    return lambda: [g.numpy() for g in run(x)]


def plain_conv2d_clone(model: keras.Model) -> keras.Model:
    """``model`` with every ``AtrousConv2D`` turned back into a ``keras.layers.Conv2D``
    of the same config, holding the same weights: the "before" of the model table."""

    def clone_layer(layer):
        cls = keras.layers.Conv2D if type(layer) is AtrousConv2D else type(layer)
        return cls.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def rows_keras_vs_ours(sizes, rates, args, timed, seed) -> None:
    """One Markdown row per map size and rate: ``timed(layer, x)`` of Keras's
    ``Conv2D`` (3x3, 2048 -> 256, no bias) against an ``AtrousConv2D`` with its
    config and weights."""
    print("| map | rate | Keras Conv2D ms | AtrousConv2D ms | speedup |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(seed)
    for size in sizes:
        x = tf.constant(rng.normal(size=(args.batch, size, size, 2048)), tf.float32)
        for rate in rates:
            keras_conv = keras.layers.Conv2D(256, 3, padding="same", dilation_rate=rate, use_bias=False)
            keras_conv.build(x.shape)
            ours = AtrousConv2D.from_config(keras_conv.get_config())
            ours.build(x.shape)
            ours.set_weights(keras_conv.get_weights())
            calls = {"keras": timed(keras_conv, x), "ours": timed(ours, x)}
            ms = train_speed.median_ms(calls, args.repeats, args.warmup)
            print(f"| {size}x{size} | {rate} | {ms['keras']:.1f} | {ms['ours']:.1f} | "
                  f"{ms['keras'] / ms['ours']:.2f}x |", flush=True)
    print()


def conv_table(args) -> None:
    print(f"3x3 convolution 2048 -> 256, float32, batch {args.batch}: ms per call "
          f"(median of {args.repeats}, after {args.warmup} warm-up)")
    print()
    rows_keras_vs_ours(args.sizes, args.rates, args, inference, seed=0)


def model_table(args) -> None:
    print(f"Whole-model inference, {args.frontend}, {args.image}x{args.image}, batch {args.model_batch}: "
          f"ms per call (median of {args.repeats}, after {args.warmup} warm-up). Before: every "
          "AtrousConv2D cloned back to Keras Conv2D, same weights.")
    print()
    print("| model | output stride | dilated convs | before ms | after ms | speedup |")
    print("|---|---:|---:|---:|---:|---:|")
    x = tf.constant(np.random.default_rng(1).normal(size=(args.model_batch, args.image, args.image, 3)), tf.float32)
    for model_name, output_stride in MODELS:
        keras.backend.clear_session()
        after = semseg_suite.build_model(
            model_name, args.frontend, num_classes=21, output_stride=output_stride,
            input_shape=(args.image, args.image, 3),
        )
        before = plain_conv2d_clone(after)
        dilated = sum(isinstance(layer, AtrousConv2D) for layer in after.layers)
        calls = {"before": inference(before, x), "after": inference(after, x)}
        ms = train_speed.median_ms(calls, args.repeats, args.warmup)
        print(f"| {model_name} | {output_stride} | {dilated} | {ms['before']:.0f} | {ms['after']:.0f} | "
              f"{ms['before'] / ms['after']:.2f}x |", flush=True)
    print()


def aspp_model(size: int, rates) -> keras.Model:
    inputs = keras.Input((size, size, 2048))
    return keras.Model(inputs, layers.aspp(inputs, rates=rates))


def aspp_table(args) -> None:
    size = args.image // 16
    print(f"Goal check: dense ASPP (layers.aspp, 256 filters) on a {size}x{size}x2048 map "
          f"(output stride 16 at {args.image} px), batch {args.model_batch}, float32: ms per call "
          f"(median of {args.repeats}, after {args.warmup} warm-up)")
    print()
    x = tf.constant(np.random.default_rng(2).normal(size=(args.model_batch, size, size, 2048)), tf.float32)
    keras.backend.clear_session()
    dilated = aspp_model(size, (6, 12, 18))
    variants = {
        "rates 1/1/1": inference(aspp_model(size, (1, 1, 1)), x),
        "rates 6/12/18, AtrousConv2D": inference(dilated, x),
        "rates 6/12/18, Keras Conv2D": inference(plain_conv2d_clone(dilated), x),
    }
    ms = train_speed.median_ms(variants, args.repeats, args.warmup)
    base = ms["rates 1/1/1"]
    print("| ASPP | ms | vs rates 1/1/1 |")
    print("|---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / base:.2f}x |")
    ratio = ms["rates 6/12/18, AtrousConv2D"] / base
    print()
    print(f"Goal (<= 1.5x): {ratio:.2f}x, {'met' if ratio <= 1.5 else 'MISSED'}")
    print()


def train_table(args) -> None:
    onednn = "on" if layers.onednn_enabled() else "off"
    print(f"Forward + backward (input and kernel gradients), 3x3 convolution 2048 -> 256, float32, "
          f"batch {args.batch}, oneDNN {onednn} (TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}), AtrousConv2D gradient path "
          f"{layers.atrous_gradient_path()!r}: ms per call (median of {args.repeats}, after {args.warmup} warm-up)")
    print()
    rows_keras_vs_ours(args.train_sizes, args.train_rates, args, forward_backward, seed=3)


def main(argv=None) -> int:
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # retracing notes: every variant is traced once
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))), end="\n\n")
    if not args.skip_convs:
        conv_table(args)
    if not args.skip_models:
        model_table(args)
    if not args.skip_aspp:
        aspp_table(args)
    if not args.skip_train:
        train_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
