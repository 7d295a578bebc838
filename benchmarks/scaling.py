"""Inference cost against image size: does it grow linearly with the pixels?

    python benchmarks/scaling.py
    python benchmarks/scaling.py --frontends Xception --sizes 512 1024 --repeats 5

DeepLabV3+ (output stride 16) on each frontend, one model per frontend built for
any input size, a ``tf.function`` inference call per size (float32, batch
``--batch``). The sizes are timed alternately (their order rotated every repeat)
after warm-up; the table gives the median milliseconds per image and each size's
cost relative to the previous one. Four times the pixels should cost about four
times as much: the goal is 1024 px within 4.4x of 512 px.
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

GOAL = 4.4  # 1024 px against 512 px: 4x the pixels, 10% slack


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DeepLabV3_plus", choices=semseg_suite.list_models(),
                        help="architecture (default: DeepLabV3_plus)")
    parser.add_argument("--frontends", nargs="+", default=["MobileNetV2", "Xception"],
                        choices=semseg_suite.list_frontends(), help="frontends (default: MobileNetV2 Xception)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024],
                        help="square image sizes (default: 256 512 1024)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per size first (default: 1)")
    return parser.parse_args(argv)


def inference_calls(model: keras.Model, sizes, batch: int) -> dict[int, Callable[[], object]]:
    """One fetched ``tf.function`` inference call per image size (one trace each)."""
    predict = tf.function(lambda x: model(x, training=False), autograph=False)
    rng = np.random.default_rng(0)
    calls = {}
    for size in sizes:
        images = tf.constant(rng.normal(size=(batch, size, size, 3)), tf.float32)
        calls[size] = lambda images=images: predict(images).numpy()
    return calls


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = sorted(args.sizes)
    tf.get_logger().setLevel("ERROR")  # retracing notes: one trace per size is intended
    print("\n".join(peak.header_lines(peak.command_line(__file__, argv))), end="\n\n")
    print(f"{args.model}, default output stride, float32, batch {args.batch}: ms per image, median of "
          f"{args.repeats} alternated calls after {args.warmup} warm-up; b/a = cost at b px over cost at a px "
          "((b/a)^2 times the pixels)")
    print()
    print("| frontend | " + " | ".join(f"{s} px ms" for s in sizes) + " | "
          + " | ".join(f"{b}/{a}" for a, b in zip(sizes, sizes[1:])) + " |")
    print("|---|" + "---:|" * (2 * len(sizes) - 1))
    verdicts = []
    for frontend in args.frontends:
        keras.backend.clear_session()
        model = semseg_suite.build_model(args.model, frontend, num_classes=21)
        ms = train_speed.median_ms(inference_calls(model, sizes, args.batch), args.repeats, args.warmup)
        per_image = {size: value / args.batch for size, value in ms.items()}
        ratios = [per_image[b] / per_image[a] for a, b in zip(sizes, sizes[1:])]
        print(f"| {frontend} | " + " | ".join(f"{per_image[s]:.0f}" for s in sizes) + " | "
              + " | ".join(f"{r:.2f}x" for r in ratios) + " |", flush=True)
        if 512 in per_image and 1024 in per_image:
            ratio = per_image[1024] / per_image[512]
            verdicts.append(f"{frontend}: 1024/512 = {ratio:.2f}x, {'met' if ratio <= GOAL else 'MISSED'}")
    if verdicts:
        print()
        print(f"Goal (1024 px within {GOAL}x of 512 px): " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
