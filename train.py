"""Train a segmentation model.

    python train.py --model DeepLabV3_plus --frontend Xception
    python train.py --model DeepLabV3 --frontend ResNet101 --dataset path/to/data --crop-height 512
    python train.py --model FC-DenseNet103 --dataset path/to/camvid --recipe paper
    python train.py --list-recipes

``--dataset`` also takes Pascal VOC, Cityscapes and ADE20K folders and ``tfds:NAME``;
``--images DIR --masks DIR --classes FILE`` a plain pair of folders. Without a
dataset it trains on a built-in synthetic dataset (generated once into
a cache folder), so it runs anywhere with no download.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
ONEDNN_FROM_USER = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # trains faster on every CPU kind measured: cli.log_cpu_path

import semseg_suite  # noqa: E402
from frontends import OUTPUT_STRIDES, FrontendWeightsError  # noqa: E402
from semseg_suite import class_weights, data, distribute, export, losses, optim, recipes, training  # noqa: E402
from semseg_suite.cli import (  # noqa: E402
    add_dataset_arguments, dataset_options, float_in, given_options, ignore_class, non_negative_float, positive_float,
    log_cpu_path, positive_int, setup_logging, str2bool, unit_interval, unit_interval_left_open, unit_interval_open,
)


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
    model.add_argument("--frontend-weights", default="auto", metavar="auto|imagenet|none|PATH|timm:NAME|keras-hub:PRESET",
                       help="auto: ImageNet when cached or downloadable, else random init with a warning; "
                            "timm:NAME (e.g. timm:resnet18.tv_in1k) or keras-hub:PRESET: downloaded and converted "
                            "once (ResNet18/34, DenseNets; see python -m semseg_suite.weights)")

    dataset = parser.add_argument_group("data")
    add_dataset_arguments(dataset)
    dataset.add_argument("--ignore-class", type=ignore_class, metavar="NAME|INDEX",
                         help="void class ignored in loss and metrics (default: a class named Void/Unlabelled, else 255)")
    dataset.add_argument("--crop-height", "--crop_height", type=positive_int, help=default("crop_height"))
    dataset.add_argument("--crop-width", "--crop_width", type=positive_int, help=default("crop_width"))
    dataset.add_argument("--h-flip", "--h_flip", type=str2bool, nargs="?", const=True, default=True,
                         help="random horizontal flips (default: on)")
    dataset.add_argument("--v-flip", "--v_flip", type=str2bool, nargs="?", const=True, default=False,
                         help="random vertical flips (default: off)")
    dataset.add_argument("--brightness", type=unit_interval_open, default=0.0,
                         help="max relative brightness change, e.g. 0.2 (default: 0, off)")
    dataset.add_argument("--rotation", type=non_negative_float, default=0.0, help="max rotation in degrees (default: 0, off)")

    dataset.add_argument("--contrast", type=unit_interval_open, default=0.0,
                         help="max contrast change in [0, 1), factor 1 +- value (default: 0, off)")
    dataset.add_argument("--saturation", type=unit_interval_open, default=0.0,
                         help="max saturation change in [0, 1), factor 1 +- value (default: 0, off)")
    dataset.add_argument("--hue", type=float_in(0, 0.5), default=0.0,
                         help="max hue shift in [0, 0.5] of the hue circle (default: 0, off)")
    dataset.add_argument("--blur-prob", type=unit_interval, default=0.0,
                         help="Gaussian blur probability in [0, 1] (default: 0, off)")
    dataset.add_argument("--blur-sigma", type=float_in(0, 10, low_open=True), default=1.0,
                         help="max blur sigma in pixels, in (0, 10] (default: 1.0; used only with --blur-prob)")
    dataset.add_argument("--grayscale-prob", type=unit_interval, default=0.0,
                         help="random grayscale probability in [0, 1] (default: 0, off)")
    dataset.add_argument("--cutout-prob", type=unit_interval, default=0.0,
                         help="cutout probability in [0, 1], label set to ignore (default: 0, off)")
    dataset.add_argument("--cutout-size", type=unit_interval_left_open, default=0.25,
                         help="max cutout side in (0, 1] of the crop (default: 0.25; used only with --cutout-prob)")
    dataset.add_argument("--random-order", type=str2bool, nargs="?", const=True, default=False,
                         help="photometric ops in a random order per image (default: off, fixed order)")
    dataset.add_argument("--scale-min", type=positive_float, default=0.5, help="min random scale (default: 0.5)")
    dataset.add_argument("--scale-max", type=positive_float, default=2.0, help="max random scale (default: 2.0)")

    optimisation = parser.add_argument_group(
        "optimisation",
        "The batch size and learning rate are GLOBAL: --batch-size is split evenly over the replicas "
        "(GPUs, workers), and the learning rate applies to the mean loss of the whole global batch, "
        "as on one device; it is not rescaled with the number of replicas.",
    )
    optimisation.add_argument("--num-epochs", "--num_epochs", type=positive_int, help=default("num_epochs"))
    optimisation.add_argument("--batch-size", "--batch_size", type=positive_int,
                              help="GLOBAL batch size, split over replicas " + default("batch_size") + "; models "
                                   "with batch norm on a 1x1 map (ASPP image pooling, PSPNet bin 1, BiSeNet "
                                   "attention) refuse 1 image per replica, where that BN outputs a constant "
                                   "(--accum-steps does not help; --sync-bn over several replicas does)")
    optimisation.add_argument("--accum-steps", type=positive_int, default=1,
                              help="average the gradients of this many batches per update, for large crops on "
                                   "small devices: the effective batch is accum-steps x batch-size (default: 1)")
    optimisation.add_argument("--optimizer", choices=optim.OPTIMIZERS, help=default("optimizer"))
    optimisation.add_argument("--learning-rate", "--learning_rate", type=non_negative_float,
                              help="peak learning rate for the global batch " + default("learning_rate"))
    optimisation.add_argument("--lr-schedule", default="poly", choices=optim.SCHEDULES,
                              help="poly: lr (1 - t/T)^0.9 (DeepLab); cosine; step: x --lr-step-factor every "
                                   "--lr-step-epochs; constant (default: poly)")
    optimisation.add_argument("--warmup-epochs", type=non_negative_float, default=0.0,
                              help="linear warm-up from ~0 to the learning rate first (default: 0)")
    optimisation.add_argument("--lr-step-epochs", type=positive_float,
                              help="step schedule: epochs between decays (default: a third of the run)")
    optimisation.add_argument("--lr-step-factor", type=positive_float, default=0.1,
                              help="step schedule: factor applied at each step (default: 0.1; above 1 grows the rate)")
    optimisation.add_argument("--momentum", type=unit_interval_open, default=0.9, help="SGD momentum (default: 0.9)")
    optimisation.add_argument("--weight-decay", type=non_negative_float,
                              help="decoupled weight decay on kernels, not biases or norms "
                                   f"(default: {optim.ADAMW_WEIGHT_DECAY} for adamw, 0 otherwise)")
    optimisation.add_argument("--clip-norm", type=positive_float, help="clip the global gradient norm (default: off)")
    optimisation.add_argument("--loss", default="ce",
                              help=f"loss, or a sum like ce+dice or ce+0.5*dice; one of {', '.join(losses.LOSSES)} "
                                   "(default: ce)")
    optimisation.add_argument("--class-weights", metavar="median-frequency|enet|FILE",
                              help="class-weighted ce/focal/ohem, weights from the training labels "
                                   "(SegNet's median frequency, ENet's 1/ln(1.02 + p)) or a file (default: off)")
    optimisation.add_argument("--focal-gamma", type=non_negative_float, default=2.0, help="focal loss gamma (default: 2)")
    optimisation.add_argument("--ohem-ratio", type=unit_interval_left_open,
                              help="ohem loss: fraction of each image's hardest pixels kept (default: the loss's)")
    optimisation.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling, augmentation")
    optimisation.add_argument("--recipe", metavar="NAME",
                              help="apply the model's published training recipe (paper: its paper's optimiser, "
                                   "schedule, weight decay, batch, crop, augmentation...) to every setting not "
                                   "given on the command line; see --list-recipes (default: off)")
    optimisation.add_argument("--list-recipes", action="store_true",
                              help="print every model's recipes (settings as flags, source, notes) and exit")

    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-dir", help="where checkpoints, log and plots go (default: checkpoints/MODEL_FRONTEND)")
    run.add_argument("--resume", "--continue_training", type=str2bool, nargs="?", const=True, default=False,
                     help="continue from CHECKPOINT_DIR/latest.keras even if that run finished (an unfinished, "
                          "e.g. killed, run continues without it)")
    run.add_argument("--restart", action="store_true",
                     help="start afresh even if CHECKPOINT_DIR holds an unfinished run")
    run.add_argument("--patience", type=positive_int,
                     help="stop when val mIoU has not improved for this many epochs (default: off)")
    run.add_argument("--tensorboard", nargs="?", const="", metavar="DIR",
                     help="write TensorBoard logs (loss, lr, mIoU, per-class IoU, predictions) to DIR "
                          "(default DIR: CHECKPOINT_DIR/tensorboard)")
    run.add_argument("--precision", default="float32", choices=distribute.PRECISIONS,
                     help="mixed_bfloat16: fast on CPUs with AMX/AVX512-BF16 and TPUs; mixed_float16 (with loss "
                          "scaling): GPUs (default: float32)")
    run.add_argument("--xla", default="auto", choices=distribute.XLA_CHOICES,
                     help="XLA jit_compile; auto: on for GPU/TPU, off on CPU where it is slower")
    run.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES,
                     help="tf.distribute strategy; auto: multi-worker when TF_CONFIG names several workers, "
                          "mirrored over several GPUs, else default")
    run.add_argument("--tpu", default="", help="--strategy tpu: TPU name or address (default: local)")
    run.add_argument("--sync-bn", action="store_true",
                     help="batch-norm statistics over all replicas (synchronized BatchNormalization); without "
                          "it each replica normalises by its own part of the batch and the checkpoints keep the "
                          "first replica's moving averages")
    args = parser.parse_args(argv)
    if args.scale_min > args.scale_max:
        parser.error(f"--scale-min {args.scale_min} is above --scale-max {args.scale_max}")
    args.explicit = given_options(parser, argv, args)
    return args


def config_from_args(args: argparse.Namespace) -> training.TrainConfig:
    """Flags map one to one onto ``TrainConfig`` and ``AugmentConfig`` fields (the scale range is two flags);
    ``explicit`` holds the fields whose flags were given (``--scale-min`` or ``--scale-max``: ``scale_range``)."""
    names = {field.name for field in dataclasses.fields(training.TrainConfig)} - {"augment", "data_options", "explicit"}
    augment = data.AugmentConfig(
        scale_range=(args.scale_min, args.scale_max),
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(data.AugmentConfig)
           if field.name != "scale_range"},
    )
    explicit = frozenset("scale_range" if dest in ("scale_min", "scale_max") else dest
                         for dest in args.explicit)
    return training.TrainConfig(
        **{name: getattr(args, name) for name in names}, augment=augment, data_options=dataset_options(args),
        explicit=explicit,
    )


def main(argv=None) -> int:
    setup_logging()
    log_cpu_path(ONEDNN_FROM_USER)
    args = parse_args(argv)
    if args.list_recipes:
        print(recipes.recipes_table())
        return 0
    try:
        training.train(config_from_args(args))
    except (data.DatasetError, export.CheckpointError, FileNotFoundError, FrontendWeightsError, recipes.RecipeError,
            distribute.DistributeError, distribute.XLACompileError, class_weights.ClassWeightsError,
            losses.LossError, training.BatchSizeError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the disk filled while a checkpoint was written; the last one is intact
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except training.NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
