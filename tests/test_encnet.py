"""EncNet: the encoding layer and the semantic-encoding loss against NumPy, the head's wiring, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import semseg_suite
from semseg_suite import data, losses
from semseg_suite.layers import Encoding
from tiny_task import assert_learned, fit_squares

IGNORE = data.IGNORE_INDEX


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def numpy_encoding(x, centers, smoothing):
    """The paper's Eq. 1-2, literally: residuals, softmax assignments, weighted sums."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1]).astype(np.float64)
    residuals = flat[:, :, None, :] - centers[None, None]  # (B, N, K, D)
    scores = -smoothing * np.sum(residuals**2, axis=-1)  # (B, N, K)
    scores -= scores.max(-1, keepdims=True)
    assignment = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    return np.einsum("bnk,bnkd->bkd", assignment, residuals)


def test_encoding_layer_matches_the_papers_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 6)).astype("float32")
    layer = Encoding(4)
    out = np.asarray(layer(x))
    assert out.shape == (2, 4, 6)
    centers, smoothing = (np.asarray(w) for w in (layer.centers, layer.smoothing))
    assert np.all(np.abs(centers) <= 1 / np.sqrt(4 * 6)) and np.all((smoothing >= 0) & (smoothing <= 1))
    np.testing.assert_allclose(out, numpy_encoding(x, centers, smoothing), rtol=1e-4, atol=1e-5)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(x) ** 2)
    gradients = tape.gradient(total, layer.trainable_weights)
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in gradients)


def test_semantic_encoding_loss_is_binary_cross_entropy_on_the_classes_present():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (3, 6, 8))  # classes 3 never appear
    labels[1] = 0
    labels[2, :3] = IGNORE  # ignored pixels are not a class
    labels[2, 3:] = 2
    logits = rng.normal(size=(3, 4)).astype("float32")
    present = np.zeros((3, 4))
    for image in range(3):
        present[image, np.unique(labels[image][labels[image] != IGNORE])] = 1
    assert present.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    np.testing.assert_array_equal(losses.class_presence(labels, 4).numpy(), present)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -np.mean(present * np.log(probs) + (1 - present) * np.log(1 - probs))
    np.testing.assert_allclose(float(losses.presence_loss(labels, logits)), expected, rtol=1e-5)
    # inside the weighted sum of heads, a (B, C) output takes this loss
    pixel_logits = rng.normal(size=(3, 6, 8, 4)).astype("float32")
    ce = losses.get_loss("ce", num_classes=4)
    denominators = ce.denominators(labels, 4)
    total = losses.weighted_heads_loss(ce, labels, {"logits": pixel_logits, "se": logits}, {"se": 0.2}, denominators)
    main = losses.weighted_heads_loss(ce, labels, pixel_logits, {}, denominators)
    np.testing.assert_allclose(float(total), float(main) + 0.2 * expected, rtol=1e-5)


def test_encnet_head_scales_the_features_by_the_encoded_context():
    model = semseg_suite.build_model("EncNet", "ResNet18", num_classes=5, auxiliary=True)
    assert semseg_suite.models.loss_weights("EncNet") == {"logits": 1.0, "se": 0.2, "aux": 0.2}
    assert model.get_layer("enc_encoding").codewords == 32
    assert model.get_layer("enc_encoding_bn").axis in (1, [1])  # one BN per codeword
    assert model.get_layer("enc_gamma").activation.__name__ == "sigmoid"
    assert model.get_layer("enc_gamma").units == model.get_layer("enc_head_conv").filters == 512
    assert isinstance(model.get_layer("enc_scale"), keras.layers.Multiply)
    assert model.get_layer("se_logits").units == 5
    assert model.get_layer("aux_conv").filters == 256
    # the auxiliary head reads stage 3 (ResNet18's conv4, 256 channels), the encoding stage 4
    assert model.get_layer("aux_conv").kernel.shape == (3, 3, 256, 256)
    assert model.get_layer("enc_head_conv").kernel.shape == (3, 3, 512, 512)
    x = np.random.default_rng(2).normal(size=(2, 45, 67, 3)).astype("float32")
    outputs = model(x, training=False)
    assert tuple(outputs["se"].shape) == (2, 5) and tuple(outputs["logits"].shape) == (2, 45, 67, 5)
    # gamma really gates the features: an image changes the scaling of all positions
    gate = keras.Model(model.input, model.get_layer("enc_gamma").output)
    gammas = np.asarray(gate(x))
    assert gammas.shape == (2, 512) and np.all((gammas > 0) & (gammas < 1)) and np.abs(gammas[0] - gammas[1]).max() > 0


@pytest.mark.slow
def test_encnet_learns_the_tiny_task_with_its_se_and_auxiliary_losses():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("EncNet", "ResNet18", num_classes=2, auxiliary=True)
    assert_learned(fit_squares(model, steps=120, loss_weights=semseg_suite.models.loss_weights("EncNet")))
