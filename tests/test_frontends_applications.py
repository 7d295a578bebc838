"""The keras.applications frontends of issue 16 (MobileNetV3, EfficientNet,
EfficientNetV2, ResNet-V2, InceptionV3, InceptionResNetV2, ConvNeXt).

For every one: it builds at output stride 8, 16 and 32 with finite features of the
nominal stride (``ceil(H / min(stride, output_stride))`` at an odd 97x131 input),
and its weight-bearing layers have the names and weight shapes of the unmodified
``keras.applications`` network (so ImageNet weights load by name). The input
normalisation each registers is checked against the in-graph preprocessing it
replaces.
"""

import math

import keras
import numpy as np
import pytest

import frontends
from frontends import FRONTENDS, build_frontend
from frontends import convnext, efficientnet, efficientnet_v2, inception, mobilenet_v3, resnet_v2
from frontends.applications import (
    InputOf,
    build_application_frontend,
    endpoint_layer_names,
    preprocessing_layer_names,
)
from semseg_suite import data
from test_atrous import plain_dilated_convs
from zoo import BIG_FRONTENDS

NEW_FRONTENDS = [
    *mobilenet_v3.VARIANTS,
    *efficientnet.VARIANTS,
    *efficientnet_v2.VARIANTS,
    *resnet_v2.VARIANTS,
    *inception.VARIANTS,
    *convnext.VARIANTS,
]
HEIGHT, WIDTH = 97, 131  # odd, and not a multiple of any stride
# Stripped in-graph input normalisation: no counterpart in the frontend.
STRIPPED = {name: {"normalization"} for name in efficientnet.VARIANTS}


def _params(output_strides):
    """(name, output_stride) pairs: every frontend at every output stride, the big
    ones too (their builds are the slowest tests of this file, about 10 s each)."""
    return [(name, os_) for name in NEW_FRONTENDS for os_ in output_strides]


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def test_all_registered():
    assert set(NEW_FRONTENDS) <= set(FRONTENDS.names())
    for name in NEW_FRONTENDS:
        assert FRONTENDS.get(name).preprocessing in ("tf", "torch", "caffe")


def _weight_shapes(model):
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


@pytest.mark.parametrize("name,output_stride", _params([8, 16, 32]))
def test_builds_with_nominal_strides_and_application_names(name, output_stride):
    expected_names = None
    # Names are compared on the most rewritten graph (OS 8), or at OS 32 for the big
    # frontends, so that each of their builds makes one network, not two.
    if output_stride == (32 if name in BIG_FRONTENDS else 8):
        plain = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(None, None, 3))
        expected_names = _weight_shapes(plain)
        for stripped in STRIPPED.get(name, ()):
            expected_names.pop(stripped)
        del plain
        keras.backend.clear_session()  # so auto-generated names (Inception's) restart alike
    model = build_frontend(name, output_stride=output_stride)
    assert plain_dilated_convs(model) == []  # dilated dense convs take the native kernel
    images = np.random.default_rng(0).uniform(-1, 1, (1, HEIGHT, WIDTH, 3)).astype("float32")
    features = model(images)
    assert sorted(features) == sorted(f"stride{s}" for s in frontends.STRIDES)
    for stride in frontends.STRIDES:
        effective = min(stride, output_stride)
        got = tuple(features[f"stride{stride}"].shape)
        assert got[:3] == (1, math.ceil(HEIGHT / effective), math.ceil(WIDTH / effective)), (stride, got)
        assert np.isfinite(keras.ops.convert_to_numpy(features[f"stride{stride}"])).all(), stride
    if expected_names is not None:
        assert _weight_shapes(model) == expected_names


def _same_outputs(plain, frontend, raw, mode, scale=1.0):
    """The application on raw pixels (times ``scale``) vs. our frontend (its weights
    copied) on the suite's normalisation of them."""
    for layer in frontend.layers:
        if layer.weights:
            layer.set_weights(plain.get_layer(layer.name).get_weights())
    expected = keras.ops.convert_to_numpy(plain(raw * scale))
    got = keras.ops.convert_to_numpy(frontend(np.asarray(data.preprocess_image(raw, mode)))["stride32"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


RAW = np.random.default_rng(1).uniform(0, 255, (1, 64, 96, 3)).astype("float32")


@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny"])
def test_preprocessing_equals_the_dropped_in_graph_layers(name):
    frontend = build_frontend(name, output_stride=32)
    keras.backend.clear_session()  # the plain network gets the same generated names
    plain = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(None, None, 3))
    # EfficientNetV2-S/M/L rescale by x / 128 - 1, the suite's "tf" mode by x / 127.5 - 1.
    scale = 128 / 127.5 if name in ("EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L") else 1.0
    _same_outputs(plain, frontend, RAW, FRONTENDS.get(name).preprocessing, scale)


def test_efficientnet_torch_mode_equals_its_imagenet_normalisation():
    """With ImageNet weights Keras' EfficientNet computes ``(x / 255 - mean) / std``
    (its Normalization layer plus a Rescaling by 1/sqrt(std) that only exists with
    those weights); with variance std**2 in the Normalization layer, weights=None
    computes the same, and equals the stripped frontend under ``"torch"``."""
    frontend = build_frontend("EfficientNetB0", output_stride=32)
    keras.backend.clear_session()  # the plain network gets the same generated names
    plain = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(None, None, 3))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    norm = plain.get_layer("normalization")
    norm.set_weights([mean.astype("float32"), (std**2).astype("float32"), *norm.get_weights()[2:]])
    stripped = [type(frontend.get_layer(n)).__name__ for n in preprocessing_layer_names(plain)]
    assert stripped == ["Identity", "Identity"]
    _same_outputs(plain, frontend, RAW, "torch")


def test_endpoint_tables_resolve_to_the_last_layer_of_each_stage():
    names = endpoint_layer_names(build_frontend("EfficientNetB1"))
    assert names == {
        "stride2": "block1b_add",
        "stride4": "block2c_add",
        "stride8": "block3c_add",
        "stride16": "block5d_add",
        "stride32": "top_activation",
    }
    keras.backend.clear_session()
    assert endpoint_layer_names(build_frontend("ResNet101V2"))["stride16"] == "conv4_block23_preact_relu"


def test_convnext_dilates_inside_its_sequential_blocks():
    model = build_frontend("ConvNeXtTiny", output_stride=8)
    conv = model.get_layer("convnext_tiny_downsampling_block_2").layers[-1]
    assert conv.strides == (1, 1) and conv.padding == "same" and conv.dilation_rate == (2, 2)
    assert type(conv).__name__ == "AtrousConv2D"
    assert model.get_layer("convnext_tiny_stage_3_block_0_depthwise_conv").dilation_rate == (4, 4)
    assert model.get_layer("convnext_tiny_stage_1_block_0_depthwise_conv").dilation_rate == (1, 1)


def test_factorised_convs_are_dilated():
    model = build_frontend("InceptionV3", output_stride=16)
    dilated = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and 1 in layer.kernel_size
        and max(layer.kernel_size) > 1 and layer.dilation_rate == (2, 2)
    ]
    assert len(dilated) >= 8  # mixed9/10's 1x3 and 3x1 convs


def test_unsupported_output_stride_is_a_clear_value_error():
    with pytest.raises(ValueError, match="Toy cannot run at output_stride=8: cell graph"):
        build_application_frontend(
            keras.applications.MobileNetV3Small,
            "Toy",
            {s: InputOf("conv") for s in frontends.STRIDES},
            output_stride=8,
            unsupported_output_strides={8: "cell graph"},
        )
