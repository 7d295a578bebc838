"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Every score here is computed from a single (C, C) confusion matrix summed over all
pixels of all images (rows = ground truth, columns = prediction). Nothing is averaged
per image: a per-image mean IoU weights a 10-pixel image like a 10^6-pixel one and lets
classes absent from an image distort the mean (a mistake of the old TF1 port).

- `confusion_matrix` builds the matrix of one batch (on `tf.math.confusion_matrix`).
- `ConfusionMatrix` is a streaming Keras metric holding the running matrix; its
  `result()` is the mean IoU.
- `scores_from_confusion` turns a NumPy matrix into every reported score.

Under `tf.distribute`, either call `update_state` inside `strategy.run` (each replica
keeps its own partial matrix; reading the variable sums them), or compute
`confusion_matrix` per replica, `strategy.reduce(SUM, ...)` it and pass the result to
`add_confusion` outside `strategy.run`. Both count every pixel exactly once.
"""

import keras
import numpy as np
import tensorflow as tf

from semseg_suite.data import IGNORE_INDEX, valid_pixels

# float64 keeps integer counts exact up to 2**53 pixels; float32 would stop counting
# exactly at 2**24 (16.7 M pixels, less than 20 Cityscapes images).
_COUNT_DTYPE = tf.float64


def _labels_and_predictions(y_true, y_pred, num_classes):
    """Returns (labels, predicted ids) as int32 tensors of the same shape.

    `y_true` is (B, H, W) or (B, H, W, 1). `y_pred` is logits (one more axis than
    `y_true`, last axis = classes) or class ids (same rank as `y_true`).
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_true.shape.rank == 4 and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)
    if y_pred.shape.rank == y_true.shape.rank + 1:
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != num_classes:
            raise ValueError(
                f"y_pred looks like logits with {y_pred.shape[-1]} classes on the "
                f"last axis, but num_classes={num_classes}"
            )
        y_pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    elif y_pred.shape.rank != y_true.shape.rank:
        raise ValueError(
            "y_pred must be logits (rank of y_true + 1) or class ids (rank of "
            f"y_true); got y_true shape {y_true.shape}, y_pred shape {y_pred.shape}"
        )
    return tf.cast(y_true, tf.int32), tf.cast(y_pred, tf.int32)


def confusion_matrix(
    y_true, y_pred, num_classes, ignore_index=IGNORE_INDEX, sample_weight=None
):
    """Confusion matrix of one batch, rows = ground truth, columns = prediction.

    Args:
        y_true: int labels, (B, H, W) (or (B, H, W, 1)). Pixels equal to
            `ignore_index`, or with any value outside [0, num_classes), are not
            counted.
        y_pred: logits (B, H, W, C) (argmax is taken) or int class ids (B, H, W);
            told apart by rank. Class ids must lie in [0, num_classes).
        num_classes: C.
        ignore_index: void label.
        sample_weight: optional weights broadcastable to the labels, per pixel
            (B, H, W) or per image (B,); a weighted pixel adds its weight.

    Returns:
        A (C, C) float64 tensor of pixel counts. Ignored pixels are masked by a zero
        weight rather than removed, so shapes stay static (works under XLA and in
        replica functions). Sum it across replicas with `ReduceOp.SUM`.
    """
    labels, preds = _labels_and_predictions(y_true, y_pred, num_classes)
    valid = valid_pixels(labels, num_classes, ignore_index)
    weights = tf.cast(valid, _COUNT_DTYPE)
    if sample_weight is not None:
        sample_weight = tf.cast(sample_weight, _COUNT_DTYPE)
        for _ in range(labels.shape.rank - sample_weight.shape.rank):
            sample_weight = sample_weight[..., tf.newaxis]
        weights *= tf.broadcast_to(sample_weight, tf.shape(labels))
    # Ignored pixels get label 0 with weight 0: tf.math.confusion_matrix checks
    # that every label lies in [0, C).
    labels = tf.where(valid, labels, tf.zeros_like(labels))
    return tf.math.confusion_matrix(
        tf.reshape(labels, [-1]),
        tf.reshape(preds, [-1]),
        num_classes=num_classes,
        weights=tf.reshape(weights, [-1]),
        dtype=_COUNT_DTYPE,
    )


