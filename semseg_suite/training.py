"""Training: one custom loop for every ``tf.distribute`` strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the suite trains with its own loop: a per-replica step
run by ``strategy.run`` inside a ``tf.function``, with a Keras model, optimizer,
loss and metric. The same code serves the default strategy (CPU or one GPU),
``MirroredStrategy`` (several GPUs), multi-worker training and TPUs.

The loss of a global batch is what one device would compute on the whole batch.
Every loss (``semseg_suite.losses``) is a sum of ratios whose denominators depend
only on the labels (e.g. the number of valid pixels): each replica computes its
denominators, they are summed over all replicas, and each replica divides its own
numerators by the global sums; the optimizer then sums the replicas' gradients.
XLA compiles the per-replica forward and backward pass; the cross-replica sums and
the optimizer update stay outside it.

A run survives being killed: every epoch ends by writing ``latest.keras`` (model,
optimizer with its schedule position, progress) atomically, and the same command
run again continues an unfinished run from there (Keras's ``BackupAndRestore``
needs ``model.fit``; this is its equivalent for the custom loop).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
import pathlib
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import semseg_suite
from semseg_suite import class_weights, data, distribute, export, losses, metrics, optim, recipes, visualize

log = logging.getLogger("semseg_suite")

# Validation images shown in TensorBoard each epoch.
TENSORBOARD_IMAGES = 3


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


class CheckpointDirError(OSError):
    """The checkpoint folder cannot be created or written (checked before training)."""


class BatchSizeError(ValueError):
    """The batch per replica is too small for the model's batch norm."""


def single_value_batch_norms(model: keras.Model) -> list[str]:
    """Names of the trainable ``BatchNormalization`` layers of ``model`` that see
    one value per channel and image.

    Such a layer's input has static size 1 in every dimension it normalises over
    except the batch: a 1x1 map (ASPP's image pooling, PSPNet's bin 1, BiSeNet's
    attention, any BN after a global pooling) or a flat ``(batch, channels)``
    tensor. In training it normalises each channel over the batch alone; with
    one image that is a single value, its mean is the value itself and its
    variance 0, so the layer outputs its offset beta whatever its input, and
    passes no gradient back. Frozen layers (``trainable=False``) use their moving
    statistics and are not listed.
    """
    names = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.BatchNormalization) or not layer.trainable:
            continue
        for node in layer._inbound_nodes:
            shape = node.input_tensors[0].shape
            axis = layer.axis % len(shape)
            if all(size == 1 for index, size in enumerate(shape) if index not in (0, axis)):
                names.append(layer.name)
                break
    return names


def check_batch_norm_batch(model: keras.Model, batch_size: int, replicas: int = 1, *, sync_bn: bool = False) -> None:
    """Refuses to train ``model`` when a batch-norm layer of it would normalise a
    single value per channel (``single_value_batch_norms``).

    Each replica normalises its own part of the global ``batch_size`` (all of it
    with ``sync_bn``). Gradient accumulation does not change this: each batch is
    normalised on its own.

    Raises:
        BatchSizeError: naming the model and the layers.
    """
    normalised = batch_size if sync_bn else batch_size // max(replicas, 1)
    if normalised > 1:
        return
    names = single_value_batch_norms(model)
    if not names:
        return
    fixes = f"--batch-size {2 * replicas} or more" + (" or --sync-bn" if replicas > 1 and not sync_bn else "")
    raise BatchSizeError(
        f"--batch-size {batch_size} is {normalised} image per replica ({replicas} replica"
        f"{'s' if replicas > 1 else ''}), but {model.name} has batch norm on 1x1 maps ({', '.join(names)}): "
        f"on one image it normalises a single value per channel and outputs a constant; use {fixes} "
        "(--accum-steps does not help: each batch is normalised on its own)"
    )


def _synchronized_batch_norm(model) -> bool:
    return any(getattr(layer, "synchronized", False) for layer in model._flatten_layers())


def _main_logits(outputs):
    return outputs[export.MAIN_OUTPUT] if isinstance(outputs, dict) else outputs


