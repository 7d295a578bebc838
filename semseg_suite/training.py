"""Training: one custom loop for every ``tf.distribute`` strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the suite trains with its own loop: a per-replica step
run by ``strategy.run`` inside a ``tf.function``, with a Keras model, optimizer,
loss and metric. The same code serves the default strategy (CPU or one GPU),
``MirroredStrategy`` (several GPUs) and multi-worker training.

The loss of a global batch is the mean over its valid (non-void) pixels: each
replica divides its loss sum by the valid-pixel count summed over all replicas, and
the optimizer sums the replicas' gradients. XLA compiles the per-replica forward and
backward pass; the cross-replica sums and the optimizer update stay outside it.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import semseg_suite
from semseg_suite import data, export, losses, metrics, visualize

log = logging.getLogger("semseg_suite")

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
XLA_CHOICES = ("auto", "on", "off")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def select_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """``auto``: ``MirroredStrategy`` over all GPUs when there are several, else the default."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def resolve_xla(setting: str) -> bool:
    """``auto``: XLA on GPU/TPU, off on CPU (measured 5-6x slower there for DeepLab)."""
    if setting not in XLA_CHOICES:
        raise ValueError(f"xla must be one of {XLA_CHOICES}, got {setting!r}")
    if setting == "auto":
        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return setting == "on"


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9) -> keras.optimizers.Optimizer:
    """Adam, AdamW, SGD with momentum or RMSProp over a float or a schedule."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def poly_schedule(learning_rate: float, total_steps: int, power: float = 0.9):
    """DeepLab's "poly" decay: ``lr * (1 - step / total_steps) ** power``."""
    return keras.optimizers.schedules.PolynomialDecay(
        learning_rate, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=power
    )


def _main_logits(outputs):
    return outputs[export.MAIN_OUTPUT] if isinstance(outputs, dict) else outputs


class Trainer:
    """Distributed train and evaluation steps for a segmentation model.

    Args:
        model: a model built (and compiled with its optimizer) in ``strategy.scope()``.
        strategy: the ``tf.distribute`` strategy.
        num_classes: number of classes of the logits.
        ignore_index: label of void pixels.
        jit_compile: compile the per-replica forward/backward pass with XLA.
        loss_weights: for a model whose output is a dict (main ``"logits"`` plus
            auxiliary heads), the loss weight of each output
            (``semseg_suite.models.loss_weights``). Metrics and the evaluation
            loss use the main logits only.
    """

    def __init__(
        self, model, strategy, num_classes, *, ignore_index=data.IGNORE_INDEX, jit_compile=False, loss_weights=None
    ):
        self.model = model
        self.loss_weights = dict(loss_weights or {})
        self.optimizer = model.optimizer
        self.strategy = strategy
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_fn = losses.get_loss("ce", ignore_index=ignore_index, reduction=None)
        with strategy.scope():
            self.train_confusion = metrics.ConfusionMatrix(num_classes, ignore_index)
            # Create the optimizer's slots now: created inside the first step, they
            # make tf.function trace the update twice (slow for 500-layer models).
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
        self._gradients = tf.function(self._loss_and_gradients, jit_compile=jit_compile)
        self.train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._evaluate_batch, reduce_retracing=True)

    def _loss_and_gradients(self, images, labels, global_valid):
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            loss_sum, _ = losses.weighted_loss_sum(
                self.loss_fn, labels, outputs, self.loss_weights, self.ignore_index
            )
            logits = _main_logits(outputs)
            loss = loss_sum / tf.maximum(global_valid, 1.0)
            if self.model.losses:  # weight regularisers, shared by the replicas
                loss += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
        gradients = tape.gradient(loss, self.model.trainable_variables)
        confusion = metrics.confusion_matrix(labels, logits, self.num_classes, self.ignore_index)
        return loss, gradients, confusion

    def _replica_step(self, images, labels):
        valid = tf.reduce_sum(tf.cast(data.valid_pixels(labels, self.num_classes, self.ignore_index), tf.float32))
        context = tf.distribute.get_replica_context()
        global_valid = context.all_reduce(tf.distribute.ReduceOp.SUM, valid)
        loss, gradients, confusion = self._gradients(images, labels, global_valid)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss, confusion

    def _distributed_train_step(self, batch):
        loss, confusion = self.strategy.run(self._replica_step, args=batch)
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        confusion = self.strategy.reduce(tf.distribute.ReduceOp.SUM, confusion, axis=None)
        self.train_confusion.add_confusion(confusion)
        return loss

    def _evaluate_batch(self, images, labels):
        logits = _main_logits(self.model(images, training=False))
        loss_sum, valid = losses.masked_loss_sum(self.loss_fn, labels, logits, self.ignore_index)
        confusion = metrics.confusion_matrix(labels, logits, self.num_classes, self.ignore_index)
        return loss_sum, valid, confusion

    def train_epoch(self, dataset: tf.data.Dataset, steps: int, progbar=None) -> dict:
        """Runs one pass over ``dataset``; returns mean loss, pixel accuracy and mIoU.

        ``steps`` is the expected number of batches, for the progress bar.
        """
        self.train_confusion.reset_state()
        total, step = 0.0, 0
        for step, batch in enumerate(self.strategy.experimental_distribute_dataset(dataset), 1):
            loss = float(self.train_step(batch))
            total += loss
            if progbar is not None:
                progbar.update(step, [("loss", loss)])
        scores = self.train_confusion.scores()
        return {
            "loss": total / max(step, 1),
            "pixel_accuracy": scores["pixel_accuracy"],
            "miou": scores["mean_iou"],
        }

    def evaluate(self, dataset: tf.data.Dataset) -> tuple[float, np.ndarray]:
        """Mean loss over valid pixels and the confusion matrix of a whole split."""
        loss_sum, valid = 0.0, 0.0
        confusion = np.zeros((self.num_classes, self.num_classes), np.float64)
        for images, labels in dataset:
            batch_loss, batch_valid, batch_confusion = self._eval_step(images, labels)
            loss_sum += float(batch_loss)
            valid += float(batch_valid)
            confusion += batch_confusion.numpy()
        return loss_sum / max(valid, 1.0), confusion


