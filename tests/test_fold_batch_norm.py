"""Batch-norm folding (``export.fold_batch_norm``): which pairs fold, the folded
weights against the formula, equal logits on registry models, and `Segmenter`."""

import keras
import numpy as np
import pytest

import semseg_suite
from semseg_suite import export, inference
from semseg_suite.export.folding import foldable_pairs
from semseg_suite.layers import AtrousConv2D

# The formula's float32 rounding stays far below this on logits of magnitude ~1.
MAX_ABS, MAX_RELATIVE = 1e-4, 1e-4
FOLDED = ("c1", "c2", "sep", "dw", "atrous", "up")  # convs of `hand_built` whose BN folds
UNFOLDABLE = {"bn_shared", "bn_add", "bn_act"}  # its BNs that stay (see `hand_built`)


def hand_built() -> keras.Model:
    """Every foldable kind of pair, and three BNs that must stay: after a conv that
    an add also reads, after the add, after a conv with its own activation."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn_c1")(x))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(scale=False, name="bn_c2")(x))
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = keras.layers.BatchNormalization(name="bn_sep")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn_dw")(x)
    shared = keras.layers.Conv2D(16, 1, name="shared")(x)
    x = keras.layers.Add()([shared, keras.layers.BatchNormalization(name="bn_shared")(shared)])
    x = keras.layers.BatchNormalization(name="bn_add")(x)
    x = AtrousConv2D(8, 3, padding="same", dilation_rate=2, name="atrous")(x)
    x = keras.layers.BatchNormalization(center=False, name="bn_atrous")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="act")(x)
    x = keras.layers.BatchNormalization(name="bn_act")(x)
    x = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    x = keras.layers.BatchNormalization(name="bn_up")(x)
    return keras.Model(inputs, keras.layers.Conv2D(5, 1, name="logits")(x), name="hand_built")


def randomise_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine weights (moving variance in [0.5, 2]),
    mild enough that logits stay of magnitude ~1 through deep models."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.0, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.2, n))


def batch_norms(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def assert_same_logits(expected: np.ndarray, actual: np.ndarray) -> float:
    """Max abs difference below MAX_ABS and below MAX_RELATIVE of the logits' size;
    returns it."""
    difference = float(np.abs(actual - expected).max())
    magnitude = float(np.abs(expected).max())
    assert magnitude > 0.1, "logits too small for the comparison to mean anything"
    assert difference < MAX_ABS, difference
    assert difference < MAX_RELATIVE * magnitude, (difference, magnitude)
    return difference


def scaled_kernel(conv):
    """The kernel whose output channels folding scales."""
    return conv.pointwise_kernel if isinstance(conv, keras.layers.SeparableConv2D) else conv.kernel


def reference_fold(conv, bn):
    """The folded (kernel, bias) by the formula, one output channel at a time."""
    gamma = bn.gamma.numpy() if bn.scale else np.ones(bn.moving_mean.shape)
    beta = bn.beta.numpy() if bn.center else np.zeros(bn.moving_mean.shape)
    scale = gamma.astype(np.float64) / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    bias = conv.bias.numpy() if conv.use_bias else np.zeros(scale.shape)
    folded_bias = (bias - bn.moving_mean.numpy()) * scale + beta
    kernel = scaled_kernel(conv).numpy().astype(np.float64)
    folded = kernel.copy()
    for channel in range(scale.size):
        if isinstance(conv, keras.layers.DepthwiseConv2D):
            multiplier = kernel.shape[3]
            folded[:, :, channel // multiplier, channel % multiplier] *= scale[channel]
        elif isinstance(conv, keras.layers.Conv2DTranspose):
            folded[:, :, channel, :] *= scale[channel]
        else:
            folded[..., channel] *= scale[channel]
    return folded, folded_bias


def test_hand_built_model_folds_exactly_the_foldable_pairs():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = hand_built()
    randomise_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(2, 40, 52, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))

    folded = export.fold_batch_norm(model)

    assert set(batch_norms(folded)) == UNFOLDABLE
    assert [layer.name for layer in folded.layers] == [layer.name for layer in model.layers]
    assert_same_logits(expected, np.asarray(folded(x, training=False)))
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), expected)  # the original is untouched
    for name in FOLDED:
        conv, new = model.get_layer(name), folded.get_layer(name)
        assert type(new) is type(conv) and new.use_bias, name
        kernel, bias = reference_fold(conv, model.get_layer(f"bn_{name}"))
        assert np.abs(kernel - scaled_kernel(conv).numpy()).max() > 1e-2, name  # the BN changes it
        np.testing.assert_allclose(scaled_kernel(new).numpy(), kernel, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(new.bias.numpy(), bias, rtol=1e-6, atol=1e-7, err_msg=name)
        assert isinstance(folded.get_layer(f"bn_{name}"), keras.layers.Identity), name
    np.testing.assert_array_equal(folded.get_layer("sep").depthwise_kernel.numpy(),
                                  model.get_layer("sep").depthwise_kernel.numpy())
    changed = {*FOLDED, *(f"bn_{name}" for name in FOLDED)}
    for layer in model.layers:  # every other layer: the same weights, copied, not shared
        if layer.name not in changed and layer.weights:
            new = folded.get_layer(layer.name)
            for old_weight, new_weight in zip(layer.weights, new.weights, strict=True):
                assert new_weight is not old_weight
                np.testing.assert_array_equal(new_weight.numpy(), old_weight.numpy(), err_msg=layer.name)


def test_nested_sub_models_fold_inside():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inner = hand_built()
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(5, 1, name="post")(inner(inputs))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_post")(x))
    randomise_batch_norms(inner)
    randomise_batch_norms(model, seed=1)
    x = np.random.default_rng(1).normal(size=(1, 40, 52, 3)).astype("float32")

    folded = export.fold_batch_norm(model)

    assert batch_norms(folded) == [] and set(batch_norms(folded.get_layer("hand_built"))) == UNFOLDABLE
    assert_same_logits(np.asarray(model(x, training=False)), np.asarray(folded(x, training=False)))


def test_nothing_to_fold_returns_the_same_model():
    keras.backend.clear_session()
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    plain = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    assert export.fold_batch_norm(plain) is plain
    # a conv whose output is also a model output keeps its BN
    y = keras.layers.Conv2D(4, 3, name="conv2")(inputs)
    two_outputs = keras.Model(inputs, [y, keras.layers.BatchNormalization(name="bn2")(y)])
    assert export.fold_batch_norm(two_outputs) is two_outputs


REGISTRY = [
    ("DeepLabV3_plus", "MobileNetV2", False),
    ("ENet", None, False),
    ("BiSeNet", None, True),  # auxiliary heads: a dict output, restricted to the main logits
]


@pytest.mark.parametrize("model_name,frontend,auxiliary", REGISTRY)
def test_registry_models_give_the_same_logits(model_name, frontend, auxiliary):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model(model_name, frontend, num_classes=5, auxiliary=auxiliary,
                                     frontend_weights=None)
    assert isinstance(model.output, dict) == auxiliary
    randomise_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(1, 67, 93, 3)).astype("float32")
    expected = np.asarray(export.inference_model(model)(x, training=False))

    folded = export.fold_batch_norm(model)

    assert len(batch_norms(folded)) < len(batch_norms(model))
    assert foldable_pairs(folded) == {}
    assert_same_logits(expected, np.asarray(folded(x, training=False)))


def test_segmenter_runs_the_folded_model():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("ENet", num_classes=4)
    randomise_batch_norms(model, seed=2)
    metadata = {"class_names": list("abcd"), "colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
                "preprocessing": semseg_suite.preprocessing_mode(None)}

    segmenter = inference.Segmenter(model, metadata)

    assert foldable_pairs(segmenter.model) == {}
    assert len(batch_norms(segmenter.model)) < len(batch_norms(model))
    image = np.random.default_rng(3).integers(0, 256, size=(67, 93, 3), dtype=np.uint8)
    logits = np.asarray(model(segmenter.normalise(image), training=False))[0]
    ids = segmenter.predict(image)
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # pixels whose argmax rounding cannot flip
    assert clear.mean() > 0.99
    assert len(np.unique(ids)) > 1
    np.testing.assert_array_equal(ids[clear], np.argmax(logits, axis=-1)[clear])
