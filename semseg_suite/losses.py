"""Segmentation losses, picked by name from `LOSSES`.

Every loss takes integer labels (B, H, W) and logits (B, H, W, C) and skips void
pixels: labels equal to `ignore_index` or outside [0, C) count for nothing, neither in
the sum nor in the number of pixels the mean divides by. Logits may be bfloat16 or
float16 (mixed precision); losses are computed in float32.

Two ways to reduce:
- `get_loss("ce")` (the default reduction) is the mean over valid pixels of the batch,
  for `model.compile` or a single-device loop. Under a `tf.distribute` replica
  context, Keras divides this mean by the number of replicas.
- For a distributed loop, build the loss with `reduction=None` and call
  `masked_loss_sum`, which returns (sum over valid pixels, number of valid pixels).
  SUM-reduce both across replicas and divide: every valid pixel of the global batch
  then has the same weight, however void pixels are spread over replicas.

Adding a loss (weighted CE, Dice, focal, Lovasz, OHEM): write a factory taking
`ignore_index` (and its own hyperparameters) and returning a `keras.losses.Loss`,
then add it to `LOSSES`.
"""

import keras
import tensorflow as tf

from semseg_suite.data import IGNORE_INDEX, valid_pixels


@keras.saving.register_keras_serializable(package="semseg_suite")
class MaskedSparseCrossentropy(keras.losses.SparseCategoricalCrossentropy):
    """Keras sparse cross-entropy from logits, in float32, ignoring void pixels.

    `keras.losses.SparseCategoricalCrossentropy(from_logits=True,
    ignore_class=ignore_index)` with two additions: labels outside [0, C) are mapped
    to `ignore_index` first (TensorFlow would fail on them on CPU and give NaN on GPU),
    and logits are cast to float32. With the default reduction the result is the mean
    over non-ignored pixels (0 when every pixel is ignored); with `reduction=None` it
    is the per-pixel loss, 0 at ignored pixels.
    """

    def __init__(
        self,
        ignore_index=IGNORE_INDEX,
        reduction="sum_over_batch_size",
        name="sparse_crossentropy",
        **kwargs,
    ):
        kwargs.pop("from_logits", None)
        kwargs.pop("ignore_class", None)
        kwargs.setdefault("dtype", "float32")
        super().__init__(
            from_logits=True,
            ignore_class=int(ignore_index),
            reduction=reduction,
            name=name,
            **kwargs,
        )
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        labels = tf.cast(y_true, tf.int32)
        valid = valid_pixels(labels, tf.shape(y_pred)[-1], self.ignore_index)
        labels = tf.where(valid, labels, tf.fill(tf.shape(labels), self.ignore_index))
        return super().call(labels, y_pred)

    def get_config(self):
        config = super().get_config()
        config.pop("from_logits", None)
        config.pop("ignore_class", None)
        config["ignore_index"] = self.ignore_index
        return config


def sparse_crossentropy(ignore_index=IGNORE_INDEX, reduction="sum_over_batch_size"):
    """Pixel-wise softmax cross-entropy, mean over non-ignored pixels.

    Args:
        ignore_index: void label.
        reduction: "sum_over_batch_size" (mean over valid pixels) or None (per-pixel
            losses, for `masked_loss_sum`).

    Returns:
        A `MaskedSparseCrossentropy` (a `keras.losses.SparseCategoricalCrossentropy`).
    """
    return MaskedSparseCrossentropy(ignore_index=ignore_index, reduction=reduction)


def masked_loss_sum(loss_fn_none_reduction, y_true, logits, ignore_index=IGNORE_INDEX):
    """Sum of per-pixel losses over valid pixels, and the number of valid pixels.

    Args:
        loss_fn_none_reduction: callable (y_true, logits) -> per-pixel losses
            (B, H, W), e.g. `get_loss("ce", reduction=None)`.
        y_true: int labels (B, H, W) or (B, H, W, 1).
        logits: (B, H, W, C), any float dtype.
        ignore_index: void label; labels outside [0, C) are void as well.

    Returns:
        (loss_sum, num_valid): float32 scalars. loss_sum / num_valid is the mean over
        valid pixels. Void pixels are given label 0 before calling the loss and their
        loss is then zeroed, so any per-pixel loss can be plugged in.
    """
    logits = tf.convert_to_tensor(logits)
    labels = tf.cast(y_true, tf.int32)
    if labels.shape.rank == logits.shape.rank and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    valid = valid_pixels(labels, tf.shape(logits)[-1], ignore_index)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    per_pixel = tf.cast(loss_fn_none_reduction(safe_labels, logits), tf.float32)
    per_pixel = tf.where(valid, per_pixel, tf.zeros_like(per_pixel))
    return tf.reduce_sum(per_pixel), tf.reduce_sum(tf.cast(valid, tf.float32))


def weighted_loss_sum(loss_fn_none_reduction, y_true, outputs, loss_weights, ignore_index=IGNORE_INDEX):
    """``masked_loss_sum`` over a model's named outputs, weighted (auxiliary heads).

    Args:
        loss_fn_none_reduction: per-pixel loss, as for ``masked_loss_sum``.
        y_true: int labels (B, H, W).
        outputs: logits ``(B, H, W, C)``, or a dict of them keyed by output name.
        loss_weights: output name -> weight; a missing name weighs 1. Unused for a
            single tensor.

    Returns:
        (loss_sum, num_valid): ``sum_k w_k * loss_sum_k`` over the outputs, and the
        number of valid pixels (the same for every output).
    """
    if not isinstance(outputs, dict):
        return masked_loss_sum(loss_fn_none_reduction, y_true, outputs, ignore_index)
    total, valid = 0.0, None
    for name, logits in outputs.items():
        loss_sum, valid = masked_loss_sum(loss_fn_none_reduction, y_true, logits, ignore_index)
        total += float(loss_weights.get(name, 1.0)) * loss_sum
    return total, valid


LOSSES = {
    "ce": sparse_crossentropy,
}


def get_loss(name, **kwargs):
    """Builds the loss registered as `name` in `LOSSES` with `kwargs`."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}"
        ) from None
    return factory(**kwargs)
