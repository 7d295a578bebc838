"""FRRN-A/B and AdapNet: layer structure from the papers, streams, multiscale units, learning."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from builders.adapnet import MultiscaleConv2D
from semseg_suite import build_model
from tiny_task import assert_learned, fit_squares


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _sources(layer):
    """``(layer name, output index)`` of each input of ``layer``'s first call."""
    node = layer._inbound_nodes[0]
    histories = [t._keras_history for t in node.input_tensors]
    return [(h.operation.name, h.tensor_index) for h in histories]


# Pohlen et al. 2017, Table 1: (stage, FRRUs, pooling-stream channels, scale) in
# network order, encoder then decoder.
FRRN_A_TABLE = [
    ("enc1", 3, 96, 2),
    ("enc2", 4, 192, 4),
    ("enc3", 2, 384, 8),
    ("enc4", 2, 384, 16),
    ("dec3", 2, 192, 8),
    ("dec2", 2, 192, 4),
    ("dec1", 2, 96, 2),
]
FRRN_B_TABLE = FRRN_A_TABLE[:4] + [
    ("enc5", 2, 384, 32),
    ("dec4", 2, 192, 16),
    ("dec3", 2, 192, 8),
    ("dec2", 2, 192, 4),
    ("dec1", 2, 96, 2),
]


def _frru_layout(model):
    """``[(stage, units, width, scale)]`` read off the model's FRRU layers in order."""
    layout = []
    for layer in model.layers:
        match = re.fullmatch(r"((?:enc|dec)\d)_frru(\d)_conv1_conv", layer.name)
        if not match:
            continue
        stage, unit = match.group(1), int(match.group(2))
        frru = f"{stage}_frru{unit}"
        width = layer.filters
        assert model.get_layer(f"{frru}_conv2_conv").filters == width
        scale = model.get_layer(f"{frru}_pool").pool_size[0]
        assert model.get_layer(f"{frru}_pool").pool_size == (scale, scale)
        assert model.get_layer(f"{frru}_pool").strides == (scale, scale)
        # Unpooled by exactly the stream's scale (a popular port used 17 for 16).
        assert model.get_layer(f"{frru}_unpool").size == (scale, scale)
        if layout and layout[-1][0] == stage:
            assert layout[-1][1] == unit - 1 and layout[-1][2:] == (width, scale)
            layout[-1] = (stage, unit, width, scale)
        else:
            assert unit == 1
            layout.append((stage, unit, width, scale))
    return layout


