"""FC-DenseNet (Jégou et al. 2017) and U-Net (Ronneberger et al. 2015): the papers'
structure, U-Net on a frontend, and FC-DenseNet56 learning the tiny task."""

import re

import keras
import numpy as np
import pytest

from builders.fc_densenet import FC_DENSENET103_LAYERS
from semseg_suite import build_model
from tiny_task import assert_learned, fit_squares

CONVS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
BLOCKS = [f"down{i}" for i in range(1, 6)] + ["bottleneck"] + [f"up{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def dense_layer_convs(model, block):
    pattern = re.compile(rf"{block}_layer\d+_conv")
    return [layer for layer in model.layers if pattern.fullmatch(layer.name)]


def same_tensors(a, b):
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def test_fc_densenet103_follows_table_2():
    model = build_model("FC-DenseNet103", num_classes=11)
    # 91 dense layers (3x3 convs with growth 16) in blocks of 4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4.
    per_block = [dense_layer_convs(model, block) for block in BLOCKS]
    assert [len(convs) for convs in per_block] == list(FC_DENSENET103_LAYERS)
    dense = [conv for convs in per_block for conv in convs]
    assert len(dense) == 91
    assert {(conv.filters, conv.kernel_size) for conv in dense} == {(16, (3, 3))}
    # 103 = first conv + 91 dense layers + 5 TD + 5 TU + classifier (Sec. 4).
    assert sum(isinstance(layer, CONVS) for layer in model.layers) == 103
    assert model.get_layer("stem_conv").filters == 48
    # Transitions down: 1x1 convs keeping the width m of Table 2.
    for i, width in enumerate([112, 192, 304, 464, 656], start=1):
        conv = model.get_layer(f"down{i}_td_conv")
        assert conv.kernel_size == (1, 1) and conv.input.shape[-1] == conv.filters == width
    # Dense layers are BN, ReLU, conv, dropout 0.2.
    assert isinstance(model.get_layer("down3_layer2_bn"), keras.layers.BatchNormalization)
    assert model.get_layer("up2_layer7_dropout").rate == pytest.approx(0.2)
    # Transitions up see only the new maps of the previous block, not its input.
    previous = ["bottleneck", "up1", "up2", "up3", "up4"]
    new_widths = [240, 192, 160, 112, 80]
    skip_widths = [656, 464, 304, 192, 112]
    for i, (block, new, skip) in enumerate(zip(previous, new_widths, skip_widths), start=1):
        tu = model.get_layer(f"up{i}_tu_conv")
        assert isinstance(tu, keras.layers.Conv2DTranspose)
        assert (tu.kernel_size, tu.strides, tu.filters) == ((3, 3), (2, 2), new)
        assert tu.input.shape[-1] == new
        new_features = model.get_layer(f"{block}_new_features")
        assert tu.input is new_features.output
        count = len(dense_layer_convs(model, block))
        dropouts = [
            model.get_layer(f"{block}_layer{j}_dropout").output for j in range(1, count + 1)
        ]
        assert same_tensors(new_features.input, dropouts)
        assert model.get_layer(f"up{i}_tu_concat").output.shape[-1] == new + skip
    # The classifier sees the last block's whole output: skip 112 + TU 80 + 4 x 16 new.
    logits = model.get_layer("logits")
    assert logits.kernel_size == (1, 1) and logits.input.shape[-1] == 256
    assert model.output.shape[-1] == 11 and model.output.dtype == "float32"
    # Table 3: 9.4M parameters (BN statistics included, as the authors' code counts).
    assert model.count_params() == 9_425_163


@pytest.mark.parametrize(
    "name,growth,layers,params",
    [("FC-DenseNet56", 12, 4, 1_397_963), ("FC-DenseNet67", 16, 5, 3_502_923)],
)
def test_fc_densenet_growth_and_block_sizes(name, growth, layers, params):
    model = build_model(name, num_classes=11)
    for block in BLOCKS:
        convs = dense_layer_convs(model, block)
        assert len(convs) == layers
        assert {conv.filters for conv in convs} == {growth}
    assert model.get_layer("up1_tu_conv").filters == layers * growth
    assert sum(isinstance(layer, CONVS) for layer in model.layers) == int(name[-2:])
    assert model.count_params() == params  # Table 3: 1.5M (see the note) and 3.5M


def test_fc_densenet_takes_no_frontend_and_checks_block_sizes():
    from builders.fc_densenet import build_fc_densenet

    with pytest.raises(ValueError, match="own encoder"):
        build_model("FC-DenseNet56", "MobileNetV2", num_classes=3)
    with pytest.raises(ValueError, match="layers_per_block"):
        build_fc_densenet(None, 3, layers_per_block=[4] * 10, growth_rate=12)


def test_unet_follows_figure_1():
    model = build_model("U-Net", num_classes=2)
    convs = [layer for layer in model.layers if isinstance(layer, CONVS)]
    assert len(convs) == 23  # "In total the network has 23 convolutional layers."
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    for level, width in enumerate([64, 128, 256, 512], start=1):
        for conv in (1, 2):
            layer = model.get_layer(f"enc{level}_conv{conv}_conv")
            assert (layer.filters, layer.kernel_size, layer.use_bias) == (width, (3, 3), True)
        assert model.get_layer(f"enc{level}_pool").pool_size == (2, 2)
    assert model.get_layer("bottom_conv2_conv").filters == 1024
    # Dropout at the end of the contracting path.
    assert [model.get_layer(n).rate for n in ("enc4_dropout", "bottom_dropout")] == [0.5, 0.5]
    skips = ["enc4_dropout", "enc3_conv2_relu", "enc2_conv2_relu", "enc1_conv2_relu"]
    for step, (width, skip) in enumerate(zip([512, 256, 128, 64], skips), start=1):
        up = model.get_layer(f"dec{step}_upconv")
        assert isinstance(up, keras.layers.Conv2DTranspose)
        assert (up.filters, up.kernel_size, up.strides) == (width, (2, 2), (2, 2))
        assert up.input.shape[-1] == 2 * width  # halves the channels
        concat = model.get_layer(f"dec{step}_concat")
        assert concat.input[1] is model.get_layer(skip).output
        assert concat.output.shape[-1] == 2 * width
        assert model.get_layer(f"dec{step}_conv2_conv").filters == width
    assert model.get_layer("logits").kernel_size == (1, 1)
    # Counted by hand from the 23 layers with biases (3 input channels, 2 classes).
    assert model.count_params() == 31_031_810


def test_unet_batch_norm_flag():
    model = build_model("U-Net", num_classes=2, batch_norm=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 18  # after every 3x3 conv
    assert model.get_layer("dec2_conv1_bn").input is model.get_layer("dec2_conv1_conv").output
    assert not model.get_layer("enc1_conv1_conv").use_bias
    x = np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32")
    assert model(x).shape == (1, 45, 67, 2)


@pytest.mark.parametrize("output_stride", [32, 16])
def test_unet_on_a_frontend(output_stride):
    model = build_model("U-Net", "MobileNetV2", num_classes=3, output_stride=output_stride)
    frontend_skips = [f"block_{b}_expand_relu" for b in (13, 6, 3, 1)]
    for step, (width, skip) in enumerate(zip([512, 256, 128, 64], frontend_skips), start=1):
        concat = model.get_layer(f"dec{step}_concat")
        assert concat.input[1] is model.get_layer(skip).output
        assert model.get_layer(f"dec{step}_conv2_conv").filters == width
        assert isinstance(model.get_layer(f"dec{step}_conv2_bn"), keras.layers.BatchNormalization)
    # At output stride 16 the stride-32 maps already have the stride-16 resolution.
    first_up = model.get_layer("dec1_upconv")
    assert isinstance(first_up, keras.layers.Conv2DTranspose) == (output_stride == 32)
    assert model.get_layer("dec5_upconv").strides == (2, 2)
    assert model.get_layer("dec5_conv2_conv").filters == 32
    rng = np.random.default_rng(0)
    for shape in [(2, 64, 64, 3), (1, 45, 67, 3)]:
        logits = np.asarray(model(rng.normal(size=shape).astype("float32")))
        assert logits.shape == shape[:3] + (3,) and np.isfinite(logits).all()


def test_unet_on_a_frontend_without_batch_norm():
    model = build_model("U-Net", "MobileNetV2", num_classes=3, batch_norm=False)
    decoder = [layer for layer in model.layers if layer.name.startswith("dec")]
    assert decoder
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in decoder)
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 3)


def test_fc_densenet56_learns_squares():
    keras.utils.set_random_seed(0)
    model = build_model("FC-DenseNet56", num_classes=2)
    assert_learned(fit_squares(model, steps=20, learning_rate=3e-3))