@dataclasses.dataclass
class TrainConfig:
    """Everything ``train`` needs; ``None`` fields take dataset-dependent defaults.

    See ``train.py --help`` for the meaning of each field.
    """

    model: str = "DeepLabV3_plus"
    frontend: str | None = None
    dataset: str | None = None
    num_epochs: int | None = None
    batch_size: int | None = None
    crop_height: int | None = None
    crop_width: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    output_stride: int | None = None
    frontend_weights: str = "auto"
    checkpoint_dir: str | None = None
    resume: bool = False
    seed: int = 0
    xla: str = "auto"
    strategy: str = "auto"
    ignore_class: str | int | None = None
    augment: data.AugmentConfig = dataclasses.field(default_factory=data.AugmentConfig)


# Defaults on the built-in synthetic dataset: sized so the README's first command
# finishes in about ten minutes on a 2-core laptop CPU with the Xception frontend.
BUILTIN_DEFAULTS = dict(num_epochs=6, batch_size=8, crop_height=128, crop_width=128, learning_rate=1e-3, optimizer="adam")
# Defaults on a user's dataset: the usual DeepLab-style recipe (pretrained frontend,
# SGD with momentum and poly decay on 512 crops).
DATASET_DEFAULTS = dict(num_epochs=100, batch_size=8, crop_height=512, crop_width=512, learning_rate=0.01, optimizer="sgd")
# Models with their own encoder (U-Net, ENet, FC-DenseNet, ...) start from random
# weights: there SGD at 0.01 barely moves in the first epochs, and their papers
# train with adaptive optimisers (ENet: Adam; FC-DenseNet: RMSProp, 1e-3).
SCRATCH_DEFAULTS = dict(DATASET_DEFAULTS, learning_rate=1e-3, optimizer="adam")


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """Fills unset fields with the defaults of the built-in or a user dataset."""
    frontend = config.frontend or semseg_suite.default_frontend(config.model)
    if config.dataset is None:
        defaults = BUILTIN_DEFAULTS
    else:
        defaults = DATASET_DEFAULTS if frontend is not None else SCRATCH_DEFAULTS
    values = {k: v if getattr(config, k) is None else getattr(config, k) for k, v in defaults.items()}
    run_name = config.model if frontend is None else f"{config.model}_{frontend}"
    checkpoint_dir = config.checkpoint_dir or str(pathlib.Path("checkpoints") / run_name)
    return dataclasses.replace(config, frontend=frontend, checkpoint_dir=checkpoint_dir, **values)


