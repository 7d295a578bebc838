"""Losses against a NumPy log-softmax reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite.losses import LOSSES, get_loss, masked_loss_sum, sparse_crossentropy

NUM_CLASSES = 4


def numpy_pixel_losses(y_true, logits):
    """-log softmax(logits)[label] per pixel, in float64; void pixels get 0."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = (y_true >= 0) & (y_true < logits.shape[-1])
    safe = np.where(valid, y_true, 0)
    picked = np.take_along_axis(log_softmax, safe[..., None], axis=-1)[..., 0]
    return np.where(valid, -picked, 0.0), valid


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, NUM_CLASSES, size=(2, 7, 9)).astype(np.int32)
    y_true[rng.random(y_true.shape) < 0.3] = 255
    y_true[1, 0, :3] = [4, 9, 254]  # outside [0, C): void as well
    logits = rng.normal(scale=3.0, size=(2, 7, 9, NUM_CLASSES)).astype(np.float32)
    return y_true, logits


def test_mean_over_valid_pixels_matches_numpy(batch):
    y_true, logits = batch
    per_pixel, valid = numpy_pixel_losses(y_true, logits)
    assert 0 < valid.sum() < valid.size
    expected = per_pixel.sum() / valid.sum()
    # the mean over all pixels would be a different number
    assert abs(per_pixel.mean() - expected) > 0.1
    loss = sparse_crossentropy()(y_true, logits)
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ignored_pixels_contribute_nothing(batch):
    y_true, logits = batch
    loss_fn = get_loss("ce")
    changed = logits.copy()
    void = (y_true == 255) | (y_true >= NUM_CLASSES)
    changed[void] = np.random.default_rng(1).normal(
        scale=50.0, size=changed[void].shape
    )
    assert float(loss_fn(y_true, changed)) == pytest.approx(
        float(loss_fn(y_true, logits)), rel=1e-6
    )

    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = loss_fn(y_true, logits_var)
    grad = tape.gradient(loss, logits_var).numpy()
    assert np.all(grad[void] == 0.0)
    assert np.abs(grad[~void]).sum() > 0


def test_all_pixels_ignored_gives_zero():
    logits = np.random.default_rng(2).normal(size=(1, 3, 3, NUM_CLASSES))
    loss = get_loss("ce")(np.full((1, 3, 3), 255), logits.astype(np.float32))
    assert float(loss) == 0.0


def test_masked_loss_sum_matches_mean(batch):
    y_true, logits = batch
    per_pixel, valid = numpy_pixel_losses(y_true, logits)
    loss_sum, count = masked_loss_sum(get_loss("ce", reduction=None), y_true, logits)
    assert loss_sum.dtype == tf.float32 and count.dtype == tf.float32
    assert float(count) == valid.sum()
    assert float(loss_sum) == pytest.approx(per_pixel.sum(), rel=1e-5)
    mean = float(sparse_crossentropy()(y_true, logits))
    assert float(loss_sum) / float(count) == pytest.approx(mean, rel=1e-5)

    # (B, H, W, 1) labels and a tf.function give the same numbers
    traced = tf.function(masked_loss_sum, autograph=False)
    loss_sum_4d, count_4d = traced(
        get_loss("ce", reduction=None), tf.constant(y_true[..., None]),
        tf.constant(logits),
    )
    assert float(count_4d) == valid.sum()
    assert float(loss_sum_4d) == pytest.approx(float(loss_sum), rel=1e-6)


def test_reduction_none_gives_per_pixel_losses(batch):
    y_true, logits = batch
    per_pixel, _ = numpy_pixel_losses(y_true, logits)
    losses = get_loss("ce", reduction=None)(y_true, logits)
    assert losses.shape == y_true.shape
    np.testing.assert_allclose(losses.numpy(), per_pixel, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_logits_give_float32_loss(batch, dtype):
    y_true, logits = batch
    loss_fn = get_loss("ce")
    low = loss_fn(y_true, tf.cast(logits, dtype))
    assert low.dtype == tf.float32
    assert float(low) == pytest.approx(float(loss_fn(y_true, logits)), rel=2e-2)
    loss_sum, count = masked_loss_sum(
        get_loss("ce", reduction=None), y_true, tf.cast(logits, dtype)
    )
    assert loss_sum.dtype == tf.float32
    assert float(loss_sum / count) == pytest.approx(float(low), rel=1e-5)


def test_other_ignore_index():
    y_true = np.array([[[0, 1, 2]]])
    logits = np.zeros((1, 1, 3, 3), np.float32)
    logits[0, 0, 0] = [5.0, 0.0, 0.0]  # pixel 0: confident and right
    # with class 2 void, only pixels 0 and 1 count
    per_pixel, _ = numpy_pixel_losses(y_true[..., :2], logits[:, :, :2])
    loss = get_loss("ce", ignore_index=2)(y_true, logits)
    assert float(loss) == pytest.approx(per_pixel.mean(), rel=1e-5)


def test_registry_and_serialization():
    assert "ce" in LOSSES
    with pytest.raises(ValueError, match="known losses: ce"):
        get_loss("lovasz_hinge")
    loss_fn = get_loss("ce", ignore_index=7)
    restored = keras.losses.deserialize(keras.losses.serialize(loss_fn))
    assert type(restored) is type(loss_fn)
    assert restored.get_config() == loss_fn.get_config()
    assert restored.ignore_index == 7
