"""DFN: border targets and the border focal loss against NumPy, the smooth and border networks' wiring."""

import keras
import numpy as np
import pytest

import semseg_suite
from semseg_suite import data, losses
from tiny_task import assert_learned, fit_squares
from zoo import parents

IGNORE = data.IGNORE_INDEX


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def numpy_boundaries(labels, num_classes, dilation=7):
    classes = np.where((labels >= 0) & (labels < num_classes), labels, 0)
    edges = np.zeros(labels.shape, bool)
    edges[:, :, 1:] |= classes[:, :, 1:] != classes[:, :, :-1]
    edges[:, 1:, :] |= classes[:, 1:, :] != classes[:, :-1, :]
    out = np.zeros(labels.shape, np.float32)
    half = dilation // 2
    for b, y, x in zip(*np.nonzero(edges)):
        out[b, max(0, y - half):y + half + 1, max(0, x - half):x + half + 1] = 1
    return out


def test_border_targets_are_the_label_edges_dilated_by_7():
    labels = np.zeros((2, 30, 40), np.int64)
    labels[0, 10:20, 15:30] = 2
    labels[1, :, 25:] = 1
    labels[1, :5] = IGNORE  # void counts as class 0 for the edges, and is not scored
    targets, valid = losses.boundary_targets(labels, 3)
    np.testing.assert_array_equal(targets.numpy(), numpy_boundaries(labels, 3))
    np.testing.assert_array_equal(valid.numpy(), labels != IGNORE)
    # a 7-pixel band across each edge: columns 22..28 around the edge at x = 25
    assert np.flatnonzero(targets.numpy()[1, 20]).tolist() == list(range(22, 29))


def test_border_focal_loss_matches_numpy_and_down_weights_easy_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 12, 16))
    labels[0, :4] = IGNORE
    logits = rng.normal(size=(2, 12, 16, 1)).astype("float32") * 3
    targets = numpy_boundaries(labels, 3)
    z = logits[..., 0].astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    p_t = np.where(targets == 1, p, 1 - p)
    alpha_t = np.where(targets == 1, 0.25, 0.75)
    focal = -alpha_t * (1 - p_t) ** 2 * np.log(p_t)
    valid = labels != IGNORE
    np.testing.assert_allclose(float(losses.border_focal_loss(labels, logits, 3)), focal[valid].mean(), rtol=1e-5)
    # gamma = 0, alpha = 0.5 is half the plain binary cross-entropy
    bce = -np.log(p_t)[valid].mean()
    np.testing.assert_allclose(float(losses.border_focal_loss(labels, logits, 3, gamma=0.0, alpha=0.5)), bce / 2,
                               rtol=1e-5)


def test_dfn_smooth_and_border_networks():
    model = semseg_suite.build_model("DFN", "ResNet18", num_classes=4, auxiliary=True)
    weights = semseg_suite.models.loss_weights("DFN")
    assert weights == {"logits": 1.0, "smooth32": 1.0, "smooth16": 1.0, "smooth8": 1.0,
                       "border4": 0.1, "border8": 0.1, "border16": 0.1, "border32": 0.1}
    # smooth network: the global context feeds res5's CAB; each CAB takes its stage and the stage above
    assert parents(model, "smooth32_cab_concat") == ["smooth32_pre_relu", "dfn_global_resize"]
    assert parents(model, "smooth16_cab_concat") == ["smooth16_pre_relu", "smooth32_up"]
    assert parents(model, "smooth4_cab_concat") == ["smooth4_pre_relu", "smooth8_up"]
    for stage in (32, 16, 8, 4):
        assert model.get_layer(f"smooth{stage}_pre_1x1").filters == 512
        assert model.get_layer(f"smooth{stage}_cab_fc2").activation.__name__ == "sigmoid"
        assert parents(model, f"smooth{stage}_cab_add") == [f"smooth{stage}_cab_scale", parents(model, f"smooth{stage}_cab_concat")[1]]
    # border network: bottom-up sums at stride 4
    assert parents(model, "border8_add") == ["border4_pre_relu", "border8_up"]
    assert parents(model, "border16_add") == ["border8_post_relu", "border16_up"]
    assert model.get_layer("border4_head_conv").filters == 1
    x = np.random.default_rng(1).normal(size=(1, 45, 67, 3)).astype("float32")
    outputs = model(x, training=False)
    for name, logits in outputs.items():
        assert tuple(logits.shape) == (1, 45, 67, 1 if name.startswith("border") else 4), name
        assert np.isfinite(np.asarray(logits)).all()
    # the training loss: the smooth heads' cross-entropy plus 0.1 x each border focal loss
    labels = np.random.default_rng(2).integers(0, 4, (1, 45, 67))
    ce = losses.get_loss("ce", num_classes=4)
    denominators = ce.denominators(labels, 4)
    total = float(losses.weighted_heads_loss(ce, labels, outputs, weights, denominators))
    by_hand = sum(float(ce(labels, outputs[name])) for name in ("logits", "smooth32", "smooth16", "smooth8"))
    by_hand += 0.1 * sum(float(losses.border_focal_loss(labels, outputs[f"border{s}"], 4)) for s in (4, 8, 16, 32))
    np.testing.assert_allclose(total, by_hand, rtol=1e-5)


@pytest.mark.slow
def test_dfn_learns_the_tiny_task_with_its_deep_supervision_and_border_loss():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("DFN", "ResNet18", num_classes=2, auxiliary=True, filters=128)
    assert_learned(fit_squares(model, steps=150, loss_weights=semseg_suite.models.loss_weights("DFN")))
