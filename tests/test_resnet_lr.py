"""ResNet101LR: ExFuse's {8, 8, 9, 8} rearrangement of ResNet-101 (frontends.resnet_lr)."""

import math
import re

import keras
import numpy as np
import pytest

import frontends
from frontends import FrontendWeightsError, build_frontend
from frontends.resnet_lr import bottleneck_resnet
from semseg_suite import build_model, layers

ODD = (97, 131)
WIDTHS = (64, 256, 512, 1024, 2048)  # channels of stride2 .. stride32
# keras.applications.ResNet101(include_top=False).count_params()
RESNET101_HEADLESS_PARAMS = 42_658_176


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def blocks_per_stage(model) -> tuple[int, ...]:
    """The number of ``conv{N}_block{i}_out`` layers of stages conv2 .. conv5."""
    outs = [re.fullmatch(r"conv(\d)_block\d+_out", layer.name) for layer in model.layers]
    return tuple(sum(1 for m in outs if m and m.group(1) == str(stage)) for stage in range(2, 6))


def bottleneck_resnet_params(blocks) -> int:
    """Parameters (BN moving statistics included) of a headless ResNet v1, by hand:
    convolutions with biases, four numbers per batch-norm channel."""

    def conv(cin, cout, k):
        return k * k * cin * cout + cout

    total = conv(3, 64, 7) + 4 * 64  # stem
    channels = 64
    for count, width in zip(blocks, (64, 128, 256, 512)):
        for block in range(count):
            total += conv(channels, width, 1) + conv(width, width, 3) + conv(width, 4 * width, 1)
            total += 4 * (2 * width + 4 * width)
            if block == 0:
                total += conv(channels, 4 * width, 1) + 4 * 4 * width  # projection shortcut
            channels = 4 * width
    return total


def test_builder_gives_keras_resnet_layer_for_layer():
    """With ResNet-50's blocks the hand-written network is keras.applications.ResNet50:
    the same layers, in order, with the same configs and weight shapes (batch norms
    are the suite's fused subclass of Keras')."""
    ours = bottleneck_resnet("ResNet50", (3, 4, 6, 3))
    reference = keras.applications.ResNet50(include_top=False, weights=None)
    pairs = list(zip(ours.layers[1:], reference.layers[1:], strict=True))  # past the inputs
    keys = ("filters", "kernel_size", "strides", "padding", "use_bias", "epsilon", "pool_size", "activation")
    for mine, theirs in pairs:
        expected = layers.BatchNormalization if type(theirs) is keras.layers.BatchNormalization else type(theirs)
        assert (mine.name, type(mine)) == (theirs.name, expected)
        a, b = mine.get_config(), theirs.get_config()
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, mine.name
        assert [w.shape for w in mine.weights] == [w.shape for w in theirs.weights], mine.name
    assert ours.count_params() == reference.count_params() == bottleneck_resnet_params((3, 4, 6, 3))


def test_rearranged_blocks_parameters_and_auto_fallback(caplog):
    with caplog.at_level("WARNING", logger="semseg_suite"):
        model = build_frontend("ResNet101LR", weights="auto")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "random initialisation" in warnings[0].getMessage()
    assert blocks_per_stage(model) == (8, 8, 9, 8)
    assert model.count_params() == bottleneck_resnet_params((8, 8, 9, 8)) == 50_799_360
    # ResNet-101's arrangement, checked by the same formula, has fewer.
    assert bottleneck_resnet_params((3, 4, 23, 3)) == RESNET101_HEADLESS_PARAMS < model.count_params()


def test_imagenet_is_a_clear_error():
    with pytest.raises(FrontendWeightsError, match="No ImageNet weights exist for ResNet101LR") as info:
        build_frontend("ResNet101LR", weights="imagenet")
    assert "--frontend-weights none" in str(info.value)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_endpoint_sizes_and_dilation(output_stride):
    model = build_frontend("ResNet101LR", output_stride=output_stride)
    features = model(np.zeros((1, *ODD, 3), "float32"))
    for stride, width in zip(frontends.STRIDES, WIDTHS):
        effective = min(stride, output_stride)
        expected = (1, math.ceil(ODD[0] / effective), math.ceil(ODD[1] / effective), width)
        assert tuple(features[f"stride{stride}"].shape) == expected, stride
    # Every 3x3 conv of a stage past the output stride is dilated by the stride it lost.
    for stage, stride in zip(range(2, 6), (4, 8, 16, 32)):
        rate = max(stride // output_stride, 1)
        convs = [layer for layer in model.layers if re.fullmatch(rf"conv{stage}_block\d+_2_conv", layer.name)]
        assert len(convs) == (8, 8, 9, 8)[stage - 2]
        assert {layer.dilation_rate for layer in convs} == {(rate, rate)}, stage
        first = model.get_layer(f"conv{stage}_block1_1_conv")
        expected_stride = 2 if stage > 2 and stride <= output_stride else 1
        assert first.strides == (expected_stride, expected_stride), stage


def test_exfuse_on_the_rearranged_resnet():
    model = build_model("ExFuse", "ResNet101LR", num_classes=3, frontend_weights=None)
    assert model.get_layer("conv2_block8_out") is not None
    logits = np.asarray(model(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")))
    assert logits.shape == (1, 64, 64, 3) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