def checkpoint_paths(checkpoint_dir) -> dict[str, pathlib.Path]:
    root = pathlib.Path(checkpoint_dir)
    return {f"{kind}{suffix}": root / f"{kind}{suffix}" for kind in ("latest", "best") for suffix in export.FORMATS}


def _truncate_log(path: pathlib.Path, epochs_done: int) -> None:
    """Keeps the log rows of finished epochs (a resumed run rewrites the others)."""
    if not path.exists():
        return
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if int(row["epoch"]) < epochs_done)


def _load_data(config: TrainConfig) -> data.DatasetInfo:
    if config.dataset is None:
        from semseg_suite import synthetic

        root = synthetic.ensure_builtin_dataset()
        log.info("No --dataset given: using the built-in synthetic dataset in %s", root)
    else:
        root = pathlib.Path(config.dataset)
    info = data.load_dataset(root, ignore_class=config.ignore_class)
    log.info("%s", data.describe(info))
    if len(info.splits["train"]) < config.batch_size:
        raise data.DatasetError(
            f"{info.root / 'train'}: {len(info.splits['train'])} images, fewer than --batch-size {config.batch_size}"
        )
    return info


def _build_or_resume(config: TrainConfig, info: data.DatasetInfo, total_steps: int, paths) -> tuple[keras.Model, dict]:
    """The model (compiled with its optimizer) and the progress it starts from.

    Call inside ``strategy.scope()``.
    """
    latest = paths["latest.keras"]
    if config.resume and latest.exists():
        model, state = export.load_checkpoint(latest, compile=True)
        for key in ("model", "frontend"):
            if state.get(key) != getattr(config, key):
                raise export.CheckpointError(
                    f"{latest}: checkpoint is {key} {state.get(key)!r}, but --{key} is {getattr(config, key)!r}"
                )
        log.info("Resuming from %s after epoch %d", latest, state["epoch"])
        return model, {key: state.get(key) for key in ("epoch", "best_val_miou", "best_epoch")}
    if config.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", latest.parent)
    model = semseg_suite.build_model(
        config.model,
        config.frontend,
        num_classes=info.num_classes,
        output_stride=config.output_stride,
        frontend_weights=config.frontend_weights,
        auxiliary=True,
    )
    schedule = poly_schedule(config.learning_rate, total_steps)
    model.compile(optimizer=make_optimizer(config.optimizer, schedule))
    return model, {"epoch": 0, "best_val_miou": -1.0, "best_epoch": None}


def _metadata(config: TrainConfig, info: data.DatasetInfo) -> dict:
    """What test.py and predict.py need besides the model, stored in checkpoints."""
    return {
        "format_version": 1,
        "suite_version": semseg_suite.__version__,
        "model": config.model,
        "frontend": config.frontend,
        "output_stride": config.output_stride or semseg_suite.models.default_output_stride(config.model, config.frontend),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "colors": [list(c) for c in info.colors],
        "preprocessing": semseg_suite.preprocessing_mode(config.frontend),
        "ignore_index": data.IGNORE_INDEX,
        "ignore_class": config.ignore_class,
        "dataset": str(info.root.resolve()),
        "crop_size": [config.crop_height, config.crop_width],
        "epochs": config.num_epochs,
        "seed": config.seed,
    }


