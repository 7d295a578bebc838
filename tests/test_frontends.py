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


# VGG16, ResNet18 and ResNet34 (frontends.vgg, frontends.resnet_basic).

BASIC_RESNETS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}


@pytest.mark.parametrize("name", ["VGG16", "ResNet18", "ResNet34"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_vgg_and_basic_resnet_endpoint_sizes(name, output_stride):
    test_endpoint_sizes_follow_output_stride(name, output_stride)


def _basic_resnet_params(blocks):
    """Trainable parameters of a headless basic-block ResNet, from He et al. Table 1."""
    total = 7 * 7 * 3 * 64 + 2 * 64  # stem conv (no bias) + BN
    channels = 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for block in range(count):
            total += 9 * channels * width + 9 * width * width + 2 * (2 * width)
            if stage > 0 and block == 0:
                total += channels * width + 2 * width  # 1x1 projection + BN
            channels = width
    return total


@pytest.mark.parametrize(
    "name,torchvision_headless", [("ResNet18", 11_176_512), ("ResNet34", 21_284_672)]
)
def test_basic_resnet_parameters_equal_torchvision(name, torchvision_headless):
    model = build_frontend(name)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == _basic_resnet_params(BASIC_RESNETS[name]) == torchvision_headless
    features = model(np.zeros((1, 64, 64, 3), "float32"))
    assert [features[f"stride{s}"].shape[-1] for s in frontends.STRIDES] == [64, 64, 128, 256, 512]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 and layer.epsilon == 1e-5 for layer in norms)


def test_basic_resnet_with_top_has_torchvision_layout():
    from frontends.resnet_basic import ResNet18

    model = ResNet18(include_top=True, classes=1000)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 11_689_512  # torchvision's resnet18, classifier included
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_1_pad").padding == ((1, 1), (1, 1))
    assert not any(layer.name.startswith("conv2_block1_0") for layer in model.layers)
    assert model.output.shape == (None, 1000)


def test_basic_resnet_dilation():
    os8 = build_frontend("ResNet18", output_stride=8)
    # The strided conv of conv4 keeps its rate (1) and loses its stride; the
    # padding layer before it becomes an identity.
    assert os8.get_layer("conv4_block1_1_conv").strides == (1, 1)
    assert os8.get_layer("conv4_block1_1_conv").dilation_rate == (1, 1)
    assert os8.get_layer("conv4_block1_1_conv").padding == "same"
    assert isinstance(os8.get_layer("conv4_block1_1_pad"), keras.layers.Identity)
    assert os8.get_layer("conv4_block1_2_conv").dilation_rate == (2, 2)
    assert os8.get_layer("conv5_block1_1_conv").dilation_rate == (2, 2)
    assert os8.get_layer("conv5_block2_2_conv").dilation_rate == (4, 4)
    assert isinstance(os8.get_layer("conv5_block2_2_conv"), AtrousConv2D)
    assert os8.get_layer("conv5_block1_0_conv").strides == (1, 1)
    assert os8.get_layer("conv3_block1_1_conv").strides == (2, 2)


def test_vgg16_output_stride_8_dilation():
    model = build_frontend("VGG16", output_stride=8)
    assert model.get_layer("block3_pool").strides == (2, 2)
    for pool in ("block4_pool", "block5_pool"):
        assert model.get_layer(pool).strides == (1, 1)
        assert model.get_layer(pool).padding == "same"
    for i in (1, 2, 3):
        assert model.get_layer(f"block4_conv{i}").dilation_rate == (1, 1)
        conv5 = model.get_layer(f"block5_conv{i}")
        assert conv5.dilation_rate == (2, 2) and isinstance(conv5, AtrousConv2D)
    features = model(np.zeros((1, 45, 67, 3), "float32"))
    assert tuple(features["stride32"].shape) == (1, 6, 9, 512)


def test_basic_resnet_weights_from_a_file(tmp_path):
    from frontends.resnet_basic import ResNet18

    source = ResNet18(input_shape=(None, None, 3))
    for layer in source.layers:  # non-trivial BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            stats = [rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)]
            layer.set_weights([gamma, beta, *stats])
    path = tmp_path / "resnet18.weights.h5"
    source.save_weights(path)
    model = build_frontend("ResNet18", weights=str(path))
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(model(x)["stride32"]), np.asarray(source(x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", ["ResNet18", "ResNet34"])
def test_basic_resnet_imagenet_is_a_clear_error(name):
    with pytest.raises(FrontendWeightsError) as info:
        build_frontend(name, weights="imagenet")
    message = str(info.value)
    assert "no ImageNet weights" in message and f"timm:{name.lower()}.tv_in1k" in message
    assert "semseg_suite.weights convert" in message and "--frontend-weights none" in message


def test_basic_resnet_auto_weights_fall_back(caplog):
    with caplog.at_level("WARNING", logger="semseg_suite"):
        model = build_frontend("ResNet18", weights="auto")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "random initialisation" in warnings[0].getMessage()
    assert isinstance(model, keras.Model)


# DenseNet-121/161/169/201 (frontends.densenet).

# name -> trainable parameters of torchvision's densenet without its classifier.
TORCHVISION_HEADLESS_DENSENETS = {
    "DenseNet121": 6_953_856,
    "DenseNet161": 26_472_000,
    "DenseNet169": 12_484_480,
    "DenseNet201": 18_092_928,
}


def _densenet_params(growth, blocks, stem):
    """Trainable parameters of a headless DenseNet-BC, from Huang et al. 2017, Sec. 3."""
    total = 7 * 7 * 3 * stem + 2 * stem  # stem conv (no bias) + BN
    channels = stem
    for stage, count in enumerate(blocks):
        for _ in range(count):
            # BN, 1x1 conv to 4k, BN, 3x3 conv to k.
            bottleneck = 4 * growth
            total += 2 * channels + channels * bottleneck + 2 * bottleneck + 9 * bottleneck * growth
            channels += growth
        if stage < 3:  # transition: BN, 1x1 conv to half
            total += 2 * channels + channels * (channels // 2)
            channels //= 2
    return total + 2 * channels  # final BN


def _densenet_case(name, output_stride):
    # The fast suite builds DenseNet-121 at every output stride and each other
    # DenseNet at one (161 at DenseASPP's 8); the other builds take several seconds each.
    if name == "DenseNet121" or (name, output_stride) in {("DenseNet161", 8), ("DenseNet169", 16), ("DenseNet201", 32)}:
        return (name, output_stride)
    return pytest.param(name, output_stride, marks=pytest.mark.slow)


@pytest.mark.parametrize(
    "name,output_stride",
    [_densenet_case(n, s) for n in TORCHVISION_HEADLESS_DENSENETS for s in (8, 16, 32)],
)
def test_densenet_frontend(name, output_stride):
    from frontends.densenet import CONFIGS

    growth, blocks, stem = CONFIGS[name]
    model = build_frontend(name, output_stride=output_stride)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    expected = TORCHVISION_HEADLESS_DENSENETS[name]
    assert trainable == _densenet_params(growth, blocks, stem) == expected
    widths = [stem, stem + blocks[0] * growth]
    for count in blocks[1:]:
        widths.append(widths[-1] // 2 + count * growth)
    for height, width in [(45, 67), (32, 33)]:
        features = model(np.zeros((1, height, width, 3), "float32"))
        for stride, channels in zip(frontends.STRIDES, widths):
            effective = min(stride, output_stride)
            expected = (1, math.ceil(height / effective), math.ceil(width / effective), channels)
            assert tuple(features[f"stride{stride}"].shape) == expected, (stride, height, width)
    # Transition pools past the output stride are removed; the others keep stride
    # 2 with same padding. Every 3x3 conv after a removed pool is dilated.
    for pool, stride in (("pool2_pool", 8), ("pool3_pool", 16), ("pool4_pool", 32)):
        layer = model.get_layer(pool)
        if stride > output_stride:
            assert isinstance(layer, keras.layers.Identity), pool
        else:
            assert isinstance(layer, keras.layers.AveragePooling2D), pool
            assert layer.strides == (2, 2) and layer.padding == "same"
    rates = {8: (1, 2, 4), 16: (1, 1, 2), 32: (1, 1, 1)}[output_stride]
    for stage, rate in zip((3, 4, 5), rates):
        convs = [layer for layer in model.layers if layer.name.startswith(f"conv{stage}_block")]
        three = [layer for layer in convs if layer.name.endswith("_2_conv")]
        one = [layer for layer in convs if layer.name.endswith("_1_conv")]
        assert len(three) == len(one) == blocks[stage - 2]
        assert all(layer.dilation_rate == (rate, rate) for layer in three), (stage, rate)
        assert all(isinstance(layer, AtrousConv2D) == (rate > 1) for layer in three)
        assert all(layer.dilation_rate == (1, 1) for layer in one)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.momentum == 0.9 for layer in norms)


def test_densenet161_with_top_has_torchvision_layout():
    from frontends.densenet import DenseNet161

    model = DenseNet161(include_top=True, classes=1000)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 28_681_000  # torchvision's densenet161, classifier included
    assert model.get_layer("conv1_conv").filters == 96
    assert model.get_layer("conv2_block1_1_conv").filters == 192  # bottleneck: 4 x growth
    assert model.get_layer("conv2_block1_2_conv").filters == 48  # growth
    assert model.get_layer("pool2_conv").filters == 192  # (96 + 6 * 48) / 2
    assert model.get_layer("conv5_block24_concat").output.shape[-1] == 2208
    assert model.output.shape == (None, 1000)


def test_densenet161_weights_from_a_file(tmp_path):
    from frontends.densenet import DenseNet161

    source = DenseNet161(input_shape=(None, None, 3))
    for layer in source.layers:  # non-trivial BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            stats = [rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)]
            layer.set_weights([gamma, beta, *stats])
    path = tmp_path / "densenet161.weights.h5"
    source.save_weights(path)
    model = build_frontend("DenseNet161", weights=str(path))
    # Even sizes: the same-padded transition pools equal the valid ones.
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(model(x)["stride32"]), np.asarray(source(x)), rtol=1e-4, atol=1e-4
    )


def test_densenet161_imagenet_is_a_clear_error():
    with pytest.raises(FrontendWeightsError) as info:
        build_frontend("DenseNet161", weights="imagenet")
    message = str(info.value)
    assert "no ImageNet weights" in message and "timm:densenet161.tv_in1k" in message
    assert "semseg_suite.weights convert" in message and "--frontend-weights none" in message
    assert FRONTENDS.get("DenseNet161").preprocessing == "torch"
    assert FRONTENDS.get("DenseNet121").preprocessing == "torch"