def _ratio(numerator, denominator):
    """numerator / denominator, with 0 where denominator is 0."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean_over(values, present):
    """Mean of `values` over `present` classes; NaN when no class is present."""
    return float(values[present].mean()) if present.any() else float("nan")


def scores_from_confusion(cm, class_names=None):
    """All segmentation scores from one (C, C) confusion matrix.

    Rows are ground truth, columns are predictions, so for class c:
    TP = cm[c, c], FN = row sum - TP, FP = column sum - TP, and

    - iou = TP / (TP + FP + FN)
    - precision = TP / (TP + FP)       (column sum: pixels predicted as c)
    - recall = TP / (TP + FN)          (row sum: ground-truth pixels of c)
    - f1 = 2 TP / (2 TP + FP + FN)     (harmonic mean of precision and recall)
    - support = row sum (ground-truth pixels of c)

    A class is present when it has ground-truth or predicted pixels (TP+FP+FN > 0).
    Absent classes are NaN in every per-class array and left out of every mean. For a
    present class a ratio with a zero denominator is 0 (e.g. precision of a class
    that is never predicted).

    Scalars: pixel_accuracy = sum(TP) / all pixels; mean_iou, mean_precision,
    mean_recall, mean_f1 = plain means over present classes; frequency_weighted_iou =
    sum over classes of (support / all pixels) * iou. Scalars are NaN when the matrix
    is empty.

    Args:
        cm: (C, C) array of counts (any numeric dtype).
        class_names: optional C names, returned under "class_names".

    Returns:
        dict of Python floats (scalars) and float64 arrays of shape (C,) (per class,
        plus "support").
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got {cm.shape}")
    num_classes = cm.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a {num_classes}-class matrix"
        )
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    total = cm.sum()
    present = (gt + pred) > 0

    nan = np.full(num_classes, np.nan)
    iou = np.where(present, _ratio(tp, gt + pred - tp), nan)
    precision = np.where(present, _ratio(tp, pred), nan)
    recall = np.where(present, _ratio(tp, gt), nan)
    f1 = np.where(present, _ratio(2.0 * tp, gt + pred), nan)

    if total > 0:
        pixel_accuracy = float(tp.sum() / total)
        frequency_weighted_iou = float(np.sum((gt / total)[gt > 0] * iou[gt > 0]))
    else:
        pixel_accuracy = frequency_weighted_iou = float("nan")

    scores = {
        "pixel_accuracy": pixel_accuracy,
        "mean_iou": _mean_over(iou, present),
        "mean_precision": _mean_over(precision, present),
        "mean_recall": _mean_over(recall, present),
        "mean_f1": _mean_over(f1, present),
        "frequency_weighted_iou": frequency_weighted_iou,
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": gt,
    }
    if class_names is not None:
        scores["class_names"] = list(class_names)
    return scores


@keras.saving.register_keras_serializable(package="semseg_suite")
class ConfusionMatrix(keras.metrics.Metric):
    """Streaming confusion matrix over a whole split; `result()` is the mean IoU.

    Holds one non-trainable (C, C) float64 variable `matrix` (rows = ground truth,
    columns = prediction). Mean IoU is taken over the classes present in the matrix
    (TP+FP+FN > 0), and is 0.0 while the matrix is empty.

    Args:
        num_classes: C.
        ignore_index: void label; labels outside [0, C) are ignored as well.
        name: metric name.
        **kwargs: passed to `keras.metrics.Metric` (e.g. `dtype` of `result()`).
    """

    def __init__(
        self, num_classes, ignore_index=IGNORE_INDEX, name="confusion_matrix", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float64",
            name="matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: y_true (B, H, W) ints, y_pred logits (B, H, W, C) or ids."""
        self.matrix.assign_add(
            confusion_matrix(
                y_true,
                y_pred,
                self.num_classes,
                ignore_index=self.ignore_index,
                sample_weight=sample_weight,
            )
        )

    def add_confusion(self, matrix):
        """Adds a precomputed (C, C) matrix, e.g. one summed across replicas.

        Outside `strategy.run` the metric variable of a distribution strategy is
        one partial matrix per replica (summed on read), which TensorFlow refuses to
        `assign_add` to; the whole matrix is then added to the first replica's part.
        """
        matrix = tf.cast(tf.convert_to_tensor(matrix), _COUNT_DTYPE)
        variable = self.matrix.value
        in_replica_fn = tf.distribute.has_strategy() and (
            not tf.distribute.in_cross_replica_context()
        )
        if isinstance(variable, tf.distribute.DistributedValues) and not in_replica_fn:
            strategy = variable.distribute_strategy
            strategy.experimental_local_results(variable)[0].assign_add(matrix)
        else:
            self.matrix.assign_add(matrix)

    def result(self):
        cm = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(cm)
        union = tf.reduce_sum(cm, axis=0) + tf.reduce_sum(cm, axis=1) - tp
        present = union > 0
        iou = tf.math.divide_no_nan(tp, union)
        num_present = tf.reduce_sum(tf.cast(present, _COUNT_DTYPE))
        mean_iou = tf.math.divide_no_nan(tf.reduce_sum(iou), num_present)
        return tf.cast(mean_iou, self.dtype)

    def scores(self, class_names=None):
        """`scores_from_confusion` of the current matrix (eager only)."""
        return scores_from_confusion(
            np.asarray(tf.convert_to_tensor(self.matrix)), class_names=class_names
        )

    def reset_state(self):
        self.matrix.assign(tf.zeros(self.matrix.shape, _COUNT_DTYPE))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_index=self.ignore_index)
        return config