class Trainer:
    """Distributed train and evaluation steps for a segmentation model.

    Args:
        model: a model built (and compiled with its optimizer) in ``strategy.scope()``.
        strategy: the ``tf.distribute`` strategy.
        num_classes: number of classes of the logits.
        loss: a ``losses.SegmentationLoss`` (default: cross-entropy).
        ignore_index: label of void pixels.
        jit_compile: compile the per-replica forward/backward pass with XLA.
        loss_weights: for a model whose output is a dict (main ``"logits"`` plus
            auxiliary heads), the loss weight of each output
            (``semseg_suite.models.loss_weights``). Metrics and the evaluation
            loss use the main logits only.
    """

    def __init__(
        self,
        model,
        strategy,
        num_classes,
        *,
        loss=None,
        ignore_index=data.IGNORE_INDEX,
        jit_compile=False,
        loss_weights=None,
    ):
        self.model = model
        self.loss_weights = dict(loss_weights or {})
        self.optimizer = model.optimizer
        self.strategy = strategy
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.jit_compile = jit_compile
        self.loss = loss or losses.get_loss("ce", num_classes=num_classes, ignore_index=ignore_index)
        with strategy.scope():
            self.train_confusion = metrics.ConfusionMatrix(num_classes, ignore_index)
            # Create the optimizer's slots now: created inside the first step, they
            # make tf.function trace the update twice (slow for 500-layer models).
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
        # XLA compiles the forward and backward pass only, so that cross-replica
        # sums stay outside it; without XLA no inner function is needed, and
        # synchronised batch norm (a cross-replica sum inside the model) works.
        if jit_compile and strategy.num_replicas_in_sync > 1 and _synchronized_batch_norm(model):
            raise distribute.DistributeError(
                "--sync-bn cannot be compiled by XLA with several replicas (the cross-replica sum would be "
                "inside the compiled function): use --xla off, or drop --sync-bn"
            )
        self._gradients = (
            tf.function(self._loss_and_gradients, jit_compile=True) if jit_compile else self._loss_and_gradients
        )
        self.train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._evaluate_batch, reduce_retracing=True)

    def _loss_and_gradients(self, images, labels, denominators):
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            loss = losses.weighted_heads_loss(self.loss, labels, outputs, self.loss_weights, denominators)
            if self.model.losses:  # weight regularisers, shared by the replicas
                loss += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss)  # float16: dynamic loss scaling
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        confusion = metrics.confusion_matrix(labels, _main_logits(outputs), self.num_classes, self.ignore_index)
        return loss, gradients, confusion

    def _replica_step(self, images, labels):
        context = tf.distribute.get_replica_context()
        denominators = context.all_reduce(tf.distribute.ReduceOp.SUM, self.loss.denominators(labels, self.num_classes))
        loss, gradients, confusion = self._gradients(images, labels, denominators)
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
        numerators = self.loss.numerators(labels, logits)
        denominators = self.loss.denominators(labels, self.num_classes)
        confusion = metrics.confusion_matrix(labels, logits, self.num_classes, self.ignore_index)
        return numerators, denominators, confusion

    def _run_train_step(self, batch):
        try:
            return float(self.train_step(batch))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError) as error:
            explained = distribute.explain_xla_error(error, self.model) if self.jit_compile else None
            if explained is None:
                raise
            raise explained from error

    def train_epoch(self, dataset: tf.data.Dataset, steps: int, progbar=None, callbacks=None) -> dict:
        """Runs one pass over ``dataset``; returns mean loss, pixel accuracy and mIoU.

        ``steps`` is the expected number of batches, for the progress bar.
        ``callbacks`` (a ``keras.callbacks.CallbackList``) see every batch's loss;
        the epoch ends early when one sets ``model.stop_training`` (e.g.
        ``keras.callbacks.TerminateOnNaN``), and the result then has the 1-based
        ``stopped_at_step``.
        """
        self.train_confusion.reset_state()
        total, step = 0.0, 0
        logs = {}
        for step, batch in enumerate(self.strategy.experimental_distribute_dataset(dataset), 1):
            loss = self._run_train_step(batch)
            total += loss
            if progbar is not None:
                progbar.update(step, [("loss", loss)])
            if callbacks is not None:
                callbacks.on_train_batch_end(step - 1, {"loss": loss})
                if self.model.stop_training:
                    logs["stopped_at_step"] = step
                    break
        scores = self.train_confusion.scores()
        return {
            "loss": total / max(step, 1),
            "pixel_accuracy": scores["pixel_accuracy"],
            "miou": scores["mean_iou"],
            **logs,
        }

    def evaluate(self, dataset: tf.data.Dataset) -> tuple[float, np.ndarray]:
        """The loss and the confusion matrix of a whole split (main logits).

        The loss sums each term's numerators and denominators over the split, so
        it is the loss of the split as one batch.
        """
        numerators = np.zeros(len(self.loss.coefficients), np.float64)
        denominators = np.zeros_like(numerators)
        confusion = np.zeros((self.num_classes, self.num_classes), np.float64)
        for images, labels in dataset:
            batch_numerators, batch_denominators, batch_confusion = self._eval_step(images, labels)
            numerators += batch_numerators.numpy()
            denominators += batch_denominators.numpy()
            confusion += batch_confusion.numpy()
        loss = self.loss.combine(tf.constant(numerators, tf.float32), tf.constant(denominators, tf.float32))
        return float(loss), confusion


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
    momentum: float = 0.9
    weight_decay: float | None = None
    lr_schedule: str = "poly"
    warmup_epochs: float = 0.0
    lr_step_epochs: float | None = None
    lr_step_factor: float = 0.1
    clip_norm: float | None = None
    accum_steps: int = 1
    loss: str = "ce"
    class_weights: str | None = None
    focal_gamma: float = 2.0
    ohem_ratio: float | None = None
    output_stride: int | None = None
    frontend_weights: str = "auto"
    checkpoint_dir: str | None = None
    resume: bool = False
    restart: bool = False
    seed: int = 0
    precision: str = "float32"
    xla: str = "auto"
    strategy: str = "auto"
    tpu: str = ""
    sync_bn: bool = False
    patience: int | None = None
    tensorboard: str | None = None
    ignore_class: str | int | None = None
    # `data.DatasetOptions` fields besides ignore_class (plain folders, SBD, TFDS keys)
    data_options: dict = dataclasses.field(default_factory=dict)
    augment: data.AugmentConfig = dataclasses.field(default_factory=data.AugmentConfig)
    # a recipe of the model (`semseg_suite.recipes`, e.g. "paper"), applied by `train`
    recipe: str | None = None
    # fields (TrainConfig or AugmentConfig names) the user set explicitly, e.g. the
    # flags given to train.py: a recipe leaves them, as it does any non-default value
    explicit: frozenset = frozenset()


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
    if uses_builtin_dataset(config):
        defaults = BUILTIN_DEFAULTS
    else:
        defaults = DATASET_DEFAULTS if frontend is not None else SCRATCH_DEFAULTS
    values = {k: v if getattr(config, k) is None else getattr(config, k) for k, v in defaults.items()}
    run_name = config.model if frontend is None else f"{config.model}_{frontend}"
    checkpoint_dir = config.checkpoint_dir or str(pathlib.Path("checkpoints") / run_name)
    return dataclasses.replace(config, frontend=frontend, checkpoint_dir=checkpoint_dir, **values)


