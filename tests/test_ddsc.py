"""DDSC: the ResNeXt block against NumPy, real grouped convolutions that feed the network,
the dense decoder shortcuts' wiring, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import semseg_suite
from builders.ddsc import resnext_block
from tiny_task import assert_learned, fit_squares
from zoo import parents

SMALL = (128, 64, 64, 64)  # decoder widths small enough for the CPU tests


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def numpy_conv(x, kernel, groups=1):
    """Same-padded stride-1 convolution (NHWC, HWIO kernel) with ``groups`` groups."""
    kh, kw, group_in, out = kernel.shape
    group_out = out // groups
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    height, width = x.shape[1:3]
    y = np.zeros(x.shape[:3] + (out,))
    for g in range(groups):
        inputs = padded[..., g * group_in:(g + 1) * group_in]
        weights = kernel[..., g * group_out:(g + 1) * group_out]
        for i in range(kh):
            for j in range(kw):
                y[..., g * group_out:(g + 1) * group_out] += inputs[:, i:i + height, j:j + width] @ weights[i, j]
    return y


def numpy_bn(x, layer):
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    return gamma * (x - mean) / np.sqrt(variance + layer.epsilon) + beta


def test_resnext_block_matches_numpy_with_a_real_grouped_convolution():
    inputs = keras.Input((None, None, 32), name="rx_input")
    block = keras.Model(inputs, resnext_block(inputs, cardinality=4, name="rx"))
    rng = np.random.default_rng(0)
    for layer in block.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(rng.normal(0, 0.3, layer.kernel.shape))
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
    grouped = block.get_layer("rx_grouped_conv")
    # 32 -> bottleneck 16 in 4 groups: each output filter sees 16 / 4 = 4 input channels
    assert grouped.groups == 4 and tuple(grouped.kernel.shape) == (3, 3, 4, 16)
    assert parents(block, "rx_grouped_conv") == ["rx_reduce_relu"]
    assert parents(block, "rx_expand_conv") == ["rx_grouped_relu"]
    assert parents(block, "rx_add") == ["rx_input", "rx_expand_bn"]
    x = rng.normal(size=(2, 5, 7, 32))

    def relu(v):
        return np.maximum(v, 0)

    def kernel(name):
        return np.asarray(block.get_layer(name).kernel, np.float64)

    y = relu(numpy_bn(numpy_conv(x, kernel("rx_reduce_conv")), block.get_layer("rx_reduce_bn")))
    y = relu(numpy_bn(numpy_conv(y, kernel("rx_grouped_conv"), groups=4), block.get_layer("rx_grouped_bn")))
    y = numpy_bn(numpy_conv(y, kernel("rx_expand_conv")), block.get_layer("rx_expand_bn"))
    expected = relu(x + y)
    np.testing.assert_allclose(np.asarray(block(x.astype("float32"), training=False)), expected, rtol=1e-4,
                               atol=1e-4)
    # a dense (ungrouped) 3x3 would give other numbers: the grouping is real
    dense = np.zeros((3, 3, 16, 16))
    for g in range(4):
        dense[:, :, g * 4:(g + 1) * 4, g * 4:(g + 1) * 4] = kernel("rx_grouped_conv")[..., g * 4:(g + 1) * 4]
    probe = rng.normal(size=(1, 4, 4, 16))
    np.testing.assert_allclose(numpy_conv(probe, kernel("rx_grouped_conv"), groups=4), numpy_conv(probe, dense),
                               atol=1e-12)


def test_resnext_block_rejects_a_bottleneck_not_divisible_by_the_cardinality():
    with pytest.raises(ValueError, match="multiple of the cardinality 32"):
        semseg_suite.build_model("DDSC", "ResNet18", num_classes=3, widths=(96, 512, 256, 128))
    with pytest.raises(ValueError, match="one width per stage"):
        semseg_suite.build_model("DDSC", "ResNet18", num_classes=3, widths=(256, 128))


def test_ddsc_widths_adaptation_and_dense_decoder_shortcuts():
    model = semseg_suite.build_model("DDSC", "ResNet18", num_classes=4)
    assert semseg_suite.default_frontend("DDSC") == "ResNet101"
    assert semseg_suite.models.loss_weights("DDSC") == {"logits": 1.0}  # no deep supervision
    encoder_channels = {32: 512, 16: 256, 8: 128, 4: 64}  # ResNet-18's stages
    widths = {32: 1024, 16: 512, 8: 256, 4: 128}
    grouped = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert len(grouped) == 4 * (3 + 4)  # 3 ResNeXt blocks per adaptation, 4 per decoder stage
    for layer in grouped:
        block = layer.name.removesuffix("_grouped_conv")
        width = model.get_layer(f"{block}_expand_conv").filters
        # cardinality 32, bottleneck half the width: kernel (3, 3, in / groups, out), as ResNeXt's 32x4d
        assert layer.groups == 32 and tuple(layer.kernel.shape) == (3, 3, width // 64, width // 2), block
        # the grouped conv reads the 1x1 reduction and its output is what the block goes on with
        assert parents(model, layer.name) == [f"{block}_reduce_relu"]
        assert parents(model, f"{block}_grouped_bn") == [layer.name]
        assert parents(model, f"{block}_expand_conv") == [f"{block}_grouped_relu"]
        assert parents(model, f"{block}_add")[1] == f"{block}_expand_bn"
    for stride, width in widths.items():
        adapt, dec = f"adapt{stride}", f"dec{stride}"
        # the encoder adaptation reads the frontend's stage at this stride
        assert tuple(model.get_layer(f"{adapt}_in_conv").kernel.shape) == (3, 3, encoder_channels[stride], width)
        assert parents(model, f"{adapt}_block1_reduce_conv") == [f"{adapt}_in_relu"]
        assert parents(model, f"{adapt}_out_conv") == [f"{adapt}_block3_relu"]
        # context aggregation: chained 5x5 stride-1 pools, a quarter-width branch each, concatenated
        for index in (1, 2, 3, 4):
            pool = model.get_layer(f"{dec}_context{index}_pool")
            assert pool.pool_size == (5, 5) and pool.strides == (1, 1)
            assert parents(model, f"{dec}_context{index}_branch_conv") == [pool.name]
            assert model.get_layer(f"{dec}_context{index}_branch_conv").filters == width // 4
            if index > 1:
                assert parents(model, f"{dec}_context{index}_conv") == [f"{dec}_context{index - 1}_pool"]
        assert parents(model, f"{dec}_context_concat") == [f"{dec}_context{i}_branch_relu" for i in (1, 2, 3, 4)]
        assert model.get_layer(f"{dec}_semantic_in_conv").kernel.shape[2:] == (width, width)
        assert parents(model, f"{dec}_out_conv") == [f"{dec}_semantic_block4_relu"]
    # the coarsest stage has no shortcut into it; every finer stage sums its adapted
    # features with the output of EVERY coarser stage, each read directly
    assert parents(model, "dec32_context1_conv") == ["adapt32_out_relu"]
    coarser = {16: [32], 8: [32, 16], 4: [32, 16, 8]}
    for stride, sources in coarser.items():
        dec = f"dec{stride}"
        assert parents(model, f"{dec}_fusion") == [f"{dec}_skip_relu"] + [f"{dec}_from{k}_resize" for k in sources]
        assert parents(model, f"{dec}_skip_conv") == [f"adapt{stride}_out_relu"]
        assert parents(model, f"{dec}_context1_conv") == [f"{dec}_fusion"]
        for k in sources:
            assert parents(model, f"{dec}_from{k}_conv") == [f"dec{k}_out_relu"]
            assert model.get_layer(f"{dec}_from{k}_conv").kernel.shape[2:] == (widths[k], widths[stride])
            assert parents(model, f"{dec}_from{k}_resize") == [f"{dec}_from{k}_relu", f"adapt{stride}_out_relu"]
    assert parents(model, "logits_conv") == ["dec4_out_relu"]
    # at an odd size every shortcut lands on its stage's grid; logits at the input's size
    probe = keras.Model(model.input, [model.get_layer(f"dec{s}_fusion").output for s in (16, 8, 4)]
                        + [model.get_layer(parents(model, f"adapt{s}_in_conv")[0]).output for s in (16, 8, 4)]
                        + [model.output])
    x = np.random.default_rng(1).normal(size=(1, 45, 67, 3)).astype("float32")
    *maps, logits = (np.asarray(t) for t in probe(x, training=False))
    for fused, encoder, stride in zip(maps[:3], maps[3:], (16, 8, 4)):
        assert fused.shape == encoder.shape[:3] + (widths[stride],)
    assert logits.shape == (1, 45, 67, 4) and np.isfinite(logits).all()


def test_every_grouped_convolution_and_shortcut_changes_the_logits():
    """Gradients reach every grouped kernel and every shortcut: none is dropped."""
    model = semseg_suite.build_model("DDSC", "ResNet18", num_classes=3, widths=SMALL)
    grouped = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    shortcuts = [model.get_layer(f"dec{s}_from{k}_conv") for s, ks in {16: [32], 8: [32, 16], 4: [32, 16, 8]}.items()
                 for k in ks]
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype("float32"))
    variables = [layer.kernel for layer in grouped + shortcuts]
    with tf.GradientTape() as tape:
        logits = model(x, training=False)
        target = tf.reduce_sum(tf.square(logits - tf.reduce_mean(logits)))
    for layer, gradient in zip(grouped + shortcuts, tape.gradient(target, variables)):
        assert gradient is not None and np.abs(np.asarray(gradient)).sum() > 0, layer.name
    # and zeroing one grouped kernel changes the prediction
    before = np.asarray(logits)
    grouped[0].kernel.assign(tf.zeros_like(grouped[0].kernel))
    assert np.abs(np.asarray(model(x, training=False)) - before).max() > 1e-6


@pytest.mark.slow
def test_ddsc_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    # the paper's design at a quarter of the depth: one ResNeXt block per adaptation, two per
    # decoder stage, two pooling steps (the 2-core CI budget)
    model = semseg_suite.build_model("DDSC", "ResNet18", num_classes=2, widths=(64, 64, 64, 64),
                                     adaptation_blocks=1, semantic_blocks=2, pools=2)
    assert_learned(fit_squares(model, steps=150))
