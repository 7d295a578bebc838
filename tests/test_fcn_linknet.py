"""FCN-32s/16s/8s and LinkNet: bilinear upsampling, skips, decoder widths, learning."""

import keras
import numpy as np
import pytest

from builders.fcn import BilinearUpsampling, bilinear_kernel
from semseg_suite.layers import CropLike
from semseg_suite import build_model
from tiny_task import assert_learned, fit_squares


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _parent(model, layer_name, index=0):
    """Name of the layer feeding input ``index`` of ``layer_name``."""
    return model.get_layer(layer_name)._inbound_nodes[0].parent_nodes[index].operation.name


def _hat_upsample(x, factor):
    """NumPy reference: each channel interpolated bilinearly by ``factor``.

    Output pixel ``j`` sits at ``(j + 0.5) / factor - 0.5`` in input coordinates
    (half-pixel centres) and takes ``x[i] * max(0, 1 - |position - i|)`` from each
    input pixel ``i``; pixels outside the input count as zero.
    """
    out = x
    for axis in (1, 2):
        size = out.shape[axis]
        positions = (np.arange(size * factor) + 0.5) / factor - 0.5
        weights = np.maximum(0.0, 1.0 - np.abs(positions[:, None] - np.arange(size)[None, :]))
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return out


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_initializer_interpolates(factor):
    rng = np.random.default_rng(factor)
    x = rng.normal(size=(2, 5, 7, 3)).astype("float32")
    layer = keras.layers.Conv2DTranspose(
        3, 2 * factor, strides=factor, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(),
    )
    got = np.asarray(layer(x))
    assert got.shape == (2, 5 * factor, 7 * factor, 3)
    np.testing.assert_allclose(got, _hat_upsample(x, factor), atol=1e-5)
    # A linear ramp is reproduced exactly between the outermost pixel centres.
    rows, cols = np.meshgrid(np.arange(5.0), np.arange(7.0), indexing="ij")
    ramp = np.repeat((2.0 * rows - 3.0 * cols + 1.0)[None, :, :, None], 3, axis=-1)
    up = np.asarray(layer(ramp.astype("float32")))[0, :, :, 1]
    centre_r = (np.arange(5 * factor) + 0.5) / factor - 0.5
    centre_c = (np.arange(7 * factor) + 0.5) / factor - 0.5
    inside = np.ix_((centre_r >= 0) & (centre_r <= 4), (centre_c >= 0) & (centre_c <= 6))
    expected = 2.0 * centre_r[:, None] - 3.0 * centre_c[None, :] + 1.0
    np.testing.assert_allclose(up[inside], expected[inside], atol=1e-4)


def test_bilinear_kernel_is_fcn_upsample_filt_and_serialisable():
    np.testing.assert_allclose(bilinear_kernel(4)[0], [0.0625, 0.1875, 0.1875, 0.0625])
    kernel = np.asarray(BilinearUpsampling()((4, 4, 3, 3)))
    assert np.count_nonzero(kernel[:, :, 0, 1]) == 0  # channels are not mixed
    np.testing.assert_allclose(kernel[:, :, 2, 2], bilinear_kernel(4))
    restored = keras.initializers.deserialize(keras.initializers.serialize(BilinearUpsampling()))
    assert isinstance(restored, BilinearUpsampling)


def test_crop_like_keeps_the_top_left():
    x = np.arange(2 * 6 * 8 * 1, dtype="float32").reshape(2, 6, 8, 1)
    got = CropLike()([x, np.zeros((2, 5, 7, 4), "float32")])
    np.testing.assert_array_equal(np.asarray(got), x[:, :5, :7])