def uses_builtin_dataset(config: TrainConfig) -> bool:
    """No --dataset and no --images/--masks: the built-in synthetic dataset."""
    return config.dataset is None and not config.data_options.get("images")


def check_writable(folder: pathlib.Path) -> None:
    """Proves a file can be written in `folder`, creating it for the test only.

    Raises:
        CheckpointDirError: naming the folder and why, before any training.
    """
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as error:
        raise CheckpointDirError(f"{folder}: checkpoint folder is not writable ({error.strerror or error})") from None
    finally:  # leave nothing behind: the run creates the folder when it first writes
        for path in created:
            try:
                path.rmdir()
            except OSError:
                break


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
    spec = config.dataset
    if uses_builtin_dataset(config):
        from semseg_suite import synthetic

        spec = str(synthetic.ensure_builtin_dataset())
        log.info("No --dataset given: using the built-in synthetic dataset in %s", spec)
    info = data.open_dataset(spec, ignore_class=config.ignore_class, **config.data_options)
    log.info("%s", data.describe(info))
    if len(info.splits["train"]) < config.batch_size:
        raise data.DatasetError(
            f"{info.spec} [train]: {len(info.splits['train'])} images, fewer than --batch-size {config.batch_size}"
        )
    return info


def _make_loss(config: TrainConfig, info: data.DatasetInfo) -> losses.SegmentationLoss:
    weights = None
    if config.class_weights:
        weights = class_weights.class_weights(config.class_weights, info)
        shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(info.class_names, weights))
        log.info("Class weights (%s): %s", config.class_weights, shown)
    hyper = {"focal_gamma": config.focal_gamma}
    if config.ohem_ratio is not None:
        hyper["ohem_ratio"] = config.ohem_ratio
    return losses.get_loss(
        config.loss, num_classes=info.num_classes, ignore_index=data.IGNORE_INDEX, class_weights=weights, **hyper
    )


