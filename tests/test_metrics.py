"""Metrics against NumPy references and numbers worked out by hand."""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    confusion_matrix,
    scores_from_confusion,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def numpy_confusion(y_true, y_pred, num_classes, ignore_index=IGNORE_INDEX):
    """Reference: count (gt, pred) pairs of valid pixels with np.add.at."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    keep = (y_true >= 0) & (y_true < num_classes) & (y_true != ignore_index)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true[keep], y_pred[keep]), 1)
    return cm


# Hand example: 4 classes (class 3 never appears), 10 valid pixels, one void pixel
# (255) and one out-of-range label (9), both predicted as classes they must not count
# for (3 and 0).
HAND_TRUE = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 255, 9]])
HAND_PRED = np.array([[0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 3, 0]])
# rows = ground truth, cols = prediction
HAND_CM = np.array(
    [
        [3, 2, 0, 0],  # class 0: 5 gt pixels, 3 right, 2 called class 1
        [1, 2, 0, 0],  # class 1: 3 gt pixels, 2 right, 1 called class 0
        [0, 0, 2, 0],  # class 2: 2 gt pixels, both right
        [0, 0, 0, 0],  # class 3: absent
    ]
)


def test_confusion_matrix_hand_example():
    cm = confusion_matrix(HAND_TRUE, HAND_PRED, num_classes=4)
    assert cm.dtype == tf.float64
    np.testing.assert_array_equal(cm.numpy(), HAND_CM)


def test_scores_hand_example():
    scores = scores_from_confusion(HAND_CM, class_names=["a", "b", "c", "d"])
    # class 0: TP 3, FP 1 (pixel of class 1 called 0), FN 2
    # class 1: TP 2, FP 2, FN 1
    # class 2: TP 2, FP 0, FN 0
    nan = np.nan
    np.testing.assert_allclose(scores["iou"], [3 / 6, 2 / 5, 1.0, nan])
    np.testing.assert_allclose(scores["precision"], [3 / 4, 2 / 4, 1.0, nan])
    np.testing.assert_allclose(scores["recall"], [3 / 5, 2 / 3, 1.0, nan])
    np.testing.assert_allclose(scores["f1"], [6 / 9, 4 / 7, 1.0, nan])
    np.testing.assert_array_equal(scores["support"], [5, 3, 2, 0])
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)
    assert scores["mean_iou"] == pytest.approx((0.5 + 0.4 + 1.0) / 3)
    assert scores["mean_precision"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert scores["mean_recall"] == pytest.approx((0.6 + 2 / 3 + 1.0) / 3)
    assert scores["mean_f1"] == pytest.approx((6 / 9 + 4 / 7 + 1.0) / 3)
    assert scores["frequency_weighted_iou"] == pytest.approx(
        0.5 * 0.5 + 0.3 * 0.4 + 0.2 * 1.0
    )
    assert scores["class_names"] == ["a", "b", "c", "d"]


def test_metric_hand_example_matches_scores():
    metric = ConfusionMatrix(num_classes=4)
    metric.update_state(HAND_TRUE, HAND_PRED)
    np.testing.assert_array_equal(metric.matrix.numpy(), HAND_CM)
    assert float(metric.result()) == pytest.approx((0.5 + 0.4 + 1.0) / 3, rel=1e-6)
    assert metric.scores()["mean_iou"] == pytest.approx((0.5 + 0.4 + 1.0) / 3)


def test_precision_and_recall_not_swapped():
    # Class 0 is predicted everywhere: it finds all of its pixels (recall 1) but
    # only a quarter of its predictions are right (precision 0.25).
    y_true = np.array([[0, 1, 1, 1]])
    y_pred = np.array([[0, 0, 0, 0]])
    scores = scores_from_confusion(confusion_matrix(y_true, y_pred, 2).numpy())
    assert scores["precision"][0] == pytest.approx(0.25)
    assert scores["recall"][0] == pytest.approx(1.0)
    # class 1 is never predicted: recall 0, and precision 0 (not NaN: it is present)
    assert scores["precision"][1] == 0.0
    assert scores["recall"][1] == 0.0
    assert scores["mean_precision"] == pytest.approx(0.125)
    assert scores["mean_recall"] == pytest.approx(0.5)


def test_random_against_numpy_with_ignored_pixels():
    rng = np.random.default_rng(0)
    num_classes = 5
    y_true = rng.integers(0, num_classes, size=(3, 17, 23))
    y_true[rng.random(y_true.shape) < 0.2] = IGNORE_INDEX
    y_true[0, 0, :4] = [-1, 5, 7, 254]  # outside [0, C): ignored too
    y_pred = rng.integers(0, num_classes, size=y_true.shape)
    expected = numpy_confusion(y_true, y_pred, num_classes)
    assert expected.sum() < y_true.size  # some pixels really were ignored

    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, num_classes).numpy(), expected
    )
    metric = ConfusionMatrix(num_classes)
    metric.update_state(y_true, y_pred)
    np.testing.assert_array_equal(metric.matrix.numpy(), expected)

    tp = np.diag(expected).astype(float)
    union = expected.sum(0) + expected.sum(1) - tp
    assert float(metric.result()) == pytest.approx(np.mean(tp / union), rel=1e-6)


def test_logits_and_ids_give_the_same_matrix():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, size=(2, 9, 11))
    logits = rng.normal(size=(2, 9, 11, 4)).astype(np.float32)
    ids = logits.argmax(-1)
    from_logits = confusion_matrix(y_true, logits, 4).numpy()
    np.testing.assert_array_equal(from_logits, confusion_matrix(y_true, ids, 4).numpy())
    np.testing.assert_array_equal(from_logits, numpy_confusion(y_true, ids, 4))
    # bfloat16 logits, (B, H, W, 1) labels
    bf16 = tf.cast(logits, tf.bfloat16)
    expected = numpy_confusion(y_true, tf.argmax(bf16, -1).numpy(), 4)
    np.testing.assert_array_equal(
        confusion_matrix(y_true[..., None], bf16, 4).numpy(), expected
    )


def test_logits_with_wrong_class_count_raise():
    with pytest.raises(ValueError, match="num_classes=3"):
        confusion_matrix(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)), 3)


def test_streaming_equals_one_batch_not_per_image_mean():
    # Image A: 100 pixels of class 0, all right (its own mIoU: 1).
    # Image B: 4 pixels of class 1, all called class 0 (its own mIoU: 0).
    true_a, pred_a = np.zeros((1, 10, 10)), np.zeros((1, 10, 10))
    true_b, pred_b = np.ones((1, 2, 2)), np.zeros((1, 2, 2))
    streaming = ConfusionMatrix(2)
    streaming.update_state(true_a, pred_a)
    streaming.update_state(true_b, pred_b)

    one_batch = ConfusionMatrix(2)  # same pixels as a single flat "image"
    one_batch.update_state(
        np.concatenate([true_a.ravel(), true_b.ravel()])[None],
        np.concatenate([pred_a.ravel(), pred_b.ravel()])[None],
    )
    np.testing.assert_array_equal(streaming.matrix.numpy(), one_batch.matrix.numpy())
    # class 0: IoU 100 / 104; class 1: IoU 0
    assert float(streaming.result()) == pytest.approx((100 / 104 + 0) / 2, rel=1e-6)

    per_image = []
    for y_true, y_pred in ((true_a, pred_a), (true_b, pred_b)):
        metric = ConfusionMatrix(2)
        metric.update_state(y_true, y_pred)
        per_image.append(float(metric.result()))
    assert per_image == [1.0, 0.0]
    assert np.mean(per_image) == 0.5
    assert abs(float(streaming.result()) - 0.5) > 0.01


def test_update_state_in_tf_function_and_sample_weight():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, size=(2, 6, 6)).astype(np.int32)
    y_pred = rng.integers(0, 3, size=(2, 6, 6)).astype(np.int32)
    metric = ConfusionMatrix(3)

    @tf.function
    def update(a, b, w):
        metric.update_state(a, b, sample_weight=w)

    # per-image weights: image 0 counts twice, image 1 not at all
    update(y_true, y_pred, tf.constant([2.0, 0.0]))
    update(y_true, y_pred, tf.constant([1.0, 1.0]))
    expected = 3 * numpy_confusion(y_true[:1], y_pred[:1], 3) + numpy_confusion(
        y_true[1:], y_pred[1:], 3
    )
    np.testing.assert_array_equal(metric.matrix.numpy(), expected)


def test_add_confusion_and_reset_state():
    metric = ConfusionMatrix(4)
    metric.update_state(HAND_TRUE, HAND_PRED)
    metric.add_confusion(HAND_CM)
    np.testing.assert_array_equal(metric.matrix.numpy(), 2 * HAND_CM)
    metric.add_confusion(tf.constant(np.eye(4), tf.float32))
    np.testing.assert_array_equal(metric.matrix.numpy(), 2 * HAND_CM + np.eye(4))

    metric.reset_state()
    np.testing.assert_array_equal(metric.matrix.numpy(), np.zeros((4, 4)))
    assert float(metric.result()) == 0.0  # empty matrix: 0, not NaN
    assert np.isnan(metric.scores()["mean_iou"])


def test_counts_stay_exact_beyond_float32():
    metric = ConfusionMatrix(2)
    big = np.array([[2.0**24, 0.0], [0.0, 0.0]])
    metric.add_confusion(big)
    metric.update_state(np.zeros((1, 1)), np.zeros((1, 1)))  # one more pixel
    assert metric.matrix.numpy()[0, 0] == 2**24 + 1
    assert metric.matrix.dtype == "float64"


def test_get_config_round_trip():
    metric = ConfusionMatrix(6, ignore_index=0, name="val_cm")
    metric.update_state(np.ones((1, 2, 2)), np.ones((1, 2, 2)))
    config = metric.get_config()
    assert config["num_classes"] == 6 and config["ignore_index"] == 0
    clone = ConfusionMatrix.from_config(config)
    assert (clone.num_classes, clone.ignore_index, clone.name) == (6, 0, "val_cm")
    np.testing.assert_array_equal(clone.matrix.numpy(), np.zeros((6, 6)))

    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert isinstance(restored, ConfusionMatrix)
    assert restored.get_config() == config
    # label 0 is void now: only the class-1 pixels count
    restored.update_state(np.array([[0, 1]]), np.array([[2, 1]]))
    assert restored.matrix.numpy().sum() == 1


def test_scores_validate_input():
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class names"):
        scores_from_confusion(np.eye(2), class_names=["only one"])
    empty = scores_from_confusion(np.zeros((3, 3)))
    assert np.isnan(empty["pixel_accuracy"]) and np.isnan(empty["mean_iou"])


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 6
    )
    from semseg_suite.metrics import ConfusionMatrix, confusion_matrix

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(6)])
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, (6, 5, 7)).astype(np.int32)
    y_true[0, 0, :] = 255
    y_pred = rng.integers(0, 4, (6, 5, 7)).astype(np.int32)
    expected = confusion_matrix(y_true, y_pred, 4).numpy()
    dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred)).batch(6)
    with strategy.scope():
        reduced, per_replica = ConfusionMatrix(4), ConfusionMatrix(4)

    @tf.function
    def step(batch):
        def replica_fn(labels, preds):
            per_replica.update_state(labels, preds)
            return confusion_matrix(labels, preds, 4)

        matrices = strategy.run(replica_fn, args=batch)
        matrix = strategy.reduce(tf.distribute.ReduceOp.SUM, matrices, axis=None)
        reduced.add_confusion(matrix)  # inside tf.function, cross-replica
        return matrix

    for batch in strategy.experimental_distribute_dataset(dataset):
        matrix = step(batch)
    reduced.add_confusion(matrix)  # eager, outside strategy.scope()
    assert np.array_equal(matrix.numpy(), expected), "reduced batch matrix"
    assert np.array_equal(per_replica.matrix.numpy(), expected), "replica updates"
    assert np.array_equal(reduced.matrix.numpy(), 2 * expected), "add_confusion"
    with strategy.scope():
        reduced.reset_state()
    assert reduced.matrix.numpy().sum() == 0, "reset"
    # Large counts stay exact (splitting a sum over 6 replicas would round them).
    big = np.arange(1, 17, dtype=np.float64).reshape(4, 4) * 997 * 10**6 + 12345
    reduced.add_confusion(big)
    assert np.array_equal(reduced.matrix.numpy(), big), "exact large counts"
    print("DISTRIBUTED_OK")
    """
)


def test_under_mirrored_strategy_with_six_replicas():
    # Needs its own process: logical devices must be set before TF starts.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "DISTRIBUTED_OK" in result.stdout, result.stderr[-3000:]
