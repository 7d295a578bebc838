"""The suite's fused ``BatchNormalization`` against ``keras.layers.BatchNormalization``.

Both layers get identical weights and inputs. float32 results agree to float32
rounding (rtol 1e-5, the op and Keras sum in different orders). Under
``mixed_bfloat16`` outputs and input gradients are bfloat16, whose 8-bit
significand resolves 2**-8 relative: they agree to 2**-7 of the largest
magnitude (one bfloat16 step, either side's rounding); the moving statistics are
float32 on both sides, computed from the same bfloat16 values, and keep rtol 1e-5.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite.layers import BatchNormalization as FusedBatchNormalization

pytestmark = pytest.mark.kernels  # FusedBatchNormV3 is oneDNN's kernel or Eigen's: both are checked

SHAPE = (2, 3, 4, 5)  # n = 24 values per channel: the Bessel factor 24/23 is 4 %
POLICIES = ("float32", "mixed_bfloat16")
BF16_STEP = 2.0**-7


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def assert_close(actual, expected, policy, *, statistics=False):
    actual, expected = np.asarray(actual, "float32"), np.asarray(expected, "float32")
    if policy == "float32" or statistics:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    else:
        tolerance = BF16_STEP * max(float(np.max(np.abs(expected))), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance)


def twin_layers(policy, shape=SHAPE, **kwargs):
    """A fused and a Keras batch norm built for ``shape``, with the same random
    (not initial) weights, so that gamma, beta and the moving statistics all count."""
    rng = np.random.default_rng(1)
    kwargs = {"momentum": 0.9, "epsilon": 1e-5, "dtype": policy, **kwargs}
    fused, plain = FusedBatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    channels = shape[kwargs.get("axis", -1)]
    weights = [
        rng.uniform(0.5, 2.0, channels),
        rng.normal(size=channels),
        rng.normal(size=channels),
        rng.uniform(0.5, 2.0, channels),
    ]
    for layer in (fused, plain):
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
    return fused, plain


def batches(count, shape=SHAPE):
    """Different batches of mean 1 and standard deviation 3, so no statistic is trivial."""
    rng = np.random.default_rng(2)
    return [tf.constant(rng.normal(1.0, 3.0, shape).astype("float32")) for _ in range(count)]


def op_types(layer, shape, training):
    function = tf.function(lambda x: layer(x, training=training))
    graph = function.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("policy", POLICIES)
def test_training_outputs_and_gradients_equal_keras(policy):
    fused, plain = twin_layers(policy)
    (x,) = batches(1)
    cotangent = tf.constant(np.random.default_rng(3).normal(size=SHAPE).astype("float32"))
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * cotangent)  # a sum alone has zero input gradient
        results.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    (y, dx, dgamma, dbeta), (y_ref, dx_ref, dgamma_ref, dbeta_ref) = results
    assert y.dtype == y_ref.dtype == keras.DTypePolicy(policy).compute_dtype
    assert float(np.std(np.asarray(dx_ref, "float32"))) > 0.1
    for actual, expected in [(y, y_ref), (dx, dx_ref), (dgamma, dgamma_ref), (dbeta, dbeta_ref)]:
        assert_close(actual, expected, policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_moving_statistics_and_inference_after_five_steps_equal_keras(policy):
    """The op returns the unbiased batch variance; Keras updates with the biased
    one. Uncorrected, each step would add 24/23 of Keras' share to the moving
    variance, far outside the tolerance."""
    fused, plain = twin_layers(policy)
    for x in batches(5):
        fused(x, training=True)
        plain(x, training=True)
    initial = twin_layers(policy)[1]
    assert not np.allclose(np.asarray(plain.moving_variance), np.asarray(initial.moving_variance), rtol=1e-2)
    assert_close(fused.moving_mean, plain.moving_mean, policy, statistics=True)
    assert_close(fused.moving_variance, plain.moving_variance, policy, statistics=True)
    (x,) = batches(1)
    assert_close(fused(x, training=False), plain(x, training=False), policy)


def test_training_runs_the_fused_op_and_inference_the_keras_one():
    fused, _ = twin_layers("float32")
    assert "FusedBatchNormV3" in op_types(fused, SHAPE, training=True)
    assert "FusedBatchNormV3" not in op_types(fused, SHAPE, training=False)


@pytest.mark.parametrize(
    "shape,kwargs",
    [((6, 5), {}), ((2, 5, 3, 4), {"axis": 1}), (SHAPE, {"synchronized": True})],
    ids=["rank2", "axis1", "synchronized"],
)
def test_what_the_op_cannot_express_defers_to_keras(shape, kwargs):
    fused, plain = twin_layers("float32", shape, **kwargs)
    assert "FusedBatchNormV3" not in op_types(fused, shape, training=True)
    for x in batches(3, shape):
        np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x, training=True)),
                                   rtol=1e-5, atol=1e-5)
    for actual, expected in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_config_is_keras_batch_norms():
    kwargs = {"momentum": 0.9, "epsilon": 1e-5, "center": False, "name": "bn"}
    assert FusedBatchNormalization(**kwargs).get_config() == keras.layers.BatchNormalization(**kwargs).get_config()


def small_model(norm):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = norm(momentum=0.9, epsilon=1e-5, name="bn")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="relu")(x))


def trained(model):
    """``model`` after one training step on random data, so no weight is at its
    initial value."""
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(4)
    model.fit(rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 8, 8, 4)), epochs=1, verbose=0)
    return model


def test_keras_file_round_trip_keeps_the_fused_class(tmp_path):
    model = trained(small_model(FusedBatchNormalization))
    path = tmp_path / "fused.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    assert type(reloaded.get_layer("bn")) is FusedBatchNormalization
    assert keras.saving.get_registered_name(FusedBatchNormalization) == "semseg_suite>BatchNormalization"
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    for training in (False, True):
        np.testing.assert_allclose(np.asarray(reloaded(x, training=training)), np.asarray(model(x, training=training)),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_files_saved_with_keras_batch_norm_load_into_the_fused_one(tmp_path, suffix):
    """``.keras`` and ``.weights.h5`` key weights by class name: a subclass named
    otherwise than ``BatchNormalization`` fails here."""
    plain = trained(small_model(keras.layers.BatchNormalization))
    path = tmp_path / f"plain{suffix}"
    if suffix == ".weights.h5":
        plain.save_weights(path)
    else:
        plain.save(path)
    fused = small_model(FusedBatchNormalization)
    fused.load_weights(path)
    assert [w.path for w in fused.weights] == [w.path for w in plain.weights]
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype("float32")
    for training in (False, True):
        np.testing.assert_allclose(np.asarray(fused(x, training=training)), np.asarray(plain(x, training=training)),
                                   rtol=1e-5, atol=1e-5)
