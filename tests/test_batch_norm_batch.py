"""Batch norm on a 1x1 map: why a batch of one image per replica is refused, and
that the refusal comes from the model graph, before training starts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite import training
from test_training import load_script

train_script = load_script("train")


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def test_batch_norm_on_one_value_per_channel_outputs_beta():
    """The reason: in training, BN on a (1, 1, 1, C) input normalises one value per
    channel, whose batch mean is itself and variance 0, so the output is beta
    whatever the input, and no gradient reaches the input."""
    rng = np.random.default_rng(0)
    layer = keras.layers.BatchNormalization(epsilon=1e-5)
    layer.build((1, 1, 1, 16))
    layer.gamma.assign(rng.uniform(0.5, 2.0, 16).astype("float32"))
    layer.beta.assign(rng.normal(size=16).astype("float32"))
    beta = np.asarray(layer.beta)
    for scale in (1.0, 0.01):
        x = tf.Variable(scale * rng.normal(size=(1, 1, 1, 16)).astype("float32"))
        mean, variance = keras.ops.moments(x, axes=(0, 1, 2))
        np.testing.assert_array_equal(np.asarray(mean), np.asarray(x)[0, 0, 0])
        np.testing.assert_array_equal(np.asarray(variance), 0.0)
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * rng.normal(size=(1, 1, 1, 16)).astype("float32"))
        # beta exactly, but for TensorFlow's rounding of x * g / sqrt(eps) - mean * g / sqrt(eps).
        np.testing.assert_allclose(np.asarray(y)[0, 0, 0], beta, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(tape.gradient(loss, x)), 0.0)
    # Two images: the values are normalised against each other, no longer constant.
    y = np.asarray(layer(rng.normal(size=(2, 1, 1, 16)).astype("float32"), training=True))
    assert np.abs(y - beta).min() > 0.4


def _probe_model():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="spatial_bn")(x)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    pooled = keras.layers.BatchNormalization(name="pooled_bn")(pooled)
    flat = keras.layers.BatchNormalization(name="flat_bn")(keras.layers.GlobalAveragePooling2D()(x))
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    frozen.trainable = False  # moving statistics in training too
    frozen_out = frozen(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
    outputs = x + pooled + frozen_out + keras.layers.Reshape((1, 1, 4))(flat)
    return keras.Model(inputs, outputs, name="probe")


def test_single_value_batch_norms_come_from_static_shapes():
    assert training.single_value_batch_norms(_probe_model()) == ["pooled_bn", "flat_bn"]


@pytest.mark.parametrize(
    "batch_size,replicas,sync_bn,refused",
    [(1, 1, False, True), (2, 1, False, False), (2, 2, False, True), (3, 2, False, True),
     (4, 2, False, False), (2, 2, True, False)],
)
def test_the_batch_that_counts_is_per_replica_unless_bn_is_synchronised(batch_size, replicas, sync_bn, refused):
    model = _probe_model()
    if not refused:
        training.check_batch_norm_batch(model, batch_size, replicas, sync_bn=sync_bn)
        return
    with pytest.raises(training.BatchSizeError) as error:
        training.check_batch_norm_batch(model, batch_size, replicas, sync_bn=sync_bn)
    message = str(error.value)
    assert "\n" not in message and "probe" in message and "pooled_bn, flat_bn" in message
    assert f"--batch-size {2 * replicas} or more" in message and "--accum-steps does not help" in message
    assert ("--sync-bn" in message) == (replicas > 1)


def _argv(dataset, out_dir, model, batch_size, *extra):
    return [
        "--model", model, "--dataset", str(dataset), "--batch-size", str(batch_size), "--crop-height", "64",
        "--crop-width", "64", "--num-epochs", "1", "--checkpoint-dir", str(out_dir), "--optimizer", "adam",
        "--learning-rate", "1e-3", *extra,
    ]


def test_a_model_with_bn_on_a_1x1_map_refuses_batch_1_before_training(tiny_dataset, tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = _argv(tiny_dataset, out_dir, "DeepLabV3_plus", 1, "--frontend", "MobileNetV2",
                 "--frontend-weights", "none", "--accum-steps", "2")
    assert train_script.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: --batch-size 1 is 1 image per replica"), lines
    assert "DeepLabV3_plus_MobileNetV2" in lines[-1] and "aspp_image_pool_bn" in lines[-1]
    assert not out_dir.exists()  # refused before anything was written


class _Started(Exception):
    pass


def test_a_model_with_bn_on_a_1x1_map_accepts_batch_2(tiny_dataset, tmp_path, monkeypatch):
    # Stop where training would start: the check is passed by then.
    def trainer(model, *args, **kwargs):
        raise _Started(model.name)

    monkeypatch.setattr(training, "Trainer", trainer)
    config = train_script.config_from_args(train_script.parse_args(_argv(
        tiny_dataset, tmp_path / "run", "DeepLabV3_plus", 2, "--frontend", "MobileNetV2", "--frontend-weights", "none",
    )))
    with pytest.raises(_Started, match="DeepLabV3_plus_MobileNetV2"):
        training.train(config)


def test_a_model_without_such_bn_trains_at_batch_1(tiny_dataset, tmp_path):
    out_dir = tmp_path / "run"
    assert train_script.main(_argv(tiny_dataset, out_dir, "ENet", 1)) == 0
    assert (out_dir / "best.keras").is_file()
