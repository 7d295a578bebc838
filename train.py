"""Train a segmentation model.

    python train.py --model DeepLabV3_plus --frontend Xception
    python train.py --model DeepLabV3 --frontend ResNet101 --dataset path/to/data --crop-height 512

Without ``--dataset`` it trains on a built-in synthetic dataset (generated once into
a cache folder), so it runs anywhere with no download.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import semseg_suite  # noqa: E402
from frontends import OUTPUT_STRIDES, FrontendWeightsError  # noqa: E402
from semseg_suite import data, export, training  # noqa: E402
from semseg_suite.cli import ignore_class, setup_logging, str2bool  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    builtin, user, scratch = training.BUILTIN_DEFAULTS, training.DATASET_DEFAULTS, training.SCRATCH_DEFAULTS

    def default(key):
        text = f"(default: {builtin[key]} on the built-in dataset, {user[key]} on --dataset"
        if scratch[key] != user[key]:
            text += f", {scratch[key]} there for models with their own encoder"
        return text + ")"

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="DeepLabV3_plus", choices=semseg_suite.list_models())
    model.add_argument("--frontend", choices=semseg_suite.list_frontends(),
                       help="backbone (default: the model's: Xception for DeepLabV3_plus; "
                            "none for models with their own encoder, e.g. U-Net, ENet)")
    model.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES,
                       help="frontend output stride (default: the model's, 16 for DeepLab, 32 for most others)")
    model.add_argument("--frontend-weights", default="auto", metavar="auto|imagenet|none|PATH",
                       help="auto: ImageNet when cached or downloadable, else random init with a warning")

    dataset = parser.add_argument_group("data")
    dataset.add_argument("--dataset", help="dataset folder (default: the built-in synthetic dataset)")
    dataset.add_argument("--ignore-class", type=ignore_class, metavar="NAME|INDEX",
                         help="void class ignored in loss and metrics (default: a class named Void/Unlabelled, else 255)")
    dataset.add_argument("--crop-height", "--crop_height", type=int, help=default("crop_height"))
    dataset.add_argument("--crop-width", "--crop_width", type=int, help=default("crop_width"))
    dataset.add_argument("--h-flip", "--h_flip", type=str2bool, nargs="?", const=True, default=True,
                         help="random horizontal flips (default: on)")
    dataset.add_argument("--v-flip", "--v_flip", type=str2bool, nargs="?", const=True, default=False,
                         help="random vertical flips (default: off)")
    dataset.add_argument("--brightness", type=float, default=0.0,
                         help="max relative brightness change, e.g. 0.2 (default: 0, off)")
    dataset.add_argument("--rotation", type=float, default=0.0, help="max rotation in degrees (default: 0, off)")
    dataset.add_argument("--scale-min", type=float, default=0.5, help="min random scale (default: 0.5)")
    dataset.add_argument("--scale-max", type=float, default=2.0, help="max random scale (default: 2.0)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--num-epochs", "--num_epochs", type=int, help=default("num_epochs"))
    optim.add_argument("--batch-size", "--batch_size", type=int,
                       help="GLOBAL batch size, split over replicas " + default("batch_size"))
    optim.add_argument("--learning-rate", "--learning_rate", type=float,
                       help="initial learning rate, poly-decayed to 0 " + default("learning_rate"))
    optim.add_argument("--optimizer", choices=training.OPTIMIZERS, help=default("optimizer"))
    optim.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling, augmentation")

    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-dir", help="where checkpoints, log and plots go (default: checkpoints/MODEL_FRONTEND)")
    run.add_argument("--resume", "--continue_training", type=str2bool, nargs="?", const=True, default=False,
                     help="continue from CHECKPOINT_DIR/latest.keras (weights, optimizer, epoch)")
    run.add_argument("--xla", default="auto", choices=training.XLA_CHOICES,
                     help="XLA jit_compile; auto: on for GPU/TPU, off on CPU where it is slower")
    run.add_argument("--strategy", default="auto", choices=training.STRATEGIES,
                     help="tf.distribute strategy; auto: mirrored over several GPUs, else default")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> training.TrainConfig:
    """Flags map one to one onto ``TrainConfig`` fields; augmentation flags are grouped."""
    names = {field.name for field in dataclasses.fields(training.TrainConfig)} - {"augment"}
    augment = data.AugmentConfig(
        scale_range=(args.scale_min, args.scale_max),
        h_flip=args.h_flip,
        v_flip=args.v_flip,
        brightness=args.brightness,
        rotation=args.rotation,
    )
    return training.TrainConfig(**{name: getattr(args, name) for name in names}, augment=augment)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        training.train(config_from_args(args))
    except (data.DatasetError, export.CheckpointError, FileNotFoundError, FrontendWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
