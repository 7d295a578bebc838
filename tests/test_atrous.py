"""AtrousConv2D: the fast dilated convolution is Keras's Conv2D, value for value.

``semseg_suite.layers.AtrousConv2D`` replaces ``keras.layers.Conv2D`` wherever the
suite dilates a dense convolution. These tests hold it to being a drop-in
replacement: the same outputs (float32 and bfloat16, rates 1 to 36, odd and even
sizes), the same config and weight layout (a ``Conv2D``'s weights load into it),
a ``.keras`` round trip, and a gradient that needs no dilated backprop kernel where
TensorFlow lacks one (CPUs without oneDNN; tests/test_onednn.py runs both CPU paths
in subprocesses). Its speed is measured by ``benchmarks/atrous.py``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import semseg_suite
from semseg_suite import layers
from semseg_suite.layers import AtrousConv2D

# .ci/run repeats these with oneDNN off, where the portable gradient is taken.
pytestmark = pytest.mark.kernels

# One odd and one even map, both smaller than the largest rate, so that rates
# past the map's size (only the centre tap sees data) are covered too.
SIZES = [(23, 19), (16, 30)]
RATES = range(1, 37)


def plain_dilated_convs(model: keras.Model) -> list[str]:
    """Names of the plain ``keras.layers.Conv2D`` layers of ``model`` that dilate.

    Those run through Keras's slow space-to-batch path; every dilated dense
    convolution of the suite must be an ``AtrousConv2D`` instead. Walks nested
    models and layers (``_flatten_layers``) so that a convolution hidden inside
    a custom block is found too.
    """
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) is keras.layers.Conv2D and max(layer.dilation_rate) > 1
    ]


def conv_pair(config: dict, input_shape, rng):
    """A built ``Conv2D`` from ``config`` with random weights, and an
    ``AtrousConv2D`` made from its config holding the same weights."""
    reference = keras.layers.Conv2D.from_config(config)
    reference.build(input_shape)
    reference.set_weights([rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()])
    fast = AtrousConv2D.from_config(reference.get_config())
    fast.build(input_shape)
    fast.set_weights(reference.get_weights())
    return reference, fast


def conv_config(rate, **overrides) -> dict:
    config = dict(filters=3, kernel_size=3, padding="same", dilation_rate=rate, name="conv")
    return keras.layers.Conv2D(**{**config, **overrides}).get_config()


@pytest.mark.parametrize("size", SIZES, ids=["odd", "even"])
def test_equals_keras_conv_at_every_rate_in_float32(size):
    rng = np.random.default_rng(size[0])
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    errors = {}
    for rate in RATES:
        reference, fast = conv_pair(conv_config(rate), x.shape, rng)
        errors[rate] = float(np.abs(np.asarray(fast(x)) - np.asarray(reference(x))).max())
    assert max(errors.values()) < 1e-4, {r: e for r, e in errors.items() if e >= 1e-4}


@pytest.mark.parametrize(
    "overrides",
    [
        dict(padding="valid"),
        dict(dilation_rate=(2, 5), kernel_size=(3, 5)),
        dict(use_bias=False, activation="relu"),
        dict(dilation_rate=1, strides=2),  # the parent's op, stride 2
    ],
    ids=["valid", "anisotropic", "no-bias-relu", "strided"],
)
def test_equals_keras_conv_with_other_settings(overrides):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 21, 26, 5)).astype("float32")
    reference, fast = conv_pair(conv_config(3, **overrides), x.shape, rng)
    expected = np.asarray(reference(x))
    assert fast(x).shape == expected.shape
    np.testing.assert_allclose(np.asarray(fast(x)), expected, atol=1e-4)


def test_runs_the_native_dilated_kernel():
    """What makes it fast: one dilated convolution op, where Keras's ``Conv2D``
    wraps a dense one in space-to-batch and batch-to-space."""
    spec = tf.TensorSpec((1, 32, 32, 8), tf.float32)
    for cls, wrapped in ((AtrousConv2D, False), (keras.layers.Conv2D, True)):
        layer = cls(4, 3, padding="same", dilation_rate=6)
        layer.build(spec.shape)
        graph = tf.function(layer).get_concrete_function(spec).graph
        op_types = {op.type for op in graph.get_operations()}
        assert ("SpaceToBatchND" in op_types) is wrapped, (cls.__name__, sorted(op_types))


def round_to_bfloat16(array) -> np.ndarray:
    return np.asarray(tf.cast(tf.cast(array, tf.bfloat16), tf.float32))


@pytest.mark.parametrize("size", SIZES, ids=["odd", "even"])
def test_equals_keras_conv_in_bfloat16(size):
    """Under ``mixed_bfloat16`` the only error left is rounding the output.

    Inputs and weights are rounded to bfloat16 first and the reference is the
    float32 ``Conv2D`` of those rounded values, so input quantisation (which would
    need a tolerance loose enough to hide a wrong tap) is not part of the
    comparison. What remains is one rounding of each output to bfloat16 (unit
    roundoff 2**-8, relative; no bias, whose addition would round a second time)
    and float32 summation order. Keras's own ``Conv2D`` in bfloat16 must agree
    with ours to within one bfloat16 step (2**-7, relative) for the same reason.
    A misplaced tap or a wrong rate gives errors of the order of the outputs.
    """
    rng = np.random.default_rng(size[1])
    x = round_to_bfloat16(rng.normal(size=(2, *size, 8)))
    errors, gaps = {}, {}
    for rate in (1, 2, 3, 6, 12, 18, 24, 36):
        reference, _ = conv_pair(conv_config(rate, use_bias=False), x.shape, rng)
        weights = [round_to_bfloat16(w) for w in reference.get_weights()]
        reference.set_weights(weights)
        expected = np.asarray(reference(x))
        config = {**reference.get_config(), "dtype": "mixed_bfloat16"}
        outputs = {}
        for cls in (AtrousConv2D, keras.layers.Conv2D):
            layer = cls.from_config(config)
            layer.build(x.shape)
            layer.set_weights(weights)
            output = layer(x)
            assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
            outputs[cls] = np.asarray(tf.cast(output, tf.float32))
        slack = 1e-5 * np.abs(expected).max()  # float32 summation order
        ours = outputs[AtrousConv2D]
        errors[rate] = float((np.abs(ours - expected) / (2.0**-8 * np.abs(expected) + slack)).max())
        theirs = outputs[keras.layers.Conv2D]
        gaps[rate] = float((np.abs(ours - theirs) / (2.0**-7 * np.abs(theirs) + slack)).max())
    assert max(errors.values()) <= 1.0, errors
    assert max(gaps.values()) <= 1.0, gaps


def test_has_the_config_and_weight_layout_of_conv2d():
    rng = np.random.default_rng(3)
    reference, fast = conv_pair(conv_config(6, name="aspp_3x3_1_conv"), (1, 9, 9, 4), rng)
    config = fast.get_config()
    assert config == reference.get_config()
    assert fast.name == "aspp_3x3_1_conv"
    assert [(w.path, w.shape) for w in fast.weights] == [(w.path, w.shape) for w in reference.weights]


def test_conv2d_weights_files_load_into_atrous_conv(tmp_path):
    """Weights saved by a model with a plain ``Conv2D`` load into the same model
    built with ``AtrousConv2D``, from a legacy ``.h5`` file (the format of
    ``keras.applications``' ImageNet weights, matched by layer name and order).

    Keras 3's own ``.weights.h5`` files key layers by class name instead, so such
    a file only loads into a model built with the same classes: the frontends
    load weights into the plain ``keras.applications`` network before turning
    it into a dilated one (``frontends.base``), never after.
    """

    def model(cls):
        inputs = keras.Input((17, 15, 4))
        x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
        x = cls(5, 3, padding="same", dilation_rate=4, name="dilated")(x)
        return keras.Model(inputs, x)

    plain = model(keras.layers.Conv2D)
    plain.save(tmp_path / "plain.h5")
    fast = model(AtrousConv2D)
    fast.load_weights(tmp_path / "plain.h5")
    x = np.random.default_rng(4).normal(size=(2, 17, 15, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(plain(x)), atol=1e-4)


def test_round_trips_through_a_keras_file(tmp_path):
    inputs = keras.Input((None, None, 3))
    outputs = AtrousConv2D(4, 3, padding="same", dilation_rate=12, name="dilated")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(5).normal(size=(1, 30, 27, 3)).astype("float32")
    model.save(tmp_path / "atrous.keras")
    reloaded = keras.models.load_model(tmp_path / "atrous.keras")
    layer = reloaded.get_layer("dilated")
    assert type(layer) is AtrousConv2D
    assert layer.dilation_rate == (12, 12)
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(model(x)), atol=1e-6)


@pytest.mark.parametrize("model_name", ["DeepLabV3", "DeepLabV3_plus"])
def test_deeplab_at_output_stride_8_has_only_fast_dilated_convs(model_name):
    """Output stride 8 dilates ResNet50's last two stages (rates 2 and 4, and
    multi-grid for DeepLabV3) and doubles the ASPP rates; none may fall back to a
    plain ``Conv2D``. (Every registered model at its default output stride is
    checked by ``test_models.test_every_model_gives_full_size_finite_logits``.)"""
    model = semseg_suite.build_model(model_name, "ResNet50", num_classes=3, output_stride=8)
    assert plain_dilated_convs(model) == []
    rates = {max(layer.dilation_rate) for layer in model.layers if isinstance(layer, AtrousConv2D)}
    assert {2, 4} <= rates
    keras.backend.clear_session()


def test_float16_gradients_work_on_cpu():
    # TensorFlow's CPU dilated kernel has no float16 gradient: float16 takes Conv2D's path
    layer = AtrousConv2D(4, 3, padding="same", dilation_rate=6, dtype="mixed_float16")
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 13, 11, 3)), tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    gradients = tape.gradient(loss, [x, layer.kernel])
    assert y.dtype == tf.float16
    assert all(np.isfinite(np.asarray(g, np.float32)).all() and np.abs(np.asarray(g, np.float32)).sum() > 0
               for g in gradients)


def test_gradient_path_follows_the_device_and_onednn():
    """GPUs and TPUs have dilated gradient kernels; a CPU has them only with oneDNN."""
    cpu = "portable" if not layers.onednn_enabled() else "native"
    assert layers.atrous_gradient_path("/job:localhost/replica:0/task:0/device:CPU:0") == cpu
    assert layers.atrous_gradient_path("/device:GPU:0") == "native"
    assert layers.atrous_gradient_path("/job:worker/replica:0/task:1/device:TPU:0") == "native"
    assert layers.atrous_gradient_path("") == ("native" if tf.config.list_logical_devices("GPU") else cpu)


def test_portable_gradient_uses_no_dilated_backprop_kernel(monkeypatch, caplog):
    """The portable path, forced in this process whatever the CPU: a traced training
    step has the native forward op and no ``Conv2DBackprop*`` op at a rate above 1
    (those are what oneDNN-less CPUs lack), its gradients equal ``Conv2D``'s, and the
    suite's logger names the path once for several layers."""
    monkeypatch.setattr(layers, "atrous_gradient_path", lambda device="": "portable")
    monkeypatch.setattr(layers, "_logged_paths", set())
    rng = np.random.default_rng(9)
    x = tf.constant(rng.normal(size=(2, 21, 18, 4)), tf.float32)
    reference, fast = conv_pair(conv_config((6, 3), kernel_size=(3, 2)), x.shape, rng)
    second = AtrousConv2D(3, 3, padding="same", dilation_rate=4)

    def gradients(layer):
        @tf.function
        def step(inputs):
            if layer is fast:
                second(inputs)  # a second dilated layer traced: no second log line
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(layer(inputs) ** 2)
            return tape.gradient(loss, [inputs, layer.kernel, layer.bias])

        return step, [np.asarray(g) for g in step(x)]

    with caplog.at_level("INFO", logger="semseg_suite"):
        step, ours = gradients(fast)
    _, expected = gradients(reference)
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    ops = step.get_concrete_function(x).graph.get_operations()
    dilated_backprop = [op.name for op in ops if op.type.startswith("Conv2DBackprop") and max(op.get_attr("dilations")) > 1]
    assert dilated_backprop == []
    assert any(op.type == "Conv2D" and max(op.get_attr("dilations")) > 1 for op in ops)
    assert sum("AtrousConv2D: CPU without oneDNN" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kernel_size, rate", [(3, 2), (3, 12), (5, 3)])
def test_explicit_same_padding_for_export_gives_the_same_outputs(kernel_size, rate):
    conv = AtrousConv2D(4, kernel_size, padding="same", dilation_rate=rate)
    x = np.random.default_rng(rate).normal(size=(1, 17, 23, 3)).astype("float32")
    expected = np.asarray(conv(x))
    with layers.explicit_same_padding():
        traced = tf.function(lambda t: conv(t), input_signature=[tf.TensorSpec((None, None, None, 3))])
        padded = traced.get_concrete_function()
    assert "EXPLICIT" in str([op.get_attr("padding") for op in padded.graph.get_operations() if op.type == "Conv2D"])
    np.testing.assert_allclose(np.asarray(padded(tf.constant(x))), expected, atol=1e-5)
