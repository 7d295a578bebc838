"""DenseASPP: rates, widths, dense connectivity, dropout, other frontends, learning."""

import keras
import numpy as np
import pytest

from builders.denseaspp import RATES
from semseg_suite import build_model
from semseg_suite.layers import AtrousConv2D
from tiny_task import assert_learned, fit_squares
from zoo import parents


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _head_params(features, classes, bottleneck=512, filters=128, rates=RATES, transition=True):
    """Trainable parameters of the DenseASPP head, counted from the paper's layers.

    ``features``: the channels of the frontend's features; with ``transition``, a
    1x1 convolution (no bias) and BN halve them first.
    """
    total = 0
    if transition:
        total += features * (features // 2) + 2 * (features // 2)
        features //= 2
    for index in range(len(rates)):
        channels = features + index * filters
        if index > 0:
            total += 2 * channels  # BN on the concatenation
        total += channels * bottleneck + 2 * bottleneck  # 1x1 conv (no bias) + BN
        total += 9 * bottleneck * filters + filters  # 3x3 atrous conv with bias
    return total + (features + len(rates) * filters + 1) * classes


def _check_dense_head(model, features_layer, features, bottleneck=512, filters=128):
    assert [model.get_layer(f"denseaspp{i}_2_conv").dilation_rate for i in range(1, 6)] == [
        (r, r) for r in (3, 6, 12, 18, 24)
    ]
    for index in range(1, 6):
        atrous = model.get_layer(f"denseaspp{index}_2_conv")
        assert isinstance(atrous, AtrousConv2D) and atrous.kernel_size == (3, 3)
        assert atrous.filters == filters
        squeeze = model.get_layer(f"denseaspp{index}_1_conv")
        assert squeeze.kernel_size == (1, 1) and squeeze.filters == bottleneck
        assert parents(model, f"denseaspp{index}_1_bn") == [f"denseaspp{index}_1_conv"]
        dropout = model.get_layer(f"denseaspp{index}_dropout")
        assert isinstance(dropout, keras.layers.SpatialDropout2D) and dropout.rate == 0.1
        # The input of layer l: the features and the outputs of layers 1 .. l-1.
        earlier = [f"denseaspp{i}_dropout" for i in range(1, index)]
        if index == 1:
            assert parents(model, "denseaspp1_1_conv") == [features_layer]
            assert not any(layer.name == "denseaspp1_0_bn" for layer in model.layers)
        else:
            assert parents(model, f"denseaspp{index}_input") == [features_layer] + earlier
            assert parents(model, f"denseaspp{index}_0_bn") == [f"denseaspp{index}_input"]
            assert parents(model, f"denseaspp{index}_1_conv") == [f"denseaspp{index}_0_relu"]
        assert squeeze.kernel.shape[2] == features + (index - 1) * filters
    assert parents(model, "denseaspp_concat") == [features_layer] + [
        f"denseaspp{i}_dropout" for i in range(1, 6)
    ]
    final = model.get_layer("denseaspp_dropout")
    assert isinstance(final, keras.layers.SpatialDropout2D) and final.rate == 0.1
    assert parents(model, "logits_conv") == ["denseaspp_dropout"]
    assert model.get_layer("logits_conv").kernel.shape[2] == features + 5 * filters


def _check_transition(model, frontend_layer, channels):
    """The official code's transition: 1x1 conv to half the channels, BN, ReLU, no pool."""
    conv = model.get_layer("denseaspp_transition_conv")
    assert conv.kernel_size == (1, 1) and conv.strides == (1, 1) and conv.filters == channels // 2
    assert conv.kernel.shape[2] == channels and not conv.use_bias
    assert parents(model, "denseaspp_transition_conv") == [frontend_layer]
    assert parents(model, "denseaspp_transition_bn") == ["denseaspp_transition_conv"]
    assert parents(model, "denseaspp_transition_relu") == ["denseaspp_transition_bn"]


def test_paper_configuration_on_densenet161():
    model = build_model("DenseASPP", num_classes=19)
    assert model.name == "DenseASPP_DenseNet161"
    # 2208 channels halved to c0 = 1104 before the atrous layers, whose widths
    # 512 and 128 (cfgs/DenseASPP161.py) are about c0/2 and c0/8.
    _check_transition(model, "relu", 2208)
    _check_dense_head(model, "denseaspp_transition_relu", 1104)
    # DenseNet-161 at output stride 8: the last two transition pools are gone and
    # dense blocks 3 and 4 are dilated by 2 and 4.
    assert isinstance(model.get_layer("pool3_pool"), keras.layers.Identity)
    assert isinstance(model.get_layer("pool4_pool"), keras.layers.Identity)
    assert model.get_layer("conv4_block36_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block24_2_conv").dilation_rate == (4, 4)
    assert not any(layer.name == "denseaspp_resize" for layer in model.layers)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 26_472_000 + _head_params(2208, 19)
    logits = model(np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32"))
    assert tuple(logits.shape) == (1, 45, 67, 19) and logits.dtype == "float32"
    assert np.isfinite(np.asarray(logits)).all()


def test_on_resnet50_at_output_stride_8():
    model = build_model("DenseASPP", "ResNet50", num_classes=4, output_stride=8)
    _check_transition(model, "conv5_block3_out", 2048)
    _check_dense_head(model, "denseaspp_transition_relu", 1024)
    assert not any(layer.name == "denseaspp_resize" for layer in model.layers)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    resnet50 = 23_534_592  # keras.applications ResNet50 without top, trainable
    assert trainable == resnet50 + _head_params(2048, 4)
    logits = model(np.zeros((2, 64, 96, 3), "float32"))
    assert tuple(logits.shape) == (2, 64, 96, 4) and logits.dtype == "float32"


def test_other_output_strides_run_the_head_at_stride_8():
    model = build_model(
        "DenseASPP", "MobileNetV2", num_classes=3, output_stride=16,
        bottleneck_filters=128, filters=64,
    )
    _check_transition(model, "block_16_project_BN", 320)
    _check_dense_head(model, "denseaspp_resize", 160, bottleneck=128, filters=64)
    assert parents(model, "denseaspp_resize") == ["denseaspp_transition_relu", "block_6_expand_relu"]
    x = np.zeros((1, 45, 67, 3), "float32")
    probe = keras.Model(model.input, model.get_layer("denseaspp_concat").output)
    assert tuple(probe(x).shape) == (1, 6, 9, 160 + 5 * 64)  # ceil(45 / 8), ceil(67 / 8)
    assert tuple(model(x).shape) == (1, 45, 67, 3)


def test_without_the_transition_layer_1_takes_the_frontend_features():
    # The official MobileNetV2 variant (models/MobileNetDenseASPP.py) has no transition.
    model = build_model(
        "DenseASPP", "MobileNetV2", num_classes=3, output_stride=8, transition=False,
        bottleneck_filters=64, filters=32,
    )
    assert not any(layer.name.startswith("denseaspp_transition") for layer in model.layers)
    _check_dense_head(model, "block_16_project_BN", 320, bottleneck=64, filters=32)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    mobilenet_v2 = 2_223_872 - 320 * 1280 - 2 * 1280  # up to block_16_project_BN (no Conv_1), trainable
    assert trainable == mobilenet_v2 + _head_params(320, 3, 64, 32, transition=False)
    assert tuple(model(np.zeros((1, 32, 33, 3), "float32")).shape) == (1, 32, 33, 3)


@pytest.mark.slow
def test_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    model = build_model(
        "DenseASPP", "ResNet18", num_classes=2, output_stride=8,
        bottleneck_filters=64, filters=32,
    )
    scores = fit_squares(model, steps=150)
    assert_learned(scores)
