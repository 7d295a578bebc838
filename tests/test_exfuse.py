"""ExFuse: ECRE's sub-pixel upsampling, DAP against NumPy, SEB's products, the SS heads, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import semseg_suite
from builders.exfuse import DenselyAdjacentPrediction, DepthToSpace, GroupedBilinearUpsampling
from semseg_suite import losses
from tiny_task import assert_learned, fit_squares
from zoo import parents


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def numpy_dap(x, k):
    """The paper's formula, literally: out[i, j, c] = mean over l, m of x[i+l-k//2, j+m-k//2, (l k + m) C + c]."""
    batch, height, width, channels = x.shape
    classes = channels // (k * k)
    out = np.zeros((batch, height, width, classes))
    for i in range(height):
        for j in range(width):
            for l in range(k):
                for m in range(k):
                    y, z = i + l - k // 2, j + m - k // 2
                    if 0 <= y < height and 0 <= z < width:
                        group = l * k + m
                        out[:, i, j] += x[:, y, z, group * classes:(group + 1) * classes]
    return out / (k * k)


@pytest.mark.parametrize("k", [3, 5])
def test_dap_matches_the_papers_formula(k):
    x = np.random.default_rng(0).normal(size=(2, 5, 7, k * k * 3)).astype("float32")
    out = np.asarray(DenselyAdjacentPrediction(k)(x))
    assert out.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(out, numpy_dap(x, k), rtol=1e-5, atol=1e-6)
    # one vote per neighbour: group (l, m) at (i, j) lands on (i - l + k//2, j - m + k//2) only
    one = np.zeros((1, 5, 7, k * k), "float32")
    one[0, 2, 3, k * k - 1] = 1.0  # group (k-1, k-1): predicts for the neighbour up-left
    hit = np.asarray(DenselyAdjacentPrediction(k)(one))[0, ..., 0]
    assert np.argwhere(hit).tolist() == [[2 - k // 2, 3 - k // 2]] and hit.max() == pytest.approx(1 / k**2)


def test_ecre_layer_is_depth_to_space():
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4 * 6)).astype("float32")
    out = np.asarray(DepthToSpace(2)(x))
    np.testing.assert_array_equal(out, tf.nn.depth_to_space(x, 2).numpy())
    # output (2h + i, 2w + j, c) is input (h, w, (2 i + j) C + c)
    expected = x.reshape(2, 3, 5, 2, 2, 6).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 10, 6)
    np.testing.assert_array_equal(out, expected)


def test_grouped_bilinear_initialiser_copies_bilinear_upsampling_into_every_group():
    kernel = np.asarray(GroupedBilinearUpsampling()((4, 4, 3 * 9, 3)))
    taps = kernel[:, :, 0, 0]
    for group in range(9):
        for out_c in range(3):
            for in_c in range(3):
                np.testing.assert_array_equal(kernel[:, :, group * 3 + out_c, in_c], taps if out_c == in_c else 0)


