"""DeepLab v2 (ASPP-L, LargeFOV) and the SPP head: branches, rates, widths, summing, learning."""

import keras
import numpy as np
import pytest

from builders.deeplabv2 import ASPP_L_RATES
from semseg_suite import build_model
from semseg_suite.layers import AdaptiveMaxPooling2D
from tiny_task import assert_learned, fit_squares
from zoo import parents


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _params(model, prefix):
    return sum(int(np.prod(w.shape)) for layer in model.layers if layer.name.startswith(prefix) for w in layer.weights)


def _stride8_size(model, image_shape):
    """Spatial size of the head's input for one image."""
    features = keras.Model(model.input, model.get_layer(parents(model, "aspp_branch0_conv")[0]).output)
    return tuple(features(np.zeros((1, *image_shape, 3), "float32")).shape[1:3])


def test_aspp_l_on_resnet_sums_four_atrous_convs_straight_to_the_classes():
    model = build_model("DeepLabV2-ASPP", "ResNet18", num_classes=5)
    convs = [model.get_layer(f"aspp_branch{i}_conv") for i in range(4)]
    assert [conv.dilation_rate for conv in convs] == [(r, r) for r in ASPP_L_RATES] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(conv.kernel_size == (3, 3) and conv.filters == 5 and conv.use_bias for conv in convs)
    assert parents(model, "aspp_sum") == [f"aspp_branch{i}_conv" for i in range(4)]
    assert isinstance(model.get_layer("aspp_sum"), keras.layers.Add)
    # the whole head: four 3x3 convs from 512 channels (ResNet18's last stage), nothing else
    assert _params(model, "aspp") == 4 * (9 * 512 * 5 + 5)
    assert not [layer for layer in model.layers if layer.name.startswith("aspp") and "bn" in layer.name]
    assert _stride8_size(model, (64, 96)) == (8, 12)  # output stride 8
    for shape in ((1, 64, 64, 3), (1, 67, 93, 3)):
        logits = model(np.random.default_rng(0).normal(size=shape).astype("float32"))
        assert tuple(logits.shape) == (*shape[:3], 5) and np.isfinite(logits).all()


def test_aspp_l_on_vgg16_has_an_fc6_fc7_fc8_branch_per_rate():
    model = build_model("DeepLabV2-ASPP", "VGG16", num_classes=3)
    for index, rate in enumerate(ASPP_L_RATES):
        fc6, fc7, fc8 = (model.get_layer(f"aspp_branch{index}_fc{n}") for n in (6, 7, 8))
        assert (fc6.kernel_size, fc6.dilation_rate, fc6.filters) == ((3, 3), (rate, rate), 1024)
        assert (fc7.kernel_size, fc7.dilation_rate, fc7.filters) == ((1, 1), (1, 1), 1024)
        assert (fc8.kernel_size, fc8.filters) == ((1, 1), 3)
        for n in (6, 7):
            assert model.get_layer(f"aspp_branch{index}_fc{n}_dropout").rate == 0.5
    branch = (9 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 3 + 3)
    assert _params(model, "aspp") == 4 * branch
    assert parents(model, "aspp_sum") == [f"aspp_branch{i}_fc8" for i in range(4)]


def test_large_fov_is_one_fc6_at_rate_12_with_1024_channels():
    model = build_model("DeepLabV2-LargeFOV", num_classes=21, frontend_weights=None)
    fc6, fc7, fc8 = (model.get_layer(f"largefov_fc{n}") for n in (6, 7, 8))
    assert (fc6.kernel_size, fc6.dilation_rate, fc6.filters) == ((3, 3), (12, 12), 1024)
    assert (fc7.kernel_size, fc7.filters, fc8.filters) == ((1, 1), 1024, 21)
    assert _params(model, "largefov") == (9 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)
    # VGG16 at output stride 8: fc6 sees a stride-8 map
    features = keras.Model(model.input, model.get_layer(parents(model, "largefov_fc6")[0]).output)
    assert tuple(features(np.zeros((1, 64, 80, 3), "float32")).shape[1:3]) == (8, 10)
    assert tuple(model(np.zeros((1, 67, 93, 3), "float32")).shape) == (1, 67, 93, 21)


def test_spp_head_max_pools_into_1_2_4_bins_and_fuses_them_with_the_features():
    model = build_model("SPPNet", "ResNet18", num_classes=4)
    for bins in (1, 2, 4):
        pool = model.get_layer(f"spp_pool{bins}")
        assert isinstance(pool, AdaptiveMaxPooling2D)
        assert model.get_layer(f"spp_bin{bins}_conv").filters == 512 // 3
    assert [name for name in parents(model, "spp_concat")] == [
        parents(model, "spp_pool1")[0], "spp_bin1_resize", "spp_bin2_resize", "spp_bin4_resize"]
    # each of the 4x4 bins is the max over its window (PyTorch's adaptive rule), by NumPy
    inner = keras.Model(model.input, [model.get_layer(parents(model, "spp_pool4")[0]).output,
                                      model.get_layer("spp_pool4").output])
    features, pooled = (t.numpy() for t in inner(np.random.default_rng(1).normal(size=(1, 96, 128, 3)).astype("float32")))
    assert features.shape[1:3] == (6, 8)
    rows, cols = [(i * 6 // 4, -(-(i + 1) * 6 // 4)) for i in range(4)], [(j * 2, j * 2 + 2) for j in range(4)]
    by_numpy = np.array([[features[0, r0:r1, c0:c1].max((0, 1)) for c0, c1 in cols] for r0, r1 in rows])
    np.testing.assert_allclose(pooled[0], by_numpy, rtol=1e-6)
    for shape in ((1, 64, 64, 3), (1, 67, 93, 3)):
        assert tuple(model(np.zeros(shape, "float32")).shape) == (*shape[:3], 4)


@pytest.mark.slow
def test_sppnet_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    assert_learned(fit_squares(build_model("SPPNet", "ResNet18", num_classes=2, output_stride=8), steps=120))


@pytest.mark.slow
def test_deeplabv2_aspp_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    assert_learned(fit_squares(build_model("DeepLabV2-ASPP", "ResNet18", num_classes=2), steps=150))