def _make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    # Keras evaluates schedules at the batch count, also when accumulating gradients
    schedule = optim.make_schedule(
        config.lr_schedule,
        config.learning_rate,
        config.num_epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        step_size=round(config.lr_step_epochs * steps_per_epoch) if config.lr_step_epochs else None,
        step_factor=config.lr_step_factor,
    )
    return optim.make_optimizer(
        config.optimizer,
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        accum_steps=config.accum_steps,
        loss_scaling=config.precision == "mixed_float16",
    )


def _resume_state(config: TrainConfig, latest: pathlib.Path) -> dict | None:
    """The metadata of the checkpoint to resume from, or None to start afresh.

    An unfinished run (killed, or stopped by an error) resumes by itself; a
    finished one only with ``--resume`` (to train more epochs); ``--restart``
    always starts afresh.
    """
    if config.restart or not latest.exists():
        if config.resume and not config.restart:
            log.warning("--resume: no checkpoint in %s, starting from scratch", latest.parent)
        return None
    state = export.read_metadata(latest)
    if not config.resume and state.get("finished", True):
        return None
    for key in ("model", "frontend", "precision"):
        if state.get(key, "float32" if key == "precision" else None) != getattr(config, key):
            raise export.CheckpointError(
                f"{latest}: checkpoint is {key} {state.get(key)!r}, but --{key} is {getattr(config, key)!r}; "
                "pass --restart to start over, or another --checkpoint-dir"
            )
    return state


def _best_so_far(paths) -> tuple[float, int | None]:
    """Score and epoch of the ``best`` checkpoint on disk, read from the file itself:
    after a kill between writing ``best`` and ``latest`` they disagree."""
    best = paths["best.keras"]
    if not best.exists():
        return -1.0, None
    state = export.read_metadata(best)
    return float(state.get("val_miou", -1.0)), state.get("epoch")


def _build_or_resume(config: TrainConfig, info: data.DatasetInfo, steps_per_epoch: int, paths):
    """The model (compiled with its optimizer) and the epoch it starts from.

    Call inside ``strategy.scope()``.
    """
    latest = paths["latest.keras"]
    state = _resume_state(config, latest)
    with distribute.precision_policy(config.precision):
        if state is not None:
            model, _ = export.load_checkpoint(latest, compile=True)
            log.info("Resuming %s from %s after epoch %d", "the unfinished run" if not state.get("finished", True)
                     else "the run", latest, state["epoch"])
            start_epoch = state["epoch"]
        else:
            model = semseg_suite.build_model(
                config.model,
                config.frontend,
                num_classes=info.num_classes,
                output_stride=config.output_stride,
                frontend_weights=config.frontend_weights,
                auxiliary=True,
            )
            model.compile(optimizer=_make_optimizer(config, steps_per_epoch))
            start_epoch = 0
    optim.exclude_from_weight_decay(model.optimizer, model)
    if config.sync_bn:
        log.info("Synchronised batch norm over replicas: %d layers", distribute.synchronize_batch_norm(model))
    return model, start_epoch


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
        "dataset": info.spec,
        "dataset_options": info.options,
        "crop_size": [config.crop_height, config.crop_width],
        "epochs": config.num_epochs,
        "seed": config.seed,
        "precision": config.precision,
        "loss": config.loss,
    }


class _ValidationImages:
    """Writes a few validation predictions (next to their labels) to TensorBoard."""

    def __init__(self, log_dir: pathlib.Path, info: data.DatasetInfo, dataset: tf.data.Dataset):
        self.writer = tf.summary.create_file_writer(str(log_dir / "validation"))
        self.colors = info.colors
        self.batches = list(dataset.take(TENSORBOARD_IMAGES))

    def write(self, model: keras.Model, epoch: int) -> None:
        panels = []
        for images, labels in self.batches:
            predicted = np.argmax(np.asarray(model(images, training=False))[0], axis=-1)
            truth = visualize.colorize(labels.numpy()[0], self.colors)
            panels.append(np.concatenate([truth, visualize.colorize(predicted, self.colors)], axis=1))
        with self.writer.as_default():
            for index, panel in enumerate(panels):
                tf.summary.image(f"label_vs_prediction/{index}", panel[None], step=epoch + 1)
        self.writer.flush()


def _callbacks(config, model, log_path, chief) -> keras.callbacks.CallbackList:
    """NaN stop for every process; the CSV log and TensorBoard on the chief only."""
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks.append(keras.callbacks.CSVLogger(str(log_path), append=True))
        if config.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(config.tensorboard, write_graph=False))
    return keras.callbacks.CallbackList(callbacks, model=model)


