"""SegNet, SegNet-Basic and ENet: layer structure from the papers, unpooling, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from builders.enet import ChannelZeroPadding
from semseg_suite import build_model, layers
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


def _of_type(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


def test_segnet_is_vgg16_encoder_and_mirrored_decoder():
    model = build_model("SegNet", num_classes=11)
    convs = _of_type(model, keras.layers.Conv2D)
    assert len(convs) == 27  # 13 encoder + 13 decoder + 1x1 classifier
    assert len(_of_type(model, layers.BatchNormalization)) == 26
    assert len(_of_type(model, keras.layers.ReLU)) == 26
    assert not _of_type(model, keras.layers.Dense)
    encoder = [c.filters for c in convs if c.name.startswith("enc")]
    assert encoder == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    decoder = [c.filters for c in convs if c.name.startswith("dec")]
    assert decoder == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1])
    assert convs[-1].name == "logits_conv" and convs[-1].kernel_size == (1, 1)
    assert convs[-1].filters == 11
    assert model.get_layer("logits").dtype_policy.name == "float32"


@pytest.mark.parametrize("model_name", ["SegNet", "SegNet-Basic"])
def test_unpooling_uses_the_matching_pooling_indices(model_name):
    model = build_model(model_name, num_classes=3)
    prepool = "enc{}_conv{}_relu" if model_name == "SegNet" else "enc{}_relu"
    pools = _of_type(model, layers.MaxPoolingWithArgmax2D)
    unpools = _of_type(model, layers.MaxUnpooling2D)
    stages = 5 if model_name == "SegNet" else 4
    assert len(pools) == len(unpools) == stages
    last_conv = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    for stage in range(1, stages + 1):
        _, indices, reference = _sources(model.get_layer(f"dec{stage}_unpool"))
        assert indices == (f"enc{stage}_pool", 1)
        expected = prepool.format(stage, last_conv[stage])
        assert reference == (expected, 0)
        assert _sources(model.get_layer(f"enc{stage}_pool")) == [(expected, 0)]
    # Deepest decoder first: the first unpooling takes the last pooling's output.
    assert _sources(model.get_layer(f"dec{stages}_unpool"))[0] == (f"enc{stages}_pool", 0)


def test_segnet_basic_layout():
    model = build_model("SegNet-Basic", num_classes=11)
    convs = _of_type(model, keras.layers.Conv2D)
    assert [c.name for c in convs] == [f"enc{i}_conv" for i in (1, 2, 3, 4)] + [
        f"dec{i}_conv" for i in (4, 3, 2, 1)
    ] + ["logits_conv"]
    for conv in convs[:-1]:
        assert (conv.filters, conv.kernel_size, conv.use_bias) == (64, (7, 7), False)
    assert len(_of_type(model, layers.BatchNormalization)) == 8
    # ReLU in the encoder only: the paper's decoder has none.
    relus = [r.name for r in _of_type(model, keras.layers.ReLU)]
    assert relus == [f"enc{i}_relu" for i in (1, 2, 3, 4)]
    for stage in (1, 2, 3, 4):
        assert _sources(model.get_layer(f"dec{stage}_conv")) == [(f"dec{stage}_unpool", 0)]


def test_gradients_flow_through_unpooling_to_the_first_encoder_conv():
    keras.utils.set_random_seed(0)
    model = build_model("SegNet-Basic", num_classes=2)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 48, 40, 3)).astype("float32")
    labels = rng.integers(0, 2, (2, 48, 40))
    kernel = model.get_layer("enc1_conv").kernel
    before = np.array(kernel)
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = tf.reduce_mean(loss)
    gradients = tape.gradient(loss, model.trainable_variables)
    grads = dict(zip([v.path for v in model.trainable_variables], gradients))
    first = grads[kernel.path]
    assert np.isfinite(first).all() and np.abs(first).max() > 0
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    assert np.abs(np.array(kernel) - before).max() > 0


def test_enet_initial_block_has_16_channels_for_any_input():
    for channels, filters in [(3, 13), (1, 15)]:
        model = build_model("ENet", num_classes=4, input_shape=(None, None, channels))
        conv = model.get_layer("initial_conv")
        assert (conv.filters, conv.kernel_size, conv.strides) == (filters, (3, 3), (2, 2))
        assert model.get_layer("initial_pool").pool_size == (2, 2)
        assert model.get_layer("initial_concat").output.shape[-1] == 16
        logits = model(np.zeros((1, 45, 67, channels), "float32"))
        assert tuple(logits.shape) == (1, 45, 67, 4)
        keras.backend.clear_session()


def test_enet_stage_layout():
    model = build_model("ENet", num_classes=12)
    expand = [l for l in model.layers if l.name.endswith("_expand_conv")]
    widths = [(l.name.removesuffix("_expand_conv"), l.filters) for l in expand]
    assert widths == (
        [("bottleneck1_0", 64)] + [(f"bottleneck1_{i}", 64) for i in range(1, 5)]
        + [(f"bottleneck2_{i}", 128) for i in range(9)]
        + [(f"bottleneck3_{i}", 128) for i in range(1, 9)]
        + [(f"bottleneck4_{i}", 64) for i in range(3)]
        + [(f"bottleneck5_{i}", 16) for i in range(2)]
    )
    # Projections to a quarter of the output; 2x2 stride-2 when downsampling.
    for name, filters in widths:
        assert model.get_layer(f"{name}_reduce_conv").filters == filters // 4
    for name in ("bottleneck1_0", "bottleneck2_0"):
        reduce = model.get_layer(f"{name}_reduce_conv")
        assert (reduce.kernel_size, reduce.strides) == ((2, 2), (2, 2))
    for i in range(1, 5):
        conv = model.get_layer(f"bottleneck1_{i}_conv")
        assert (conv.kernel_size, conv.dilation_rate) == ((3, 3), (1, 1))
    for stage in (2, 3):
        seen = []
        for i in range(1, 9):
            conv = model.get_layer(f"bottleneck{stage}_{i}_conv")
            if conv.kernel_size == (1, 5):
                assert model.get_layer(f"bottleneck{stage}_{i}_conv_a").kernel_size == (5, 1)
                assert _sources(conv) == [(f"bottleneck{stage}_{i}_conv_a", 0)]
                seen.append("asym5")
            else:
                assert conv.kernel_size == (3, 3)
                rate = conv.dilation_rate[0]
                assert isinstance(conv, layers.AtrousConv2D) == (rate > 1)
                seen.append(f"dil{rate}" if rate > 1 else "reg")
        assert seen == ["reg", "dil2", "asym5", "dil4", "reg", "dil8", "asym5", "dil16"]
    assert not any(l.name.startswith("bottleneck3_0") for l in model.layers)
    fullconv = model.get_layer("fullconv")
    assert isinstance(fullconv, keras.layers.Conv2DTranspose)
    assert (fullconv.filters, fullconv.kernel_size, fullconv.strides) == (12, (2, 2), (2, 2))


def test_enet_dropout_and_activations():
    model = build_model("ENet", num_classes=3)
    dropouts = _of_type(model, keras.layers.SpatialDropout2D)
    assert len(dropouts) == 27
    for layer in dropouts:
        expected = 0.01 if layer.name.startswith("bottleneck1_") else 0.1
        assert layer.rate == expected, layer.name
    prelus = _of_type(model, keras.layers.PReLU)
    relus = _of_type(model, keras.layers.ReLU)
    assert prelus and relus
    assert all(not l.name.startswith(("bottleneck4", "bottleneck5")) for l in prelus)
    assert all(l.name.startswith(("bottleneck4", "bottleneck5")) for l in relus)
    for layer in prelus:  # one slope per channel
        assert layer.shared_axes == [1, 2]
        assert tuple(layer.alpha.shape) == (1, 1, layer.output.shape[-1])
    # 1 initial + 3 per encoder bottleneck (22 of them).
    assert len(prelus) == 1 + 3 * 22


def test_enet_downsampling_shortcut_and_unpooling_indices():
    model = build_model("ENet", num_classes=3)
    shortcuts = [("bottleneck1_0", 64, "initial_act"), ("bottleneck2_0", 128, "bottleneck1_4_act")]
    for name, channels, prepool in shortcuts:
        assert _sources(model.get_layer(f"{name}_pool")) == [(prepool, 0)]
        assert model.get_layer(f"{name}_pad").channels == channels
        assert _sources(model.get_layer(f"{name}_add"))[0] == (f"{name}_pad", 0)
    upsamplings = [("bottleneck4_0", "bottleneck2_0", 64), ("bottleneck5_0", "bottleneck1_0", 16)]
    for up, down, channels in upsamplings:
        main, indices, reference = _sources(model.get_layer(f"{up}_unpool"))
        assert main == (f"{up}_main_bn", 0)
        assert indices == (f"{down}_pool", 1)
        assert reference == _sources(model.get_layer(f"{down}_pool"))[0]
        assert model.get_layer(f"{up}_main_conv").filters == channels
        deconv = model.get_layer(f"{up}_conv")
        assert isinstance(deconv, keras.layers.Conv2DTranspose)
        assert (deconv.kernel_size, deconv.strides) == ((3, 3), (2, 2))


def test_channel_zero_padding():
    layer = ChannelZeroPadding(5)
    x = np.arange(12, dtype="float32").reshape(1, 2, 2, 3)
    y = np.asarray(layer(x))
    np.testing.assert_array_equal(y[..., :3], x)
    np.testing.assert_array_equal(y[..., 3:], 0)
    assert ChannelZeroPadding.from_config(layer.get_config()).channels == 5


@pytest.mark.kernels  # dilated bottlenecks: the test that failed without oneDNN
def test_enet_learns_a_tiny_task():
    keras.utils.set_random_seed(0)
    model = build_model("ENet", num_classes=2)
    scores = fit_squares(model, steps=100, learning_rate=5e-3)
    assert_learned(scores)
    assert scores["iou"][1] > 0.7, scores
