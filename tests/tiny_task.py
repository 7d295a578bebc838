"""The tiny task a model must really learn: one textured square on a noisy background."""

import keras
import numpy as np
import tensorflow as tf

from semseg_suite import data, metrics, optim, training

# What "learned" means on squares. Squares cover about 11% of the valid pixels, so
# predicting background everywhere already scores pixel accuracy 0.891 (mIoU 0.446)
# on fit_squares' validation images: accuracy alone barely separates a model that
# found the squares from one that did not; mIoU > 0.8 needs a square IoU above 0.6.
MIN_PIXEL_ACCURACY = 0.95
MIN_MEAN_IOU = 0.8


def squares(rng, count, size=64):
    """Images of one bright textured square on a noisy dark background."""
    images = rng.normal(0.3, 0.15, (count, size, size, 3)).astype("float32")
    labels = np.zeros((count, size, size), "int32")
    for image, label in zip(images, labels):
        side = rng.integers(14, 30)
        y, x = rng.integers(0, size - side, 2)
        image[y : y + side, x : x + side] += 0.8
        label[y : y + side, x : x + side] = 1
        label[y, x : x + side] = data.IGNORE_INDEX  # void rows must not matter
    return images, labels


def fit_squares(model, *, steps=150, learning_rate=2e-3, batch_size=8, size=64, seed=0, loss_weights=None):
    """Trains ``model`` (2 classes) on squares with the suite's loop; returns val scores.

    Uses ``training.Trainer`` with Adam and poly decay on the default strategy, then
    evaluates on 16 new images. ``loss_weights``: for a model with auxiliary heads
    (``semseg_suite.models.loss_weights``).
    """
    rng = np.random.default_rng(seed)
    model.compile(optimizer=keras.optimizers.Adam(optim.make_schedule("poly", learning_rate, steps)))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), num_classes=2, loss_weights=loss_weights)
    images, labels = squares(rng, 256, size)
    train_set = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(256, seed=seed).repeat().batch(batch_size)
    trainer.train_epoch(train_set.take(steps), steps)
    val_images, val_labels = squares(rng, 16, size)
    _, confusion = trainer.evaluate(tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(4))
    assert confusion.sum() == np.sum(val_labels != data.IGNORE_INDEX)
    return metrics.scores_from_confusion(confusion)


def assert_learned(scores):
    """Fails unless ``scores`` (``fit_squares``'s) show the squares were learned."""
    assert scores["pixel_accuracy"] > MIN_PIXEL_ACCURACY, scores
    assert scores["mean_iou"] > MIN_MEAN_IOU, scores
