"""Side by side with keras-hub and segmentation_models, in one process.

    pip install -r requirements-bench.txt
    python benchmarks/compare_peers.py                       # every design, 256 and 512 px
    python benchmarks/compare_peers.py --designs deeplab --sizes 512

Designs and contenders, all with random weights, 12 classes, float32:

- ``deeplab``: DeepLabV3+ on ResNet50. Ours at its default output stride 16,
  ours at output stride 32 (keras-hub's layout: ASPP on the stride-32 features,
  rates 6/12/18), and keras-hub's ``DeepLabV3ImageSegmenter`` built from config
  (no preset): a ``ResNetBackbone`` with ResNet50 v1's config and
  ``DeepLabV3Backbone(spatial_pyramid_pooling_key="P5", upsampling_size=8,
  dilation_rates=[6, 12, 18], low_level_feature_key="P2",
  projection_filters=48)``, the architecture of its
  ``deeplab_v3_plus_resnet50_pascalvoc`` preset (same parameter count).
- ``linknet``: our ``LinkNet`` (default frontend ResNet18) vs segmentation_models'
  ``Linknet("resnet18")``.
- ``unet``: our ``U-Net`` on the ResNet34 frontend vs segmentation_models'
  ``Unet("resnet34")``; ours once as built by default (decoder 512 to 32
  channels, the paper's widths) and once with ``filters=32`` (256 to 16,
  segmentation_models' default ``decoder_filters``).

segmentation_models 1.0.1 is a Keras-2-era package; with ``SM_FRAMEWORK=tf.keras``
it imports ``tensorflow.keras``, which is Keras 3 under TF 2.21, and its models
build, run and train there unchanged (``encoder_weights=None``; its ImageNet
loading was not tried), so it runs in this process under the same Keras as ours.

Every contender runs the SAME code: the suite's training step
(``semseg_suite.training.Trainer``, cross-entropy, Adam, the code train.py runs)
and a ``tf.function`` inference call. For each design and size the contenders are
built, warmed up (tracing included), then timed alternately (their order rotated
every repeat) and the median is reported as images per second. ``vs peer`` is
ours / theirs. GFLOPs per image are TensorFlow's profiler count of the inference
graph (every float op, elementwise ones included).

``--profile`` then runs one more training step and inference call per contender
under TensorFlow's profiler and lists the layers that take the most op time (self
time summed over threads, idle time left out), to show where a gap comes from.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib.metadata
import io
import json
import os
import pathlib
import re
import sys
import tempfile
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler import model_analyzer, option_builder  # noqa: E402
# TensorFlow's converter of profiler traces to tables (what TensorBoard's profile
# plugin calls); TF has no public API that returns per-op times.
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak, train_speed  # noqa: E402
from semseg_suite import training  # noqa: E402

NUM_CLASSES = 12
PEER_PACKAGES = ("keras-hub", "segmentation-models")


def keras_hub_deeplabv3_plus() -> keras.Model:
    """keras-hub's DeepLabV3+ ResNet50 from config, random weights."""
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
        projection_filters=48,
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=NUM_CLASSES)


def segmentation_models(architecture: str, encoder: str) -> Callable[[], keras.Model]:
    """A builder of segmentation_models' ``architecture`` (``"Unet"``, ``"Linknet"``)."""

    def build():
        with contextlib.redirect_stdout(io.StringIO()):  # its import prints the framework it uses
            import segmentation_models as sm

        return getattr(sm, architecture)(
            encoder, encoder_weights=None, classes=NUM_CLASSES, activation=None, input_shape=(None, None, 3)
        )

    return build


def ours(model: str, frontend: str | None, **kwargs) -> Callable[[], keras.Model]:
    return lambda: semseg_suite.build_model(model, frontend, num_classes=NUM_CLASSES, **kwargs)


# Per design: (label, builder, is ours), the peer last.
DESIGNS = {
    "deeplab": (
        "DeepLabV3+ ResNet50",
        [
            ("ours, OS 16", ours("DeepLabV3_plus", "ResNet50"), True),
            ("ours, OS 32", ours("DeepLabV3_plus", "ResNet50", output_stride=32, atrous_rates=(6, 12, 18)), True),
            ("keras-hub (OS 32)", keras_hub_deeplabv3_plus, False),
        ],
    ),
    "linknet": (
        "LinkNet ResNet18",
        [
            ("ours", ours("LinkNet", None), True),
            ("segmentation_models", segmentation_models("Linknet", "resnet18"), False),
        ],
    ),
    "unet": (
        "U-Net ResNet34",
        [
            ("ours", ours("U-Net", "ResNet34"), True),
            ("ours, filters 32", ours("U-Net", "ResNet34", filters=32), True),
            ("segmentation_models", segmentation_models("Unet", "resnet34"), False),
        ],
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS),
                        help="designs to compare (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512],
                        help="square input sizes (default: 256 512)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per contender (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per contender first (default: 1)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list each contender's N most expensive layers (default: 0, off)")
    return parser.parse_args(argv)


def print_header(argv) -> None:
    """Machine, versions (the peers' too), load and the command, above the table."""
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))))
    print("Peers: " + ", ".join(f"{name} {importlib.metadata.version(name)}" for name in PEER_PACKAGES))
    print()

