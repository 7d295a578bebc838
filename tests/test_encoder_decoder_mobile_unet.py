"""Encoder-Decoder(-Skip) and MobileUNet(-Skip): the old suite's layout, skips,
kernel sizes, learning."""

import keras
import numpy as np
import pytest

from semseg_suite import build_model, layers
from tiny_task import assert_learned, fit_squares

# The old suite's widths, written out here rather than read from the builder.
ENCODER = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
DECODER = [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]
UPSAMPLE = [512, 512, 256, 128, 64]
# Decoder stage -> (its last block, the encoder stage whose pooled output it adds).
SKIPS = {1: (3, 4), 2: (3, 3), 3: (3, 2), 4: (2, 1)}


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _of_type(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


def _sources(layer):
    """Names of the layers feeding ``layer``'s first call."""
    return [t._keras_history.operation.name for t in layer._inbound_nodes[0].input_tensors]


def _check_upsampling(model):
    ups = _of_type(model, keras.layers.Conv2DTranspose)
    assert [u.filters for u in ups] == UPSAMPLE
    assert all(u.kernel_size == (3, 3) and u.strides == (2, 2) for u in ups)
    assert len(_of_type(model, keras.layers.MaxPooling2D)) == 5
    assert model.get_layer("logits_conv").kernel_size == (1, 1)
    assert model.get_layer("logits").dtype_policy.name == "float32"


@pytest.mark.parametrize("model_name", ["Encoder-Decoder", "Encoder-Decoder-Skip"])
def test_encoder_decoder_widths_and_conv_counts(model_name):
    model = build_model(model_name, num_classes=7)
    convs = [c for c in _of_type(model, keras.layers.Conv2D) if c.name != "logits_conv"]
    assert [c.filters for c in convs if c.name.startswith("enc")] == ENCODER
    assert [c.filters for c in convs if c.name.startswith("dec")] == DECODER
    assert len(convs) == 26 and all(c.kernel_size == (3, 3) for c in convs)
    assert model.get_layer("enc5_conv3_conv").filters == 512
    assert model.get_layer("dec4_conv2_conv").filters == 64
    # conv-BN-ReLU after every conv and transposed conv, no dropout by default.
    assert len(_of_type(model, layers.BatchNormalization)) == 26 + 5
    assert len(_of_type(model, keras.layers.ReLU)) == 26 + 5
    assert not _of_type(model, keras.layers.Dropout)
    assert not _of_type(model, keras.layers.DepthwiseConv2D)
    assert model.get_layer("logits_conv").filters == 7
    _check_upsampling(model)


def test_encoder_decoder_kernel_size_and_dropout_hyperparameters():
    model = build_model("Encoder-Decoder", num_classes=3, kernel_size=5, dropout=0.2)
    convs = [c for c in _of_type(model, keras.layers.Conv2D) if c.name != "logits_conv"]
    assert all(c.kernel_size == (5, 5) for c in convs)
    dropouts = _of_type(model, keras.layers.Dropout)
    assert len(dropouts) == 26 and all(d.rate == 0.2 for d in dropouts)
    assert _sources(model.get_layer("enc1_conv1_dropout")) == ["enc1_conv1_relu"]
    _check_upsampling(model)  # transposed convs stay 3x3


@pytest.mark.parametrize(
    "model_name,block_output",
    [
        ("Encoder-Decoder-Skip", "dec{}_conv{}_relu"),
        ("MobileUNet-Skip", "dec{}_conv{}_pointwise_relu"),
    ],
)
def test_skip_variants_add_the_pooled_encoder_features(model_name, block_output):
    model = build_model(model_name, num_classes=3)
    adds = _of_type(model, keras.layers.Add)
    assert [a.name for a in adds] == [f"dec{i}_skip_add" for i in SKIPS]
    for stage, (last_block, encoder_stage) in SKIPS.items():
        add = model.get_layer(f"dec{stage}_skip_add")
        assert _sources(add) == [block_output.format(stage, last_block), f"enc{encoder_stage}_pool"]
        # The upsampled tensor is resized to the tensor it is later added to.
        resize = model.get_layer(f"dec{stage}_upsample_resize")
        assert _sources(resize)[1] == f"enc{encoder_stage}_pool"
    assert [a.output.shape[-1] for a in adds] == [512, 256, 128, 64]
    # The last stage has no skip and is resized to the input.
    input_name = model.input._keras_history.operation.name
    assert _sources(model.get_layer("dec5_upsample_resize"))[1] == input_name
    # The decoder is really fed from the pooled encoder features: at 45x67 they
    # are 23x34, 12x17, 6x9, 3x5, and each skip sum has its encoder tensor's size.
    probe = keras.Model(
        model.input,
        [model.get_layer(f"dec{s}_skip_add").output for s in SKIPS]
        + [model.get_layer(f"enc{e}_pool").output for _, e in SKIPS.values()],
    )
    outputs = probe(np.zeros((1, 45, 67, 3), "float32"))
    sums, pooled = outputs[:4], outputs[4:]
    assert [tuple(p.shape[1:3]) for p in pooled] == [(3, 5), (6, 9), (12, 17), (23, 34)]
    assert [s.shape for s in sums] == [p.shape for p in pooled]


@pytest.mark.parametrize("base", ["Encoder-Decoder", "MobileUNet"])
def test_plain_variants_have_no_skips_and_the_same_weights(base):
    plain = build_model(base, num_classes=3)
    assert not _of_type(plain, keras.layers.Add)
    plain_params = plain.count_params()
    skip = build_model(f"{base}-Skip", num_classes=3)
    assert skip.count_params() == plain_params


@pytest.mark.parametrize("model_name", ["MobileUNet", "MobileUNet-Skip"])
def test_mobile_unet_is_separable_with_a_regular_first_conv(model_name):
    model = build_model(model_name, num_classes=3)
    regular = [c for c in _of_type(model, keras.layers.Conv2D) if c.kernel_size != (1, 1)]
    assert [c.name for c in regular] == ["enc1_conv1_conv"]
    assert regular[0].filters == 64 and regular[0].kernel_size == (3, 3)
    depthwise = _of_type(model, keras.layers.DepthwiseConv2D)
    assert len(depthwise) == 12 + 13
    assert all(d.kernel_size == (3, 3) and d.depth_multiplier == 1 for d in depthwise)
    pointwise = [c for c in _of_type(model, keras.layers.Conv2D) if "pointwise" in c.name]
    assert [c.filters for c in pointwise] == ENCODER[1:] + DECODER
    # Depthwise conv, BN, ReLU, then pointwise conv, BN, ReLU, in that order.
    assert _sources(model.get_layer("enc3_conv2_depthwise")) == ["enc3_conv1_pointwise_relu"]
    assert _sources(model.get_layer("enc3_conv2_depthwise_relu")) == ["enc3_conv2_depthwise_bn"]
    assert _sources(model.get_layer("enc3_conv2_pointwise_conv")) == ["enc3_conv2_depthwise_relu"]
    assert len(_of_type(model, layers.BatchNormalization)) == 1 + 2 * 25 + 5
    _check_upsampling(model)


def test_mobile_unet_honours_its_kernel_size():
    model = build_model("MobileUNet-Skip", num_classes=3, kernel_size=5)
    depthwise = _of_type(model, keras.layers.DepthwiseConv2D)
    assert len(depthwise) == 25 and all(d.kernel_size == (5, 5) for d in depthwise)
    assert model.get_layer("enc1_conv1_conv").kernel_size == (5, 5)
    pointwise = [c for c in _of_type(model, keras.layers.Conv2D) if "pointwise" in c.name]
    assert len(pointwise) == 25 and all(c.kernel_size == (1, 1) for c in pointwise)
    # Exactly the kernels grew: (25 - 9) weights per depthwise channel and per
    # first-conv input-output pair.
    channels = sum(d.kernel.shape[2] for d in depthwise)
    params_5x5 = model.count_params()
    keras.backend.clear_session()
    params_3x3 = build_model("MobileUNet-Skip", num_classes=3, kernel_size=3).count_params()
    assert params_5x5 - params_3x3 == 16 * (channels + 3 * 64)


def test_upsampled_tensors_match_the_encoder_at_odd_sizes():
    model = build_model("MobileUNet", num_classes=3, input_shape=(45, 67, 3))
    # Pooling rounds up (45 -> 23 -> 12 -> 6 -> 3 -> 2), so a 2x transposed conv
    # overshoots (2 -> 4) and is resized back to the encoder's 3 x 5.
    assert model.get_layer("enc5_pool").output.shape[1:3] == (2, 3)
    assert model.get_layer("dec1_upsample_relu").output.shape[1:3] == (4, 6)
    assert model.get_layer("dec1_upsample_resize").output.shape[1:3] == (3, 5)
    assert model.get_layer("dec5_upsample_resize").output.shape[1:3] == (45, 67)
    assert isinstance(model.get_layer("logits"), layers.ResizeLike)
    assert model.output.shape == (None, 45, 67, 3)


@pytest.mark.slow
def test_mobile_unet_skip_learns_the_tiny_task():
    keras.utils.set_random_seed(0)
    model = build_model("MobileUNet-Skip", num_classes=2, input_shape=(64, 64, 3))
    assert_learned(fit_squares(model, steps=60, learning_rate=2e-3, batch_size=4))