def test_fcn8s_on_vgg16_follows_the_paper():
    model = build_model("FCN-8s", num_classes=21, input_shape=(64, 64, 3))
    assert model.name == "FCN-8s_VGG16"
    fc6, fc7 = model.get_layer("fc6"), model.get_layer("fc7")
    assert fc6.kernel_size == (7, 7) and fc6.filters == 4096 and fc6.padding == "same"
    assert fc7.kernel_size == (1, 1) and fc7.filters == 4096
    assert model.get_layer("fc6_dropout").rate == model.get_layer("fc7_dropout").rate == 0.5
    # Skips from pool4 and pool3, fused by addition.
    assert _parent(model, "score_pool4") == "block4_pool"
    assert _parent(model, "score_pool3") == "block3_pool"
    assert _parent(model, "fuse_pool4", 1) == "score_pool4"
    assert _parent(model, "fuse_pool3", 1) == "score_pool3"
    for name in ("upscore2", "upscore_pool4"):
        layer = model.get_layer(name)
        assert layer.kernel_size == (4, 4) and layer.strides == (2, 2) and layer.trainable
    final = model.get_layer("upscore8")
    assert final.kernel_size == (16, 16) and final.strides == (8, 8) and not final.trainable
    assert final.use_bias is False
    # Zero-initialised scores: the untrained net predicts zeros everywhere.
    logits = model(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32"))
    assert tuple(logits.shape) == (1, 64, 64, 21) and not np.any(np.asarray(logits))


@pytest.mark.parametrize(
    "model_name,skips,final", [("FCN-32s", (), (64, 32)), ("FCN-16s", ("pool4",), (32, 16))]
)
def test_fcn_variants(model_name, skips, final):
    model = build_model(model_name, "VGG16", num_classes=3, fc_filters=64)
    names = {layer.name for layer in model.layers}
    assert {f"score_{pool}" for pool in ("pool3", "pool4") if f"score_{pool}" in names} == {
        f"score_{pool}" for pool in skips
    }
    layer = model.get_layer(f"upscore{final[1]}")
    assert (layer.kernel_size[0], layer.strides[0]) == final
    assert tuple(model(np.zeros((1, 45, 67, 3), "float32")).shape) == (1, 45, 67, 3)


def test_fcn_on_another_frontend_has_no_fc_layers_and_dilates_them_when_asked():
    model = build_model("FCN-8s", "ResNet18", num_classes=3)
    names = {layer.name for layer in model.layers}
    assert "fc6" not in names and _parent(model, "score_fr") == "conv5_block2_out"
    assert _parent(model, "score_pool4") == "conv4_block2_out"
    keras.backend.clear_session()
    # Output stride 8: stride8..stride32 share a resolution, so no 2x steps.
    model = build_model("FCN-8s", "ResNet18", num_classes=3, output_stride=8, fc_filters=32)
    names = {layer.name for layer in model.layers}
    assert "upscore2" not in names and "upscore_pool4" not in names
    assert model.get_layer("fc6").dilation_rate == (4, 4)
    assert model.get_layer("upscore8").strides == (8, 8)
    assert tuple(model(np.zeros((1, 45, 67, 3), "float32")).shape) == (1, 45, 67, 3)


def _conv_widths(model, block):
    return (
        model.get_layer(f"{block}_conv1_conv").filters,
        model.get_layer(f"{block}_fullconv").filters,
        model.get_layer(f"{block}_conv2_conv").filters,
    )


def test_linknet_decoder_follows_the_paper():
    model = build_model("LinkNet", num_classes=11)
    assert model.name == "LinkNet_ResNet18"
    # (m/4, m/4, n) for decoders 4..1: 512->256, 256->128, 128->64, 64->64.
    assert [_conv_widths(model, f"decoder{i}") for i in (4, 3, 2, 1)] == [
        (128, 128, 256), (64, 64, 128), (32, 32, 64), (16, 16, 64),
    ]
    assert [model.get_layer(f"decoder{i}_fullconv").strides for i in (4, 3, 2, 1)] == [
        (2, 2), (2, 2), (2, 2), (1, 1),
    ]
    assert model.get_layer("decoder4_fullconv").kernel_size == (3, 3)
    for index in (4, 3, 2):
        encoder = f"conv{index}_block2_out"  # ResNet-18's stage feeding encoder block i
        assert _parent(model, f"decoder{index}_add", 1) == encoder
    assert _parent(model, "decoder1_conv1_conv") == "decoder2_add"
    # Decoder 1's output is added to encoder block 1's input, the stem's max-pool
    # (the paper's Fig. 1, the authors' model.lua), and feeds the head.
    assert _parent(model, "decoder1_add", 0) == "decoder1_conv2_relu"
    assert _parent(model, "decoder1_add", 1) == "pool1_pool"
    assert _parent(model, "head_fullconv1") == "decoder1_add"
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert [name for name in adds if name.startswith("decoder")] == [
        "decoder4_add", "decoder3_add", "decoder2_add", "decoder1_add",
    ]
    # Odd sizes: pool1 is ceil(H / 4) x ceil(W / 4), as decoder 1's output.
    x = np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32")
    probe = keras.Model(model.input, model.get_layer("decoder1_add").output)
    assert tuple(probe(x).shape) == (1, 12, 17, 64)
    assert tuple(model(x).shape) == (1, 45, 67, 11)
    head1, head2 = model.get_layer("head_fullconv1"), model.get_layer("head_fullconv2")
    assert (head1.filters, head1.kernel_size, head1.strides) == (32, (3, 3), (2, 2))
    assert model.get_layer("head_conv_conv").kernel_size == (3, 3)
    assert (head2.filters, head2.kernel_size, head2.strides) == (11, (2, 2), (2, 2))
    assert abs(model.count_params() - 11.5e6) / 11.5e6 < 0.01


def test_linknet_decoder1_bypass_on_resnet50_maps_to_the_pool1_width():
    model = build_model("LinkNet", "ResNet50", num_classes=3)
    # conv2_block3_out (256 channels) in, pool1_pool (64) out and added.
    assert _conv_widths(model, "decoder1") == (64, 64, 64)
    assert _parent(model, "decoder1_add", 1) == "pool1_pool"
    assert tuple(model(np.zeros((1, 45, 67, 3), "float32")).shape) == (1, 45, 67, 3)


def test_linknet_on_mobilenet_follows_its_widths():
    model = build_model("LinkNet", "MobileNetV2", num_classes=4, output_stride=16)
    # stride32: 320, stride16: 576, stride8: 192, stride4: 144 channels.
    assert [_conv_widths(model, f"decoder{i}") for i in (4, 3, 2, 1)] == [
        (80, 80, 576), (144, 144, 192), (48, 48, 144), (36, 36, 144),
    ]
    # No stem max-pool in MobileNetV2: decoder 1 has no bypass.
    assert not any(layer.name == "decoder1_add" for layer in model.layers)
    assert _parent(model, "head_fullconv1") == "decoder1_conv2_relu"
    assert model.get_layer("decoder4_fullconv").strides == (1, 1)  # same resolution at OS 16
    logits = model(np.random.default_rng(0).normal(size=(2, 45, 67, 3)).astype("float32"))
    assert tuple(logits.shape) == (2, 45, 67, 4) and logits.dtype == "float32"
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.slow
@pytest.mark.parametrize("model_name,frontend", [("LinkNet", None), ("FCN-8s", "ResNet18")])
def test_learns_the_tiny_task(model_name, frontend):
    model = build_model(model_name, frontend, num_classes=2)
    assert_learned(fit_squares(model, steps=150))