def test_exfuse_wiring_seb_ecre_dap_and_ss():
    model = semseg_suite.build_model("ExFuse", "ResNet18", num_classes=5, auxiliary=True)
    assert semseg_suite.models.loss_weights("ExFuse") == {"logits": 1.0, "ss_res2": 1.0, "ss_res3": 1.0, "ss_res4": 1.0}
    # SEB: each low stage times every higher stage's 3x3 conv, upsampled to it
    assert isinstance(model.get_layer("seb_res2_mul"), keras.layers.Multiply)
    assert parents(model, "seb_res2_mul") == [
        "conv2_block2_out", "seb_res2_from_res5_resize", "seb_res2_from_res4_resize", "seb_res2_from_res3_resize"
    ]
    assert parents(model, "seb_res4_mul") == ["conv4_block2_out", "seb_res4_from_res5_resize"]
    assert parents(model, "seb_res2_from_res3_resize") == ["seb_res2_from_res3_conv", "conv2_block2_out"]
    assert parents(model, "seb_res2_from_res3_conv") == ["conv3_block2_out"]
    assert model.get_layer("seb_res2_from_res5_conv").kernel.shape == (3, 3, 512, 64)
    assert model.get_layer("seb_res3_from_res4_conv").kernel.shape == (3, 3, 256, 128)
    assert parents(model, "gcn_res3_left_kx1") == ["seb_res3_mul"]
    assert parents(model, "gcn_res5_left_kx1") == ["conv5_block2_out"]  # res-5 has nothing above it
    # ECRE: res-5's GCN is 4C wide and pixel-shuffled to C at res-4, no deconvolution there
    assert model.get_layer("gcn_res5_left_1xk").filters == 20
    ecre = model.get_layer("ecre_res5")
    assert isinstance(ecre, DepthToSpace) and ecre.block_size == 2
    assert parents(model, "ecre_res5") == ["br_res5_add"]
    assert ecre.output.shape[-1] == 5 and model.get_layer("gcn_res4_left_1xk").filters == 5
    assert parents(model, "fuse_res4_add") == ["fuse_res4_resize", "br_res4_add"]
    assert parents(model, "fuse_res3_resize")[0] == "fuse_res3_deconv"
    assert "fuse_res4_deconv" not in [layer.name for layer in model.layers]
    # DAP: the last deconvolution and BR are k^2 C wide; the logits average neighbours' groups
    assert model.get_layer("up2_deconv").filters == 45 and model.get_layer("up2_br_conv2").filters == 45
    assert isinstance(model.get_layer("logits"), DenselyAdjacentPrediction)
    assert parents(model, "logits") == ["up2_br_add"]
    # SS: one classifier per early stage, 3, 2 and 1 strided convolutions down to stride 32
    for stage, steps, source in (("res2", 3, "conv2_block2_out"), ("res3", 2, "conv3_block2_out"),
                                 ("res4", 1, "conv4_block2_out")):
        assert parents(model, f"ss_{stage}_down1_conv") == [source]
        assert all(model.get_layer(f"ss_{stage}_down{s}_conv").strides == (2, 2) for s in range(1, steps + 1))
        assert f"ss_{stage}_down{steps + 1}_conv" not in [layer.name for layer in model.layers]
        assert model.get_layer(f"ss_{stage}").units == 5
    x = np.random.default_rng(2).normal(size=(2, 45, 67, 3)).astype("float32")
    outputs = model(x, training=False)
    assert set(outputs) == {"logits", "ss_res2", "ss_res3", "ss_res4"}
    assert tuple(outputs["logits"].shape) == (2, 45, 67, 5)
    for name in ("ss_res2", "ss_res3", "ss_res4"):
        assert tuple(outputs[name].shape) == (2, 5)
    assert all(np.isfinite(np.asarray(v)).all() for v in outputs.values())
    # the logits are DAP of the last BR's output
    pre = keras.Model(model.input, model.get_layer("up2_br_add").output)(x)
    np.testing.assert_allclose(np.asarray(outputs["logits"]), numpy_dap(np.asarray(pre), 3), rtol=1e-4, atol=1e-4)
    # the training loss: cross-entropy of the logits plus 1.0 x each SS head's presence loss
    labels = np.random.default_rng(3).integers(0, 5, (2, 45, 67))
    labels[1] = 0
    ce = losses.get_loss("ce", num_classes=5)
    total = losses.weighted_heads_loss(ce, labels, outputs, semseg_suite.models.loss_weights("ExFuse"),
                                       ce.denominators(labels, 5))
    by_hand = float(ce(labels, outputs["logits"]))
    by_hand += sum(float(losses.presence_loss(labels, outputs[f"ss_{s}"])) for s in ("res2", "res3", "res4"))
    np.testing.assert_allclose(float(total), by_hand, rtol=1e-5)
    # the inference model keeps the main logits only
    inference = semseg_suite.build_model("ExFuse", "ResNet18", num_classes=5)
    assert not isinstance(inference.output, dict) and "ss_res2" not in [layer.name for layer in inference.layers]


def test_exfuse_without_ecre_at_output_stride_16():
    model = semseg_suite.build_model("ExFuse", "ResNet18", num_classes=3, output_stride=16)
    names = [layer.name for layer in model.layers]
    assert "ecre_res5" not in names and model.get_layer("gcn_res5_left_1xk").filters == 3
    assert parents(model, "fuse_res4_add") == ["br_res5_add", "br_res4_add"]
    logits = model(np.zeros((1, 64, 96, 3), "float32"))
    assert tuple(logits.shape) == (1, 64, 96, 3)


@pytest.mark.slow
def test_exfuse_learns_the_tiny_task_with_its_semantic_supervision():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("ExFuse", "ResNet18", num_classes=2, auxiliary=True, kernel_size=7,
                                     ss_filters=64)
    weights = semseg_suite.models.loss_weights("ExFuse")
    assert_learned(fit_squares(model, steps=150, learning_rate=1e-3, loss_weights=weights))
