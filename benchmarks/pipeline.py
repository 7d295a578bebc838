"""Input pipeline throughput against the training throughput of the fastest zoo model.

    python benchmarks/pipeline.py                                  # ../shared/data/camvid, crops 256 and 512
    python benchmarks/pipeline.py --dataset path/to/data --crops 512 --models ENet LinkNet

Pipeline: ``semseg_suite.data.make_train_dataset`` exactly as train.py builds it
(train split, train.py's default augmentation: random scale 0.5-2, crop, horizontal
flip; one dataset per epoch), iterated to the end, in images/s. The first epoch
decodes the files and fills the in-memory cache; later epochs read the cache (the
median epoch is reported). A second pipeline row adds brightness and rotation,
the costliest augmentations. Models: each candidate's train step
(``semseg_suite.training.Trainer``, as in ``benchmarks/train_speed.py``) on a
constant batch of the same size, timed in alternation; the fastest is the
reference, and is also timed fed by the real pipeline, both sharing the cores as
in a real run. Goal (issue 6): the pipeline delivers >= 4x the images/s the
fastest model consumes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak, train_speed  # noqa: E402
from semseg_suite import data, training  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOAL_RATIO = 4.0
HEAVY_AUGMENT = data.AugmentConfig(brightness=0.2, rotation=10.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "camvid"),
                        help="dataset folder (default: ../shared/data/camvid from the repo root)")
    parser.add_argument("--crops", nargs="+", type=int, default=[256, 512], help="square crop sizes")
    parser.add_argument("--batch", type=int, default=training.DATASET_DEFAULTS["batch_size"],
                        help="batch size (default: train.py's on a dataset)")
    parser.add_argument("--epochs", type=int, default=4, help="pipeline epochs timed, the first one cold")
    parser.add_argument("--models", nargs="+", default=["ENet", "BiSeNet", "LinkNet"],
                        choices=semseg_suite.list_models(), help="candidates, on their default frontends")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed train steps per model first")
    return parser.parse_args(argv)


def pipeline_speeds(root, crop, batch, epochs, augment, preprocessing) -> tuple[float, float]:
    """Images/s of the first (decode + cache fill) and the median later epoch of a fresh dataset."""
    info = data.load_dataset(root)
    speeds = []
    for epoch in range(epochs):
        dataset = data.make_train_dataset(
            info, "train", batch_size=batch, crop_size=(crop, crop), preprocessing=preprocessing,
            augment=augment, epoch=epoch,
        )
        start, images = time.perf_counter(), 0
        for batch_images, _ in dataset:
            images += int(batch_images.shape[0])
        speeds.append(images / (time.perf_counter() - start))
    return speeds[0], statistics.median(speeds[1:])


def model_speeds(models, crop, args, num_classes) -> tuple[dict[str, float], dict]:
    """Train images/s of each model on a constant batch, timed in alternation; and the variants."""
    keras.backend.clear_session()
    batch = train_speed.random_batch(args.batch, crop, num_classes)
    variants = {
        name: train_speed.build_variant(name, None, "float32", num_classes=num_classes) for name in models
    }
    seconds = train_speed.alternate(
        {name: (lambda v=v: v.train_step(batch)) for name, v in variants.items()}, args.steps, args.warmup
    )
    return {name: args.batch / value for name, value in seconds.items()}, variants


def fed_speed(variant, root, crop, model_name, args) -> float:
    """Train images/s of ``variant`` fed by the real pipeline (first epoch, cache already warm)."""
    info = data.load_dataset(root)
    dataset = data.make_train_dataset(
        info, "train", batch_size=args.batch, crop_size=(crop, crop),
        preprocessing=semseg_suite.preprocessing_mode(semseg_suite.default_frontend(model_name)),
    )
    for batch in dataset.take(1):  # fills the cache
        variant.train_step(batch)
    batches = iter(dataset.skip(1).take(args.warmup + args.steps))
    for _ in range(args.warmup):
        variant.train_step(next(batches))
    start = time.perf_counter()
    for batch in batches:
        variant.train_step(batch)
    return args.steps * args.batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = peak.command_line(__file__, argv)
    info = data.load_dataset(args.dataset)
    preprocessing = semseg_suite.preprocessing_mode(None)
    print("\n".join(peak.header_lines(command)))
    print(f"Dataset: {info.root} ({len(info.splits['train'])} train pairs), batch {args.batch}, "
          f"'{preprocessing}' preprocessing; pipeline: {args.epochs} epochs per row, the first cold; models: median "
          f"of {args.steps} alternating train steps after {args.warmup} warm-up steps, float32")
    model_lines, summary_lines = [], []
    for crop in args.crops:
        cold, warm = pipeline_speeds(args.dataset, crop, args.batch, args.epochs, data.AugmentConfig(), preprocessing)
        heavy_cold, heavy = pipeline_speeds(args.dataset, crop, args.batch, args.epochs, HEAVY_AUGMENT, preprocessing)
        speeds, variants = model_speeds(args.models, crop, args, info.num_classes)
        for name, speed in speeds.items():
            model_lines.append(f"| {crop} | {name} | {semseg_suite.default_frontend(name) or 'own encoder'} "
                               f"| {speed:.2f} |")
        fastest = max(speeds, key=speeds.get)
        fed = fed_speed(variants[fastest], args.dataset, crop, fastest, args)
        ratio = warm / speeds[fastest]
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        summary_lines.append(
            f"| {crop} | {cold:.0f} | {warm:.0f} | {heavy_cold:.0f} / {heavy:.0f} | {fastest} | {speeds[fastest]:.2f} "
            f"| {ratio:.1f}x ({verdict}) | {fed:.2f} |"
        )
    print()
    print("| crop | pipeline img/s, first epoch (decode + cache) | pipeline img/s, cached epochs "
          "| + brightness, rotation (first / cached) | fastest model | its train img/s (constant batch) "
          f"| pipeline / model (goal >= {GOAL_RATIO:.0f}x) | its train img/s fed by the pipeline |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    print("\n".join(summary_lines))
    print()
    print("| crop | candidate model | frontend | train img/s (constant batch) |")
    print("|---:|---|---|---:|")
    print("\n".join(model_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
