"""Shared layers against NumPy references: argmax pooling, unpooling, FLOP counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite.flops import count_flops
from semseg_suite.layers import AdaptiveAveragePooling2D, AdaptiveMaxPooling2D, MaxPoolingWithArgmax2D, MaxUnpooling2D


def numpy_pool_and_unpool(x, k):
    """Reference: k x k / k max-pool (padding bottom/right) and unpooling to x's size."""
    batch, height, width, channels = x.shape
    pooled = np.zeros((batch, -(-height // k), -(-width // k), channels), x.dtype)
    unpooled = np.zeros_like(x)
    for b in range(batch):
        for c in range(channels):
            for i in range(pooled.shape[1]):
                for j in range(pooled.shape[2]):
                    window = x[b, i * k : (i + 1) * k, j * k : (j + 1) * k, c]
                    r, s = np.unravel_index(np.argmax(window), window.shape)
                    pooled[b, i, j, c] = window[r, s]
                    unpooled[b, i * k + r, j * k + s, c] = window[r, s]
    return pooled, unpooled


@pytest.mark.parametrize("shape,k", [((2, 6, 8, 3), 2), ((1, 7, 5, 2), 2), ((1, 9, 10, 1), 3)])
def test_unpooling_puts_each_maximum_back_at_its_argmax(shape, k):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D(k)(x)
    expected_pooled, expected_unpooled = numpy_pool_and_unpool(x, k)
    np.testing.assert_array_equal(np.asarray(pooled), expected_pooled)
    assert indices.dtype == "int32" and 0 <= np.min(indices) and np.max(indices) < k * k
    unpooled = MaxUnpooling2D(k)([pooled, indices, x])
    np.testing.assert_array_equal(np.asarray(unpooled), expected_unpooled)


def test_unpooling_routes_the_decoder_values_not_the_pooled_ones():
    x = np.random.default_rng(1).normal(size=(1, 4, 4, 1)).astype("float32")
    _, indices = MaxPoolingWithArgmax2D()(x)
    decoded = np.full((1, 2, 2, 1), 7.0, "float32")
    unpooled = np.asarray(MaxUnpooling2D()([decoded, indices, x]))
    _, expected_positions = numpy_pool_and_unpool(x, 2)
    # Nonzero exactly where each window's maximum was (x has no exact zeros).
    np.testing.assert_array_equal(unpooled != 0, expected_positions != 0)
    assert np.all(unpooled[unpooled != 0] == 7.0)


def test_pooling_and_unpooling_train_and_serialise(tmp_path):
    inputs = keras.Input((None, None, 2))
    pooled, indices = MaxPoolingWithArgmax2D(name="pool")(inputs)
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(pooled)
    outputs = MaxUnpooling2D(name="unpool")([x, indices, inputs])
    model = keras.Model(inputs, outputs)
    x = tf.random.normal((2, 9, 11, 2), seed=0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x) ** 2)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(np.any(np.asarray(g) != 0) for g in gradients)
    model.save(tmp_path / "unpool.keras")
    reloaded = keras.models.load_model(tmp_path / "unpool.keras")
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))



def test_int8_tflite_pooling_and_unpooling_at_an_odd_size_match_float():
    """Full-integer int8 at 7x9 gives the float pooling and unpooling, to a step.

    TFLite's pad and max keep their input's scale, so a padding value outside the
    input's range (a constant -3e38) would become the scale and quantise every value
    to 0; and an int8 one-hot mask's zeros, quantised apart from the mask, would
    leak a share of each maximum into every position. The 126 inputs are distinct
    levels two int8 steps apart: rounding keeps their order, so the int8 argmax is
    the float one and each value is off by under a step.
    """
    pool, unpool = MaxPoolingWithArgmax2D(), MaxUnpooling2D()

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 2), tf.float32)])
    def pool_and_unpool(x):
        def conv(x):  # a 1x1 identity convolution, requantised in int8 as in SegNet's encoder
            return tf.nn.conv2d(x, tf.eye(2)[None, None], 1, "SAME")

        x = tf.nn.relu(conv(x))
        pooled, indices = pool(x)
        pooled = conv(pooled)
        return pooled, conv(unpool([pooled, indices, x]))

    rng = np.random.default_rng(0)
    levels = np.arange(126, dtype="float32") / 63  # [0, 2), 1/63 apart; int8 step 2/255
    samples = [rng.permutation(levels).reshape(1, 7, 9, 2) for _ in range(9)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [pool_and_unpool.get_concrete_function()], pool_and_unpool
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample] for sample in samples[1:])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    scales = [scale for t in interpreter.get_tensor_details() for scale in t["quantization_parameters"]["scales"]]
    assert max(scales) < 0.02, max(scales)  # about 2/255 for values in [0, 2)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], samples[0].shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], samples[0])
    interpreter.invoke()
    got = {tuple(o["shape"]): interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()}
    expected_pooled, expected_unpooled = numpy_pool_and_unpool(samples[0], 2)
    np.testing.assert_allclose(got[(1, 4, 5, 2)], expected_pooled, atol=0.01)
    np.testing.assert_allclose(got[(1, 7, 9, 2)], expected_unpooled, atol=0.01)


