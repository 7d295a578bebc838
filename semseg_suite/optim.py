"""Optimisers and learning-rate schedules, by name, as train.py offers them.

Every optimiser is a stock Keras one. Options shared by all of them:

- ``weight_decay``: Keras's decoupled decay (``w -= lr * weight_decay * w`` at each
  update, as in AdamW), applied to kernels only: biases and normalisation scales and
  offsets are excluded, as is usual for segmentation networks.
- ``clip_norm``: Keras's ``global_clipnorm``, the norm over all gradients together.
- ``accum_steps``: Keras's ``gradient_accumulation_steps``: the update uses the mean
  gradient of that many consecutive batches, so a small batch that fits the device
  trains like one ``accum_steps`` times larger. ``optimizer.iterations`` then counts
  updates, but Keras still evaluates the schedule at the batch count.

Schedules are functions of the batch count: ``poly`` (DeepLab: ``lr * (1 -
t/T)^0.9``), ``cosine`` (Loshchilov & Hutter 2017, to 0), ``step`` (times ``factor``
every ``step_size`` batches) and ``constant``, each optionally after a linear warm-up
(Goyal et al. 2017). They are Keras schedules, saved with the optimizer in a
``.keras`` checkpoint, so a resumed run continues the same curve.
"""

from __future__ import annotations

import keras
from keras import ops

from semseg_suite.layers import PACKAGE

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("poly", "cosine", "step", "constant")
POLY_POWER = 0.9
# AdamW's decay when none is given: Loshchilov & Hutter's and PyTorch's default.
ADAMW_WEIGHT_DECAY = 0.01


@keras.saving.register_keras_serializable(package=PACKAGE)
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a schedule's start, then that schedule.

    For ``step < warmup_steps`` the rate is ``after(0) * (step + 1) / warmup_steps``;
    from then on ``after(step - warmup_steps)``, so the decay that follows spans the
    remaining steps.

    Args:
        after: the schedule (or constant rate) that follows the warm-up.
        warmup_steps: length of the warm-up in batches (> 0).
    """

    def __init__(self, after, warmup_steps: int):
        if warmup_steps <= 0:
            raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def _after(self, step):
        if isinstance(self.after, keras.optimizers.schedules.LearningRateSchedule):
            return ops.cast(self.after(step), "float32")
        return ops.cast(self.after, "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        ramp = self._after(0) * (step + 1.0) / warmup
        return ops.where(step < warmup, ramp, self._after(ops.maximum(step - warmup, 0.0)))

    def get_config(self):
        return {"after": keras.saving.serialize_keras_object(self.after), "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["after"]), config["warmup_steps"])


def make_schedule(
    name: str,
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    step_size: int | None = None,
    step_factor: float = 0.1,
):
    """A learning-rate schedule over ``total_steps`` batches.

    Args:
        name: one of ``SCHEDULES``.
        learning_rate: the peak rate (reached after the warm-up).
        total_steps: batches of the whole run, warm-up included.
        warmup_steps: batches of linear warm-up first (0: none).
        step_size: for ``step``, batches between decays (default: a third of the
            decay phase, so the rate drops twice, as in the classic ResNet recipe).
        step_factor: for ``step``, the factor of each decay.

    Returns:
        A ``keras.optimizers.schedules.LearningRateSchedule``, or a float for a
        constant rate without warm-up.
    """
    if name not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {name!r}")
    if warmup_steps < 0 or (total_steps > 0 and warmup_steps >= total_steps):
        raise ValueError(f"warm-up of {warmup_steps} steps must be shorter than the run ({total_steps} steps)")
    decay_steps = max(total_steps - warmup_steps, 1)
    schedules = keras.optimizers.schedules
    if name == "poly":
        after = schedules.PolynomialDecay(learning_rate, decay_steps, end_learning_rate=0.0, power=POLY_POWER)
    elif name == "cosine":
        after = schedules.CosineDecay(learning_rate, decay_steps, alpha=0.0)
    elif name == "step":
        size = step_size or max(decay_steps // 3, 1)
        after = schedules.ExponentialDecay(learning_rate, size, step_factor, staircase=True)
    else:
        after = float(learning_rate)
    return LinearWarmup(after, warmup_steps) if warmup_steps else after


def make_optimizer(
    name: str,
    learning_rate,
    *,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    clip_norm: float | None = None,
    accum_steps: int = 1,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """A Keras optimiser by name.

    Args:
        name: one of ``OPTIMIZERS``: SGD with momentum, Adam, AdamW or RMSProp
            (the old suite's default).
        learning_rate: a float or a schedule (``make_schedule``).
        momentum: SGD's momentum.
        weight_decay: decoupled weight decay (None: ``ADAMW_WEIGHT_DECAY`` for
            AdamW, none for the others). Call ``exclude_from_weight_decay`` with the
            model before training.
        clip_norm: clip the global gradient norm to this (None: no clipping).
        accum_steps: batches whose gradients are averaged into one update.
        loss_scaling: wrap in a dynamic ``LossScaleOptimizer`` (float16 training).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be at least 1, got {accum_steps}")
    if weight_decay is None:
        weight_decay = ADAMW_WEIGHT_DECAY if name == "adamw" else 0.0
    common = {
        "weight_decay": weight_decay or None,
        "global_clipnorm": clip_norm,
        "gradient_accumulation_steps": accum_steps if accum_steps > 1 else None,
    }
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, **common)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, **common)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, **{**common, "weight_decay": weight_decay})
    else:
        optimizer = keras.optimizers.RMSprop(learning_rate, **common)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer


def exclude_from_weight_decay(optimizer: keras.optimizers.Optimizer, model: keras.Model) -> None:
    """Decays kernels only: not biases, nor normalisation scales and offsets.

    Keras does not save this choice with the optimiser, so it is made again after
    a checkpoint is loaded.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the next update uses (of the inner optimiser under loss scaling)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(ops.convert_to_numpy(inner.learning_rate))