@pytest.mark.parametrize("name,table,params", [
    ("FRRN-A", FRRN_A_TABLE, 17_762_323),
    ("FRRN-B", FRRN_B_TABLE, 24_775_827),
])
def test_frrn_units_widths_and_scales_follow_table1(name, table, params):
    model = build_model(name, num_classes=19, input_shape=(64, 96, 3))
    assert _frru_layout(model) == table
    assert model.count_params() == params

    stem = model.get_layer("stem_conv")
    assert (stem.filters, stem.kernel_size) == (48, (5, 5))
    for block in ("stem_ru1", "stem_ru2", "stem_ru3", "merge_ru1", "merge_ru2", "merge_ru3"):
        for conv in ("conv1", "conv2"):
            layer = model.get_layer(f"{block}_{conv}_conv")
            assert (layer.filters, layer.kernel_size, layer.use_bias) == (48, (3, 3), False)
    split = model.get_layer("split_conv")
    assert (split.filters, split.kernel_size, split.use_bias) == (32, (1, 1), False)
    assert _sources(model.get_layer("split_bn")) == [("split_conv", 0)]
    # Merge: the pooling stream (96) upsampled to full resolution plus the residual
    # stream (32), projected to 48 by the first RU's linear shortcut.
    assert model.get_layer("merge_concat").output.shape == (None, 64, 96, 96 + 32)
    assert model.get_layer("merge_ru1_shortcut_conv").filters == 48
    assert not any(l.name.startswith("stem_ru") and "shortcut" in l.name for l in model.layers)
    logits = model.get_layer("logits_conv")
    assert (logits.filters, logits.kernel_size, logits.use_bias) == (19, (1, 1), True)

    for stage, units, width, scale in table:
        for unit in range(1, units + 1):
            frru = f"{stage}_frru{unit}"
            # The pooling stream at its scale, the residual stream 32 channels at
            # full resolution; the residual comes from a 1x1 conv with bias.
            out = model.get_layer(f"{frru}_conv2_relu").output.shape
            assert out == (None, 64 // scale, 96 // scale, width)
            assert model.get_layer(f"{frru}_add").output.shape == (None, 64, 96, 32)
            conv = model.get_layer(f"{frru}_residual_conv")
            assert (conv.filters, conv.kernel_size, conv.use_bias) == (32, (1, 1), True)
            assert model.get_layer(f"{frru}_conv1_conv").kernel_size == (3, 3)


def test_frrn_residual_stream_is_one_full_resolution_chain_at_odd_sizes():
    model = build_model("FRRN-B", num_classes=3, input_shape=(45, 67, 3))
    frrus = [
        l.name.removesuffix("_add")
        for l in model.layers
        if re.fullmatch(r"(enc|dec)\d_frru\d_add", l.name)
    ]
    assert len(frrus) == 3 + 4 + 2 + 2 + 2 + 2 + 2 + 2 + 2
    previous = "split_bn"
    for frru in frrus:
        # Each FRRU pools and extends the residual stream left by the previous one.
        assert _sources(model.get_layer(f"{frru}_pool")) == [(previous, 0)]
        assert _sources(model.get_layer(f"{frru}_add")) == [(previous, 0), (f"{frru}_crop", 0)]
        assert model.get_layer(f"{frru}_add").output.shape == (None, 45, 67, 32)
        previous = f"{frru}_add"
    assert _sources(model.get_layer("merge_concat"))[1] == (previous, 0)
    # Same-padded pooling: ceil(45 / 32) x ceil(67 / 32) at the deepest scale; the
    # decoder upsamples the pooling stream to the encoder's map of the same scale.
    assert model.get_layer("enc5_frru1_conv2_relu").output.shape == (None, 2, 3, 384)
    for stage, last, width in [(4, "enc5_frru2", 384), (3, "dec4_frru2", 192),
                               (2, "dec3_frru2", 192), (1, "dec2_frru2", 192)]:
        upsample = model.get_layer(f"dec{stage}_upsample")
        assert _sources(upsample) == [(f"{last}_conv2_relu", 0), (f"enc{stage}_pool", 0)]
        size = (-(-45 // 2**stage), -(-67 // 2**stage))
        assert upsample.output.shape == (None, *size, width)

    # The residual of an FRRU is its 1x1 output repeated over each pooling window.
    probe = keras.Model(
        model.input,
        [
            model.get_layer("enc2_frru1_residual_conv").output,
            model.get_layer("enc2_frru1_crop").output,
        ],
    )
    coarse, full = probe(np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32"))
    coarse, full = np.asarray(coarse), np.asarray(full)
    assert coarse.shape == (1, 12, 17, 32) and full.shape == (1, 45, 67, 32)
    rows, cols = np.arange(45) // 4, np.arange(67) // 4
    np.testing.assert_array_equal(full, coarse[:, rows][:, :, cols])


def test_frrn_gradients_reach_every_weight():
    keras.utils.set_random_seed(0)
    model = build_model("FRRN-A", num_classes=2)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 40, 3)).astype("float32")
    labels = rng.integers(0, 2, (2, 32, 40))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    gradients = tape.gradient(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients):
        assert gradient is not None, variable.path
        assert np.isfinite(np.asarray(gradient)).all(), variable.path
        assert np.abs(np.asarray(gradient)).max() > 0, variable.path


@pytest.mark.slow
def test_frrn_a_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    model = build_model("FRRN-A", num_classes=2)
    assert_learned(fit_squares(model, steps=60, learning_rate=2e-3, batch_size=4))


# Valada et al. 2017, Fig. 2: multiscale residual units (r1, r2) of the 3x3
# convolution's two halves.
ADAPNET_RATES = {
    "conv3_block4": (1, 2),  # res3d
    "conv4_block3": (1, 2),  # res4c
    "conv4_block4": (1, 4),
    "conv4_block5": (1, 8),
    "conv4_block6": (1, 16),  # res4f
    "conv5_block1": (2, 4),  # res5a
    "conv5_block2": (2, 8),
    "conv5_block3": (2, 16),  # res5c
}


def test_adapnet_layout_multiscale_units_and_res3_skip():
    model = build_model("AdapNet", num_classes=12, input_shape=(45, 67, 3))
    threes = [l for l in model.layers if re.fullmatch(r"conv\d_block\d_2_conv", l.name)]
    assert len(threes) == 3 + 4 + 6 + 3
    for layer in threes:
        block = layer.name.removesuffix("_2_conv")
        if block in ADAPNET_RATES:
            assert type(layer) is MultiscaleConv2D
            assert layer.rates == ADAPNET_RATES[block]
            assert layer.dilation_rate == (1, 1) and layer.kernel_size == (3, 3)
        else:
            assert type(layer) is keras.layers.Conv2D and layer.dilation_rate == (1, 1)
    assert sum(type(l) is MultiscaleConv2D for l in model.layers) == 8
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert [(l.name, l.rate) for l in dropouts] == [("conv5_block3_dropout", 0.7)]

    # Encoder: a 3x3 stride-1 conv in front of ResNet-50's stem; output stride 16.
    front = model.get_layer("conv0_conv")
    assert (front.filters, front.kernel_size, front.strides) == (3, (3, 3), (1, 1))
    assert _sources(model.get_layer("conv1_pad")) == [("conv0_relu", 0)]
    conv1 = model.get_layer("conv1_conv")
    assert (conv1.filters, conv1.kernel_size, conv1.strides) == (64, (7, 7), (2, 2))
    for name, shape in [
        ("conv1_relu", (23, 34, 64)),  # ceil(H / 2)
        ("conv2_block3_out", (12, 17, 256)),
        ("conv3_block4_out", (6, 9, 512)),
        ("conv4_block6_out", (3, 5, 1024)),
        ("conv5_block3_out", (3, 5, 2048)),  # res5 does not downsample
    ]:
        assert model.get_layer(name).output.shape == (None, *shape)

    # Decoder: x2 to stride 8, add res3's output (1x1 to 2C), x8 to the input.
    assert _sources(model.get_layer("score_conv")) == [("conv5_block3_out", 0)]
    assert model.get_layer("score_conv").filters == 12
    assert _sources(model.get_layer("skip_conv")) == [("conv3_block4_out", 0)]
    assert model.get_layer("skip_conv").filters == 24
    up1 = model.get_layer("up1_deconv")
    assert (up1.filters, up1.kernel_size, up1.strides) == (24, (4, 4), (2, 2))
    assert _sources(model.get_layer("up1_add")) == [("up1_crop", 0), ("skip_bn", 0)]
    assert model.get_layer("up1_add").output.shape == (None, 6, 9, 24)
    up2 = model.get_layer("up2_deconv")
    assert (up2.filters, up2.kernel_size, up2.strides) == (12, (16, 16), (8, 8))
    assert _sources(up2) == [("up1_add", 0)]
    assert model.output.shape == (None, 45, 67, 12)
    assert model.get_layer("logits").dtype_policy.name == "float32"

    # keras.applications' ResNet50 names and shapes: ImageNet weights load by name.
    resnet = keras.applications.ResNet50(include_top=False, weights=None)
    weighted = [l for l in resnet.layers if l.weights]
    assert len(weighted) == 106  # 53 convs, 53 batch norms
    for layer in weighted:
        model.get_layer(layer.name).set_weights(layer.get_weights())
    # The rest: the front conv and the decoder (convs without bias, each with BN).
    c = 12
    front = 3 * 3 * 3 * 3 + 4 * 3
    decoder = (
        2048 * c + 4 * c  # score
        + 4 * 4 * c * 2 * c + 4 * 2 * c  # up1
        + 512 * 2 * c + 4 * 2 * c  # skip
        + 16 * 16 * 2 * c * c + 4 * c  # up2
    )
    assert model.count_params() - resnet.count_params() == front + decoder


def test_multiscale_conv_is_two_dilated_convs_concatenated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 19, 23, 5)).astype("float32")
    layer = MultiscaleConv2D(8, 3, rates=(2, 4), padding="same", use_bias=True)
    y = np.asarray(layer(x))
    assert layer.kernel.shape == (3, 3, 5, 8) and y.shape == (2, 19, 23, 8)
    layer.bias.assign(rng.normal(size=8).astype("float32"))
    y = np.asarray(layer(x))
    kernel, bias = layer.get_weights()
    halves = []
    for rate, part in [(2, slice(0, 4)), (4, slice(4, 8))]:
        plain = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=rate)
        plain.build(x.shape)
        plain.set_weights([kernel[..., part], bias[part]])
        halves.append(np.asarray(plain(x)))
    np.testing.assert_allclose(y, np.concatenate(halves, -1), atol=1e-4)
    clone = MultiscaleConv2D.from_config(layer.get_config())
    assert clone.rates == (2, 4)
    with pytest.raises(ValueError):
        MultiscaleConv2D(7, 3, padding="same")


@pytest.mark.slow
def test_adapnet_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    model = build_model("AdapNet", num_classes=2)
    assert_learned(fit_squares(model, steps=150, learning_rate=2e-3))