def train(config: TrainConfig) -> dict:
    """Trains a model as configured; returns a summary of the run.

    Writes to ``config.checkpoint_dir``: ``latest`` and ``best`` (by val mIoU)
    checkpoints as ``.keras`` and ``.h5``, ``log.csv`` and loss / mIoU plots.
    ``latest.keras`` is the training state (model with any auxiliary heads, and
    optimizer); the other three hold the inference model (main logits only).
    """
    config = resolve_defaults(config)
    keras.utils.set_random_seed(config.seed)
    info = _load_data(config)
    val_split = "val" if "val" in info.splits else None
    preprocessing = semseg_suite.preprocessing_mode(config.frontend)
    crop = (config.crop_height, config.crop_width)
    steps = len(info.splits["train"]) // config.batch_size

    strategy = select_strategy(config.strategy)
    jit_compile = resolve_xla(config.xla)
    out_dir = pathlib.Path(config.checkpoint_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = checkpoint_paths(out_dir)
    log_path = out_dir / "log.csv"
    with strategy.scope():
        model, progress = _build_or_resume(config, info, config.num_epochs * steps, paths)
    trainer = Trainer(
        model, strategy, info.num_classes, jit_compile=jit_compile,
        loss_weights=semseg_suite.models.loss_weights(config.model),
    )
    inference = export.inference_model(model)  # main logits only, same layers
    _truncate_log(log_path, progress["epoch"])

    log.info(
        "Training %s on %s | %d epochs x %d steps | global batch %d, crop %dx%d | %s lr %g (poly) | "
        "strategy %s (%d replicas) | XLA %s | outputs in %s",
        model.name, info.root, config.num_epochs, steps, config.batch_size, *crop, config.optimizer,
        config.learning_rate, type(strategy).__name__, strategy.num_replicas_in_sync,
        "on" if jit_compile else "off", out_dir,
    )
    metadata = _metadata(config, info)
    callbacks = keras.callbacks.CallbackList([keras.callbacks.CSVLogger(str(log_path), append=True)], model=model)
    callbacks.on_train_begin()
    val_dataset = (
        data.make_eval_dataset(info, val_split, preprocessing=preprocessing, cache=True) if val_split else None
    )
    best, best_epoch = progress["best_val_miou"], progress["best_epoch"]
    history = []
    for epoch in range(progress["epoch"], config.num_epochs):
        print(f"Epoch {epoch + 1}/{config.num_epochs}", flush=True)
        dataset = data.make_train_dataset(
            info, "train", batch_size=config.batch_size, crop_size=crop, preprocessing=preprocessing,
            augment=config.augment, seed=config.seed, epoch=epoch,
        )
        start = time.perf_counter()
        logs = trainer.train_epoch(dataset, steps, keras.utils.Progbar(steps))
        logs["seconds"] = time.perf_counter() - start
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        if val_dataset is not None:
            logs["val_loss"], confusion = trainer.evaluate(val_dataset)
            logs["val_miou"] = metrics.scores_from_confusion(confusion)["mean_iou"]
        score = logs.get("val_miou", logs["miou"])
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k not in ("seconds", "learning_rate"))
        print(f"  {shown} - {logs['seconds']:.0f}s", flush=True)
        callbacks.on_epoch_end(epoch, logs)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
        state = {**metadata, "epoch": epoch + 1, "val_miou": score, "best_val_miou": best, "best_epoch": best_epoch}
        # latest first: a crash here keeps the older best. latest.keras holds the
        # training model (auxiliary heads too) and optimizer for --resume; the others
        # the inference model.
        export.save_checkpoint(model, paths["latest.keras"], state)
        export.save_checkpoint(inference, paths["latest.h5"], state)
        if improved:
            if inference is model:
                export.copy_checkpoint(paths["latest.keras"], paths["best.keras"])
            else:
                export.save_checkpoint(inference, paths["best.keras"], state)
            export.copy_checkpoint(paths["latest.h5"], paths["best.h5"])
        visualize.plot_history(log_path, out_dir)
        history.append(logs)
    callbacks.on_train_end()

    log.info(
        "Done. Best %s %.4f at epoch %s; checkpoints, log.csv and plots in %s; data in %s",
        "val mIoU" if val_split else "train mIoU", best, best_epoch, out_dir, info.root,
    )
    return {
        "best_epoch": best_epoch,
        "best_val_miou": best,
        "checkpoint_dir": str(out_dir),
        "best_checkpoint": str(paths["best.keras"]),
        "dataset": str(info.root),
        "history": history,
    }
