"""G-FRNet: the gate units' products, the refinement units' wiring and resolutions, stage-wise supervision."""

import keras
import numpy as np
import pytest

import semseg_suite
from semseg_suite import losses
from tiny_task import assert_learned, fit_squares
from zoo import parents

# VGG16's levels, coarse to fine: pool5, then the last conv of each stage
VGG_LEVELS = ["block5_pool", "block5_conv3", "block4_conv3", "block3_conv3", "block2_conv2", "block1_conv2"]
VGG_WIDTHS = [512, 512, 256, 128, 64]  # the shallower input of each gate
HEADS = ["coarse", "refine1", "refine2", "refine3", "refine4", "logits"]


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def test_gfrnet_gates_multiply_the_transformed_adjacent_levels():
    model = semseg_suite.build_model("G-FRNet", num_classes=4, auxiliary=True)
    assert model.name == "G-FRNet_VGG16"
    assert parents(model, "conv6_conv") == ["block5_pool"]
    assert model.get_layer("conv6_conv").filters == model.get_layer("conv7_conv").filters == 1024
    for k in range(1, 6):
        deep, shallow = VGG_LEVELS[k - 1], VGG_LEVELS[k]
        assert parents(model, f"gate{k}_deep_conv") == [deep]
        assert parents(model, f"gate{k}_shallow_conv") == [shallow]
        # T_f: 3x3 conv-BN-ReLU to the shallower level's width; the deeper one upsampled to the shallower
        for side in ("deep", "shallow"):
            conv = model.get_layer(f"gate{k}_{side}_conv")
            assert conv.filters == VGG_WIDTHS[k - 1] and conv.kernel_size == (3, 3), (k, side)
            assert parents(model, f"gate{k}_{side}_relu") == [f"gate{k}_{side}_bn"]
        assert parents(model, f"gate{k}_deep_up") == [f"gate{k}_deep_relu", shallow]
        assert parents(model, f"gate{k}_product") == [f"gate{k}_deep_up", f"gate{k}_shallow_relu"]
        assert isinstance(model.get_layer(f"gate{k}_product"), keras.layers.Multiply)

    # the gate's output is the element-wise product of the two transformed maps
    names = [f"gate{k}_{part}" for k in range(1, 6) for part in ("deep_up", "shallow_relu", "product")]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    x = np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32")
    maps = [np.asarray(m) for m in probe(x, training=False)]
    for k in range(5):
        deep, shallow, product = maps[3 * k : 3 * k + 3]
        assert deep.shape == shallow.shape == product.shape
        assert np.abs(product).max() > 0
        np.testing.assert_allclose(product, deep * shallow, rtol=1e-5, atol=1e-6)
    # the last gate is at full resolution (conv1_2), the first at stride 16 (conv5_3: ceil(45/16) x ceil(67/16))
    assert maps[-1].shape[1:3] == (45, 67) and maps[0].shape[1:3] == (3, 5)


def test_gfrnet_refinement_units_and_stage_wise_supervision():
    model = semseg_suite.build_model("G-FRNet", num_classes=4, auxiliary=True, input_shape=(64, 96, 3))
    weights = semseg_suite.models.loss_weights("G-FRNet")
    assert weights == dict.fromkeys(HEADS, 1.0)
    assert list(model.output) == HEADS
    assert model.get_layer("coarse_pred").output.shape[1:] == (2, 3, 4)  # P_m^G on pool5
    previous = "coarse_pred"
    for k, stride in zip(range(1, 6), (16, 8, 4, 2, 1)):
        # RU: m_f = 3x3 conv-BN of the gate to C channels, the coarser map upsampled, concatenated, 3x3 conv
        assert parents(model, f"refine{k}_conv") == [f"gate{k}_product"]
        assert model.get_layer(f"refine{k}_conv").filters == 4
        assert parents(model, f"refine{k}_up") == [previous, f"gate{k}_product"]
        assert parents(model, f"refine{k}_concat") == [f"refine{k}_bn", f"refine{k}_up"]
        pred = model.get_layer(f"refine{k}_pred")
        assert parents(model, f"refine{k}_pred") == [f"refine{k}_concat"] and pred.kernel_size == (3, 3)
        assert pred.output.shape[1:] == (64 // stride, 96 // stride, 4)  # a finer label map at every stage
        previous = f"refine{k}_pred"
    # every stage's prediction is an output at the input's size
    heads = {"coarse": "coarse_pred", **{name: f"refine{k}_pred" for k, name in enumerate(HEADS[1:], start=1)}}
    for name, pred in heads.items():
        assert parents(model, name)[0] == pred

    model = semseg_suite.build_model("G-FRNet", num_classes=4, auxiliary=True)
    x = np.random.default_rng(1).normal(size=(2, 45, 67, 3)).astype("float32")
    outputs = model(x, training=False)
    for name, logits in outputs.items():
        assert tuple(logits.shape) == (2, 45, 67, 4) and logits.dtype == "float32", name
        assert np.isfinite(np.asarray(logits)).all()
    # the loss: the six stages' cross-entropies, unweighted
    labels = np.random.default_rng(2).integers(0, 4, (2, 45, 67))
    ce = losses.get_loss("ce", num_classes=4)
    total = float(losses.weighted_heads_loss(ce, labels, outputs, weights, ce.denominators(labels, 4)))
    np.testing.assert_allclose(total, sum(float(ce(labels, outputs[name])) for name in HEADS), rtol=1e-5)
    assert not isinstance(semseg_suite.build_model("G-FRNet", num_classes=4).output, dict)


def test_gfrnet_on_a_resnet_gates_its_endpoints_under_a_max_pooled_top():
    model = semseg_suite.build_model("G-FRNet", "ResNet18", num_classes=3, auxiliary=True, gate_filters=32)
    levels = ["top_pool", "conv5_block2_out", "conv4_block2_out", "conv3_block2_out", "conv2_block2_out", "conv1_relu"]
    assert parents(model, "top_pool") == ["conv5_block2_out"] and parents(model, "conv6_conv") == ["top_pool"]
    for k in range(1, 6):
        assert parents(model, f"gate{k}_deep_conv") == [levels[k - 1]]
        assert parents(model, f"gate{k}_shallow_conv") == [levels[k]]
        assert model.get_layer(f"gate{k}_deep_conv").filters == model.get_layer(f"gate{k}_shallow_conv").filters == 32
    x = np.random.default_rng(3).normal(size=(1, 45, 67, 3)).astype("float32")
    outputs = model(x, training=False)
    assert set(outputs) == set(HEADS)
    assert all(tuple(v.shape) == (1, 45, 67, 3) for v in outputs.values())
    # the last stage is at stride 2 (conv1), upsampled to the input
    assert keras.Model(model.input, model.get_layer("refine5_pred").output)(x).shape[1:3] == (23, 34)


@pytest.mark.slow
def test_gfrnet_learns_the_tiny_task_with_stage_wise_supervision():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("G-FRNet", "ResNet18", num_classes=2, auxiliary=True, top_filters=128,
                                     gate_filters=32)
    assert_learned(fit_squares(model, steps=60, loss_weights=semseg_suite.models.loss_weights("G-FRNet")))