def gflops_per_image(predict, images) -> float:
    """Float ops of the traced inference graph (TensorFlow's profiler), per image."""
    graph = predict.get_concrete_function(tf.TensorSpec(images.shape, images.dtype)).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return model_analyzer.profile(graph, options=options).total_float_ops / images.shape[0] / 1e9


def steps(model: keras.Model, images, labels) -> tuple[Callable, Callable, Callable]:
    """The suite's training step and an inference call on one fixed batch, and the
    traced inference function itself."""
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), NUM_CLASSES)
    predict = tf.function(lambda x: model(x, training=False), autograph=False)
    return (
        lambda: trainer.train_step((images, labels)).numpy(),
        lambda: predict(images).numpy(),
        predict,
    )


def op_self_times(run: Callable[[], object]) -> dict[str, float]:
    """Self time (microseconds, summed over threads) of every TF op in one call of
    ``run``, by op name, from TensorFlow's profiler; idle time left out."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        traces = [str(path) for path in pathlib.Path(logdir).rglob("*.xplane.pb")]
        data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(traces, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"TensorFlow's profiler gave no op statistics: {data!r:.200}")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    times = collections.Counter()
    for row in table["rows"]:
        fields = dict(zip(columns, [cell["v"] if cell else None for cell in row["c"]]))
        if fields["type"] != "IDLE":
            times[fields["operation"]] += fields["total_self_time"]
    return times


def layer_of(op_name: str, is_container: dict[str, bool]) -> str:
    """The outermost layer of ``op_name``'s scope that is not a model.

    Scopes carry Keras's call suffix (``conv1_conv_1`` for layer ``conv1_conv``);
    ops outside every layer (loss, optimizer) are ``(outside layers)``.
    """
    for part in op_name.split("/"):
        for name in (part, re.sub(r"_\d+$", "", part)):
            if name in is_container and not is_container[name]:
                return name
    return "(outside layers)"


def top_layers(model: keras.Model, run: Callable[[], object], count: int) -> str:
    """``count`` layers with the most op time in one call of ``run``, with their share."""
    is_container = {
        layer.name: isinstance(layer, keras.Model) for layer in model._flatten_layers(include_self=True)
    }
    per_layer = collections.Counter()
    for op_name, micros in op_self_times(run).items():
        per_layer[layer_of(op_name, is_container)] += micros
    total = sum(per_layer.values())
    return ", ".join(f"{name} {100 * micros / total:.0f}%" for name, micros in per_layer.most_common(count))


@dataclasses.dataclass(frozen=True)
class Contender:
    """A built model, its training step and inference call, and its GFLOPs per image."""

    model: keras.Model
    train: Callable[[], object]
    infer: Callable[[], object]
    gflops: float


def compare(design: str, size: int, args) -> tuple[list[str], list[str]]:
    """Markdown rows of one design at one input size, and the profile lines."""
    title, contenders = DESIGNS[design]
    keras.backend.clear_session()
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(args.batch, size, size, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, NUM_CLASSES, (args.batch, size, size)), tf.int32)
    built = {}
    for label, build, _ in contenders:
        model = build()
        train, infer, predict = steps(model, images, labels)
        built[label] = Contender(model, train, infer, gflops_per_image(predict, images))
    train_s = train_speed.alternate({label: c.train for label, c in built.items()}, args.repeats, args.warmup)
    infer_s = train_speed.alternate({label: c.infer for label, c in built.items()}, args.repeats, args.warmup)
    peer = contenders[-1][0]
    rows, profiles = [], []
    if args.profile:
        for label, c in built.items():
            for step, run in (("train step", c.train), ("inference", c.infer)):
                profiles.append(f"- {title}, {size} px, {label}, {step}: {top_layers(c.model, run, args.profile)}")
    for label, _, is_ours in contenders:
        train_ratio = f"{train_s[peer] / train_s[label]:.2f}x" if is_ours else ""
        infer_ratio = f"{infer_s[peer] / infer_s[label]:.2f}x" if is_ours else ""
        rows.append(
            f"| {title} | {size} | {label} | {built[label].model.count_params() / 1e6:.2f} | "
            f"{built[label].gflops:.1f} | "
            f"{args.batch / train_s[label]:.2f} | {args.batch / infer_s[label]:.2f} | {train_ratio} | {infer_ratio} |"
        )
    return rows, profiles


def main(argv=None) -> int:
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    print_header(argv)
    print(f"batch {args.batch}, float32, {NUM_CLASSES} classes; images/s from the median of {args.repeats} "
          f"alternated steps after {args.warmup} warm-up; vs peer = ours / peer (higher is better)")
    print()
    print("| design | px | contender | params (M) | GFLOPs/img | train img/s | inference img/s "
          "| train vs peer | inference vs peer |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    profiles = []
    for design in args.designs:
        for size in args.sizes:
            rows, design_profiles = compare(design, size, args)
            print("\n".join(rows), flush=True)
            profiles += design_profiles
    if profiles:
        print()
        print(f"Layers with the most op time (share of busy op time, threads summed; top {args.profile}):")
        print()
        print("\n".join(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