def _class_ious(confusion: np.ndarray, class_names, prefix: str) -> dict:
    """Per-class IoU log entries (NaN for a class absent from labels and predictions)."""
    ious = metrics.scores_from_confusion(confusion)["iou"]
    return {f"{prefix}iou/{name}": float(iou) for name, iou in zip(class_names, ious)}


def train(config: TrainConfig) -> dict:
    """Trains a model as configured; returns a summary of the run.

    Writes to ``config.checkpoint_dir``: ``latest`` and ``best`` (by val mIoU)
    checkpoints as ``.keras`` and ``.h5``, ``log.csv`` and loss / mIoU plots.
    ``latest.keras`` is the training state (model with any auxiliary heads, and
    optimizer); the other three hold the inference model (main logits only).
    Under multi-worker training only the chief writes.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the checkpoints of the
            last good epoch are kept.
    """
    config, from_recipe = recipes.apply_recipe(config)
    config = resolve_defaults(config)
    if config.tensorboard is not None and not importlib.util.find_spec("tensorboard"):
        raise ModuleNotFoundError("--tensorboard needs the tensorboard package: pip install tensorboard")
    # Multi-worker strategies must be created before TensorFlow runs anything.
    strategy = distribute.select_strategy(config.strategy, tpu=config.tpu)
    chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    info = _load_data(config)
    val_split = "val" if "val" in info.splits else None
    preprocessing = semseg_suite.preprocessing_mode(config.frontend)
    crop = (config.crop_height, config.crop_width)
    data.check_crop(info, crop, max_scale=config.augment.scale_range[1])
    steps = len(info.splits["train"]) // config.batch_size
    if "iterations" in from_recipe:
        config = dataclasses.replace(config, num_epochs=recipes.epochs_for(from_recipe["iterations"], steps))
        log.info("Recipe %r: %d iterations are %d epochs of %d steps on this training split", config.recipe,
                 from_recipe["iterations"], config.num_epochs, steps)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise distribute.DistributeError(
            f"--batch-size {config.batch_size} is the global batch: it must be a multiple of the "
            f"{strategy.num_replicas_in_sync} replicas"
        )

    jit_compile = distribute.resolve_xla(config.xla)
    out_dir = pathlib.Path(config.checkpoint_dir)
    if chief:
        check_writable(out_dir)
    if config.tensorboard == "":
        config = dataclasses.replace(config, tensorboard=str(out_dir / "tensorboard"))
    paths = checkpoint_paths(out_dir)
    log_path = out_dir / "log.csv"
    loss = _make_loss(config, info)
    with strategy.scope():
        model, start_epoch = _build_or_resume(config, info, steps, paths)
    check_batch_norm_batch(model, config.batch_size, strategy.num_replicas_in_sync, sync_bn=config.sync_bn)
    trainer = Trainer(
        model, strategy, info.num_classes, loss=loss, jit_compile=jit_compile,
        loss_weights=semseg_suite.models.loss_weights(config.model),
    )
    inference = export.inference_model(model)  # main logits only, same layers
    if chief:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, start_epoch)

    replicas = strategy.num_replicas_in_sync
    log.info(
        "Training %s on %s | %d epochs x %d steps | global batch %d (%d per replica x %d replicas)%s, crop %dx%d | "
        "%s loss | %s, lr %g for the global batch (%s schedule%s) | %s | strategy %s | XLA %s | outputs in %s",
        model.name, info.spec, config.num_epochs, steps, config.batch_size, config.batch_size // replicas, replicas,
        f", {config.accum_steps} batches per update" if config.accum_steps > 1 else "", *crop, config.loss,
        config.optimizer, config.learning_rate, config.lr_schedule,
        f", {config.warmup_epochs:g} warm-up epochs" if config.warmup_epochs else "", config.precision,
        distribute.strategy_name(strategy), "on" if jit_compile else "off", out_dir,
    )
    metadata = _metadata(config, info)
    callbacks = _callbacks(config, model, log_path, chief)
    callbacks.on_train_begin()
    val_dataset = (
        data.make_eval_dataset(info, val_split, preprocessing=preprocessing, cache=True) if val_split else None
    )
    images = None
    if chief and config.tensorboard and val_dataset is not None:
        images = _ValidationImages(pathlib.Path(config.tensorboard), info, val_dataset)
    best, best_epoch = _best_so_far(paths) if start_epoch else (-1.0, None)
    history, stop_reason = [], None
    model.stop_training = False
    for epoch in range(start_epoch, config.num_epochs):
        print(f"Epoch {epoch + 1}/{config.num_epochs}", flush=True)
        dataset = data.make_train_dataset(
            info, "train", batch_size=config.batch_size, crop_size=crop, preprocessing=preprocessing,
            augment=config.augment, seed=config.seed, epoch=epoch,
        )
        start = time.perf_counter()
        logs = trainer.train_epoch(dataset, steps, keras.utils.Progbar(steps), callbacks)
        if "stopped_at_step" in logs:
            raise NonFiniteLossError(
                f"the loss became {logs['loss']} at epoch {epoch + 1}, step {logs['stopped_at_step']}; "
                f"stopped, keeping the checkpoints of epoch {epoch} in {out_dir} "
                "(try a lower --learning-rate, --clip-norm, or float32)"
            )
        logs["seconds"] = time.perf_counter() - start
        logs["learning_rate"] = optim.current_learning_rate(model.optimizer)
        if val_dataset is not None:
            logs["val_loss"], confusion = trainer.evaluate(val_dataset)
            logs["val_miou"] = metrics.scores_from_confusion(confusion)["mean_iou"]
            logs.update(_class_ious(confusion, info.class_names, "val_"))
        else:
            logs.update(_class_ious(np.asarray(trainer.train_confusion.matrix), info.class_names, ""))
        score = logs.get("val_miou", logs["miou"])
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k in ("loss", "pixel_accuracy", "miou",
                                                                             "val_loss", "val_miou"))
        print(f"  {shown} - {logs['seconds']:.0f}s", flush=True)
        callbacks.on_epoch_end(epoch, logs)
        if images is not None:
            images.write(inference, epoch)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch + 1
        if config.patience and epoch + 1 - (best_epoch or 0) >= config.patience:
            stop_reason = f"no better {'val ' if val_split else 'train '}mIoU for {config.patience} epochs"
        finished = stop_reason is not None or epoch + 1 == config.num_epochs
        state = {**metadata, "epoch": epoch + 1, "val_miou": score, "best_val_miou": best, "best_epoch": best_epoch,
                 "finished": finished}
        if chief:
            _save_epoch(model, inference, paths, state, improved)
            visualize.plot_history(log_path, out_dir)
        history.append(logs)
        if stop_reason:
            log.info("Early stop after epoch %d: %s", epoch + 1, stop_reason)
            break
    callbacks.on_train_end()

    summary = {
        "best_epoch": best_epoch,
        "best_val_miou": best,
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "checkpoint_dir": str(out_dir),
        "best_checkpoint": str(paths["best.keras"]),
        "tensorboard": config.tensorboard,
        "dataset": info.spec,
        "history": history,
        "model": model,
    }
    if chief:
        print(summary_line(summary, val_split is not None), flush=True)
    return summary


