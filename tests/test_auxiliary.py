"""Auxiliary heads: weighted losses in the training loop, main logits everywhere else."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import builders
import semseg_suite
from semseg_suite import data, export, inference, losses, training
from zoo import light_frontend

IGNORE = data.IGNORE_INDEX


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def numpy_cross_entropy_sum(labels, logits):
    """Sum of softmax cross-entropy over valid pixels, and their count."""
    valid = labels != IGNORE
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -picked[valid].sum(), valid.sum()


def two_head_model(num_classes=3):
    """Main logits from one 1x1 conv, an auxiliary head from another."""
    inputs = keras.Input((None, None, 3))
    main = keras.layers.Conv2D(num_classes, 1, name="main_conv", dtype="float32")(inputs)
    aux = keras.layers.Conv2D(num_classes, 3, padding="same", name="aux_conv", dtype="float32")(inputs)
    return keras.Model(inputs, {"logits": main, "aux": aux})


def labels_with_void(rng, shape, num_classes):
    labels = rng.integers(0, num_classes, shape).astype("int32")
    labels[rng.random(shape) < 0.2] = IGNORE
    return labels


def test_weighted_heads_loss_equals_the_weighted_sum_by_hand():
    rng = np.random.default_rng(0)
    labels = labels_with_void(rng, (2, 5, 7), 4)
    outputs = {name: rng.normal(size=(2, 5, 7, 4)).astype("float32") for name in ("logits", "aux_a", "aux_b")}
    weights = {"aux_a": 0.4, "aux_b": 0.16}
    loss = losses.get_loss("ce", num_classes=4)
    denominators = loss.denominators(labels, 4)
    total = losses.weighted_heads_loss(loss, labels, outputs, weights, denominators)
    valid = np.sum(labels != IGNORE)
    expected = sum(
        weights.get(name, 1.0) * numpy_cross_entropy_sum(labels, logits)[0] for name, logits in outputs.items()
    )
    assert float(denominators[0]) == valid
    np.testing.assert_allclose(float(total), expected / valid, rtol=1e-5)


def test_train_step_loss_is_the_weighted_sum_of_both_heads():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    model = two_head_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer = training.Trainer(
        model, tf.distribute.get_strategy(), num_classes=3, loss_weights={"logits": 1.0, "aux": 0.4}
    )
    images = rng.normal(size=(2, 6, 8, 3)).astype("float32")
    labels = labels_with_void(rng, (2, 6, 8), 3)
    outputs = {k: np.asarray(v) for k, v in model(images).items()}
    main_sum, valid = numpy_cross_entropy_sum(labels, outputs["logits"])
    aux_sum, _ = numpy_cross_entropy_sum(labels, outputs["aux"])
    expected = (main_sum + 0.4 * aux_sum) / valid

    loss = trainer.train_step((tf.constant(images), tf.constant(labels)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Metrics and the evaluation loss follow the main head only.
    val_loss, confusion = trainer.evaluate(tf.data.Dataset.from_tensors((images, labels)))
    np.testing.assert_allclose(val_loss, main_sum / valid, rtol=1e-5)
    assert confusion.sum() == valid


def test_inference_model_and_segmenter_use_the_main_logits(tmp_path):
    model = two_head_model()
    x = np.random.default_rng(2).normal(size=(1, 40, 36, 3)).astype("float32")
    main = np.asarray(model(x)["logits"])
    served = export.inference_model(model)
    assert [layer.name for layer in served.layers if layer.weights] == ["main_conv"]
    np.testing.assert_allclose(np.asarray(served(x)), main, atol=1e-6)
    assert export.inference_model(served) is served

    # A training checkpoint (dict outputs) still segments with the main logits.
    metadata = {"class_names": ["a", "b", "c"], "colors": [[0, 0, 0]] * 3, "preprocessing": "tf"}
    export.save_checkpoint(model, tmp_path / "train.keras", metadata)
    segmenter = inference.Segmenter.from_checkpoint(tmp_path / "train.keras")
    np.testing.assert_allclose(np.asarray(segmenter.logits(tf.constant(x))), main, atol=1e-5)


AUX_MODELS = [m for m in semseg_suite.list_models() if builders.MODELS.get(m).aux_loss_weights]


@pytest.mark.parametrize("model_name", AUX_MODELS)
def test_models_with_auxiliary_heads(model_name):
    weights = semseg_suite.models.loss_weights(model_name)
    assert weights["logits"] == 1.0 and len(weights) > 1
    trained = semseg_suite.build_model(model_name, light_frontend(model_name), num_classes=3, auxiliary=True)
    x = np.random.default_rng(3).normal(size=(1, 64, 96, 3)).astype("float32")
    outputs = trained(x, training=False)
    assert set(outputs) == set(weights)
    for name, logits in outputs.items():
        # per-pixel heads at the input's size; a (B, C) head is a class-presence one (EncNet's "se",
        # ExFuse's semantic supervision "ss_*"), a 1-channel one a border map (DFN's border network)
        presence = name == "se" or name.startswith("ss_")
        expected = (1, 3) if presence else (1, 64, 96, 1) if name.startswith("border") else (1, 64, 96, 3)
        assert tuple(logits.shape) == expected and logits.dtype == "float32", name
    served = export.inference_model(trained)
    np.testing.assert_allclose(np.asarray(served(x)), np.asarray(outputs["logits"]), atol=1e-5)
    assert not isinstance(semseg_suite.build_model(model_name, light_frontend(model_name), num_classes=3).output, dict)