def test_flops_match_a_hand_count():
    inputs = keras.Input((32, 48, 8))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)  # 16x24 out
    x = keras.layers.Conv2D(16, 3, padding="same", groups=4, dilation_rate=2)(x)
    x = keras.layers.DepthwiseConv2D(5, padding="same", depth_multiplier=2)(x)  # 32 ch
    x = keras.layers.SeparableConv2D(24, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2DTranspose(4, 4, strides=2, padding="same")(x)  # 32x48 out
    y = keras.layers.GlobalAveragePooling2D()(x)
    y = keras.layers.Dense(10)(y)
    model = keras.Model(inputs, [x, y])
    macs = (
        16 * 24 * 16 * 3 * 3 * 8  # strided conv: output pixels x C_out x kernel x C_in
        + 16 * 24 * 16 * 3 * 3 * 16 // 4  # grouped conv
        + 16 * 24 * 32 * 5 * 5  # depthwise, multiplier 2
        + 16 * 24 * 32 * 3 * 3 + 16 * 24 * 32 * 24  # separable: depthwise + pointwise
        + 16 * 24 * 24 * 4 * 4 * 4  # transposed: input pixels x C_in x kernel x C_out
        + 4 * 10  # dense
    )
    assert count_flops(model) == 2 * macs


def test_flops_of_resnet50_match_its_paper():
    # He et al. 2016, Table 1: 3.8e9 multiply-adds at 224x224 ("FLOPs" there).
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert count_flops(model) / 2 == pytest.approx(3.8e9, rel=0.03)
    keras.backend.clear_session()


def test_flops_need_static_shapes():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="static shapes"):
        count_flops(model)


def numpy_adaptive_pool(x, bins, reduce=np.mean):
    """PyTorch's AdaptiveAvgPool2d rule (AdaptiveMaxPool2d with ``reduce=np.max``), by loops."""
    height, width = x.shape[1:3]
    out = np.zeros((x.shape[0], bins, bins, x.shape[3]))
    for i in range(bins):
        rows = slice(i * height // bins, -(-(i + 1) * height // bins))
        for j in range(bins):
            cols = slice(j * width // bins, -(-(j + 1) * width // bins))
            out[:, i, j] = reduce(x[:, rows, cols], axis=(1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 12, 12, 3), (1, 7, 5, 2), (1, 4, 5, 1), (1, 60, 61, 4)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_average_pooling_matches_numpy(shape, bins):
    x = np.random.default_rng(bins).normal(size=shape).astype("float32")
    got = np.asarray(AdaptiveAveragePooling2D(bins)(x))
    np.testing.assert_allclose(got, numpy_adaptive_pool(x, bins), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 3, 2, 2), (1, 61, 60, 4)])
@pytest.mark.parametrize("bins", [1, 2, 4])
def test_adaptive_max_pooling_matches_numpy_at_any_run_time_size(shape, bins):
    pool = tf.function(AdaptiveMaxPooling2D(bins), input_signature=[tf.TensorSpec([None, None, None, shape[3]])])
    x = np.random.default_rng(bins).normal(size=shape).astype("float32")
    np.testing.assert_array_equal(np.asarray(pool(x)), numpy_adaptive_pool(x, bins, reduce=np.max))


def test_adaptive_average_pooling_takes_sizes_known_only_at_run_time():
    pool = tf.function(
        AdaptiveAveragePooling2D(6), input_signature=[tf.TensorSpec([None, None, None, 3])]
    )
    x = np.random.default_rng(0).normal(size=(1, 9, 10, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(pool(x)), numpy_adaptive_pool(x, 6), atol=1e-5)


def test_flops_count_each_call_in_the_model_and_only_those():
    conv = keras.layers.Conv2D(4, 3, padding="same")
    inputs = keras.Input((16, 16, 4))
    model = keras.Model(inputs, conv(conv(inputs)))  # shared weights, two calls
    conv(keras.Input((64, 64, 4)))  # a call outside the model
    assert count_flops(model) == 2 * 2 * (16 * 16 * 4 * 3 * 3 * 4)
