"""Frontend contract: stride-named endpoints, output stride by dilation, weights."""

import math

import keras
import numpy as np
import pytest

import frontends
from frontends import FRONTENDS, FrontendWeightsError, build_frontend
from frontends.base import clone_with_overrides, dilation_plan
from semseg_suite.layers import AtrousConv2D

FAST_FRONTENDS = ["ResNet50", "MobileNetV2", "Xception"]


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


@pytest.mark.parametrize("name", FAST_FRONTENDS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_endpoint_sizes_follow_output_stride(name, output_stride):
    model = build_frontend(name, output_stride=output_stride)
    for height, width in [(96, 96), (45, 67)]:
        features = model(np.zeros((1, height, width, 3), "float32"))
        assert sorted(features) == sorted(f"stride{s}" for s in frontends.STRIDES)
        for stride in frontends.STRIDES:
            effective = min(stride, output_stride)
            expected = (math.ceil(height / effective), math.ceil(width / effective))
            got = tuple(features[f"stride{stride}"].shape[1:3])
            assert got == expected, (name, output_stride, stride, (height, width))


@pytest.mark.parametrize("name", ["ResNet101", "ResNet152"])
def test_deep_resnets_endpoints(name):
    features = build_frontend(name, output_stride=16)(np.zeros((1, 64, 64, 3), "float32"))
    assert [tuple(features[f"stride{s}"].shape[1:]) for s in frontends.STRIDES] == [
        (32, 32, 64),
        (16, 16, 256),
        (8, 8, 512),
        (4, 4, 1024),
        (4, 4, 2048),
    ]


@pytest.mark.parametrize("output_stride", [4, 12, 64, None, "16"])
def test_bad_output_stride_is_a_value_error(output_stride):
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_frontend("MobileNetV2", output_stride=output_stride)


@pytest.mark.parametrize(
    "app_fn", [keras.applications.ResNet50, keras.applications.MobileNetV2, keras.applications.Xception]
)
def test_dilation_clone_keeps_names_shapes_and_weights(app_fn):
    base = app_fn(include_top=False, weights=None, input_shape=(None, None, 3))
    plan = dilation_plan(base, 8)
    assert any("dilation_rate" in overrides for overrides in plan.values())
    clone = clone_with_overrides(base, plan)
    assert [layer.name for layer in clone.layers[1:]] == [layer.name for layer in base.layers[1:]]
    for layer in base.layers[1:]:
        expected = layer.get_weights()
        got = clone.get_layer(layer.name).get_weights()
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_resnet_multi_grid_rates():
    def rates(model, prefix):
        return [model.get_layer(f"{prefix}{i}_2_conv").dilation_rate[0] for i in (1, 2, 3)]

    os16 = build_frontend("ResNet50", output_stride=16, multi_grid=(1, 2, 4))
    assert rates(os16, "conv5_block") == [2, 4, 8]
    assert os16.get_layer("conv4_block6_2_conv").dilation_rate == (1, 1)
    assert os16.get_layer("conv5_block1_1_conv").strides == (1, 1)
    assert isinstance(os16.get_layer("conv5_block2_2_conv"), AtrousConv2D)

    os8 = build_frontend("ResNet50", output_stride=8, multi_grid=(1, 2, 4))
    assert rates(os8, "conv5_block") == [4, 8, 16]
    assert os8.get_layer("conv4_block3_2_conv").dilation_rate == (2, 2)

    os32 = build_frontend("ResNet50", output_stride=32)
    assert rates(os32, "conv5_block") == [1, 1, 1]
    # multi_grid only applies to frontends that declare it.
    mobile = build_frontend("MobileNetV2", output_stride=16, multi_grid=(1, 2, 4))
    assert mobile.get_layer("block_14_depthwise").dilation_rate == (2, 2)


def test_weights_from_a_file(tmp_path):
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = build_frontend("MobileNetV2", weights=str(path), output_stride=16)
    compared = 0
    for layer in model.layers:
        if layer.weights:
            for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
            compared += 1
    assert compared > 100


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_frontend("Xception", weights=str(missing))


@pytest.fixture
def offline(monkeypatch):
    """Makes every weights download fail the way an offline keras does."""

    def fail(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", fail)


def test_imagenet_offline_fails_with_a_helpful_message(offline):
    with pytest.raises(FrontendWeightsError) as info:
        build_frontend("MobileNetV2", weights="imagenet")
    message = str(info.value)
    assert frontends.keras_cache_dir() in message
    assert "--frontend-weights none" in message


def test_auto_weights_fall_back_with_one_warning(offline, caplog):
    with caplog.at_level("WARNING", logger="semseg_suite"):
        model = build_frontend("MobileNetV2", weights="auto")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "random initialisation" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert isinstance(model, keras.Model)


def test_registry_lists_known_names_on_error():
    with pytest.raises(ValueError, match="known: ResNet50, ResNet101"):
        FRONTENDS.get("ResNet51")