def _save_epoch(model, inference, paths, state, improved) -> None:
    """Writes ``best`` (when improved) and then ``latest``, each atomically.

    ``latest.keras`` is written last: it is what an interrupted run resumes from,
    so once it is there everything it refers to is on disk. Files are never
    changed in place, so a copy is a hard link where the models are the same.
    """
    if improved:
        export.save_checkpoint(inference, paths["best.keras"], state)
        export.save_checkpoint(inference, paths["best.h5"], state)
        export.copy_checkpoint(paths["best.h5"], paths["latest.h5"])
        if inference is model:
            export.copy_checkpoint(paths["best.keras"], paths["latest.keras"])
            return
    else:
        export.save_checkpoint(inference, paths["latest.h5"], state)
    export.save_checkpoint(model, paths["latest.keras"], state)


def summary_line(summary: dict, validated: bool = True) -> str:
    """One line: best epoch and score, and where everything was written."""
    metric = "val mIoU" if validated else "train mIoU"
    where = f"best {summary['best_checkpoint']}, latest, log.csv and plots in {summary['checkpoint_dir']}"
    if summary.get("tensorboard"):
        where += f", TensorBoard logs in {summary['tensorboard']}"
    stopped = f", early stop: {summary['stop_reason']}" if summary.get("stop_reason") else ""
    return (
        f"Done: best {metric} {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']} "
        f"({summary['epochs_run']} epochs this run{stopped}); {where}; data {summary['dataset']}"
    )
