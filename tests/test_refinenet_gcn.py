"""RefineNet and GCN: chained residual pooling, RCU counts and widths; GCN kernels,
score-map widths, no BN inside, top-down fusion order."""

import re

import keras
import numpy as np
import pytest

from builders.refinenet import chained_residual_pooling
from semseg_suite import build_model
from semseg_suite.layers import ResizeLike
from tiny_task import assert_learned, fit_squares
from zoo import parents

# ResNet-50's endpoints: stride4 .. stride32.
RESNET50_ENDPOINTS = {
    4: "conv2_block3_out", 8: "conv3_block4_out", 16: "conv4_block6_out", 32: "conv5_block3_out",
}


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _names(model, pattern):
    return [layer.name for layer in model.layers if re.fullmatch(pattern, layer.name)]


@pytest.fixture(scope="module")
def refinenet():
    model = build_model("RefineNet", "ResNet50", num_classes=5)
    yield model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def gcn():
    model = build_model("GCN", "ResNet50", num_classes=5)
    yield model
    keras.backend.clear_session()


# --- RefineNet ---------------------------------------------------------------------


@pytest.mark.parametrize("block", [4, 3, 2, 1])
def test_refinenet_pooling_is_chained(refinenet, block):
    crp = f"refinenet{block}_crp"
    pools = [refinenet.get_layer(name) for name in _names(refinenet, rf"{crp}_pool\d+")]
    assert len(pools) == 2 and len(_names(refinenet, rf"{crp}_conv\d+")) == 2
    for pool in pools:
        assert pool.pool_size == (5, 5) and pool.strides == (1, 1) and pool.padding == "same"
    # ReLU first, then pool -> conv, the second pool taking the first conv's output.
    fusion = "refinenet4_stage_rcu2_add" if block == 4 else f"refinenet{block}_fusion_add"
    assert parents(refinenet, f"{crp}_relu") == [fusion]
    assert parents(refinenet, f"{crp}_pool1") == [f"{crp}_relu"]
    assert parents(refinenet, f"{crp}_conv1") == [f"{crp}_pool1"]
    assert parents(refinenet, f"{crp}_pool2") == [f"{crp}_conv1"]
    assert parents(refinenet, f"{crp}_conv2") == [f"{crp}_pool2"]
    # Running sum: ReLU output + block 1 + block 2.
    assert parents(refinenet, f"{crp}_add1") == [f"{crp}_relu", f"{crp}_conv1"]
    assert parents(refinenet, f"{crp}_add2") == [f"{crp}_add1", f"{crp}_conv2"]
    assert refinenet.get_layer(f"{crp}_conv1").kernel_size == (3, 3)


def _max_pool_5x5(x):
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-np.inf)
    height, width = x.shape[1:3]
    windows = [padded[:, i : i + height, j : j + width] for i in range(5) for j in range(5)]
    return np.max(windows, axis=0)


def test_chained_residual_pooling_computes_the_chain():
    inputs = keras.Input((None, None, 2))
    outputs = chained_residual_pooling(inputs, blocks=2, name="crp")
    block = keras.Model(inputs, outputs)
    identity = np.zeros((3, 3, 2, 2), "float32")
    identity[1, 1] = np.eye(2)
    for index in (1, 2):
        block.get_layer(f"crp_conv{index}").set_weights([identity])
    x = np.random.default_rng(0).normal(size=(1, 11, 13, 2)).astype("float32")
    relu = np.maximum(x, 0)
    once = _max_pool_5x5(relu)
    chained = relu + once + _max_pool_5x5(once)
    got = np.asarray(block(x))
    np.testing.assert_allclose(got, chained, atol=1e-5)
    assert not np.allclose(got, relu + 2 * once, atol=1e-3)  # not two parallel pools


def test_refinenet_rcu_counts_and_widths(refinenet):
    expected = {  # block: (frontend-path RCUs, previous-block-path RCUs, output RCUs)
        4: (2, 0, 1), 3: (2, 2, 1), 2: (2, 2, 1), 1: (2, 2, 3),
    }
    for block, counts in expected.items():
        got = tuple(
            len(_names(refinenet, rf"refinenet{block}_{path}_rcu\d+_add"))
            for path in ("stage", "prev", "output")
        )
        assert got == counts, block
    # RCU = ReLU, 3x3, ReLU, 3x3, add to its input.
    rcu = "refinenet3_prev_rcu1"
    assert parents(refinenet, f"{rcu}_relu1") == ["refinenet4_output_rcu1_add"]
    assert parents(refinenet, f"{rcu}_conv2") == [f"{rcu}_relu2"]
    assert parents(refinenet, f"{rcu}_add") == ["refinenet4_output_rcu1_add", f"{rcu}_conv2"]
    # Widths: 512 in RefineNet-4 (and its path into RefineNet-3), 256 elsewhere.
    width = lambda name: refinenet.get_layer(name).filters  # noqa: E731
    assert width("refinenet4_dimred") == width("refinenet4_crp_conv2") == 512
    assert width("refinenet4_output_rcu1_conv2") == width("refinenet3_prev_rcu2_conv1") == 512
    for block in (3, 2, 1):
        assert width(f"refinenet{block}_dimred") == width(f"refinenet{block}_crp_conv1") == 256
        assert width(f"refinenet{block}_fusion_stage_conv") == 256
        assert width(f"refinenet{block}_fusion_prev_conv") == 256
        assert refinenet.get_layer(f"refinenet{block}_fusion_prev_conv").kernel_size == (3, 3)
        assert parents(refinenet, f"refinenet{block}_fusion_prev_resize")[1] == (
            f"refinenet{block}_stage_rcu2_add"
        )
    assert "refinenet4_fusion_add" not in {layer.name for layer in refinenet.layers}
    for block, stride in zip((4, 3, 2, 1), (32, 16, 8, 4)):
        assert parents(refinenet, f"refinenet{block}_dimred") == [RESNET50_ENDPOINTS[stride]]
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in refinenet.layers
        if layer.name.startswith("refinenet")
    )
    # Head: dropout 0.5, class convolution on RefineNet-1, resized to the input.
    assert refinenet.get_layer("head_dropout").rate == 0.5
    assert parents(refinenet, "head_dropout") == ["refinenet1_output_rcu3_add"]
    assert refinenet.get_layer("logits_conv").filters == 5


def test_refinenet_hyperparameters_on_another_frontend():
    model = build_model(
        "RefineNet", "ResNet18", num_classes=3, output_stride=16, crp_blocks=4, dropout=0.1,
        widths=(64, 32),
    )
    assert len(_names(model, r"refinenet1_crp_pool\d+")) == 4
    assert parents(model, "refinenet1_crp_pool4") == ["refinenet1_crp_conv3"]
    assert model.get_layer("refinenet4_dimred").filters == 64
    assert model.get_layer("refinenet3_prev_rcu1_conv1").filters == 64
    assert model.get_layer("refinenet3_fusion_prev_conv").filters == 32
    assert model.get_layer("head_dropout").rate == 0.1
    logits = model(np.random.default_rng(0).normal(size=(1, 45, 67, 3)).astype("float32"))
    assert tuple(logits.shape) == (1, 45, 67, 3) and np.isfinite(np.asarray(logits)).all()


# --- GCN ---------------------------------------------------------------------------

_STAGES = ("res5", "res4", "res3", "res2")
_HEAD = ("gcn_", "br_", "fuse_", "up1_", "up2_", "logits")


def _check_gcn_modules(model, num_classes, k):
    for stage in _STAGES:
        gcn = f"gcn_{stage}"
        kernels = {
            "left_kx1": (k, 1), "left_1xk": (1, k), "right_1xk": (1, k), "right_kx1": (k, 1),
        }
        for suffix, kernel in kernels.items():
            layer = model.get_layer(f"{gcn}_{suffix}")
            assert (layer.kernel_size, layer.filters) == (kernel, num_classes), layer.name
        # Straight k x 1 -> 1 x k (and 1 x k -> k x 1): nothing in between.
        assert parents(model, f"{gcn}_left_1xk") == [f"{gcn}_left_kx1"]
        assert parents(model, f"{gcn}_right_kx1") == [f"{gcn}_right_1xk"]
        assert parents(model, f"{gcn}_add") == [f"{gcn}_left_1xk", f"{gcn}_right_kx1"]
        assert parents(model, f"br_{stage}_conv1") == [f"{gcn}_add"]
    for layer in model.layers:
        if layer.name.startswith(_HEAD) and hasattr(layer, "filters"):
            assert layer.filters == num_classes, layer.name


def test_gcn_modules_follow_the_paper(gcn):
    _check_gcn_modules(gcn, num_classes=5, k=15)
    for stage, stride in zip(_STAGES, (32, 16, 8, 4)):
        assert parents(gcn, f"gcn_{stage}_left_kx1") == [RESNET50_ENDPOINTS[stride]]
    # No BN (or any normalisation) in the head: convs, adds, ReLUs and resizes only.
    allowed = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Add,
               keras.layers.ReLU, ResizeLike)
    head = [layer for layer in gcn.layers if layer.name.startswith(_HEAD)]
    assert head and all(isinstance(layer, allowed) for layer in head)
    relus = [layer.name for layer in head if isinstance(layer, keras.layers.ReLU)]
    assert len(relus) == 9  # one inside each boundary refinement block, none elsewhere
    assert all(re.fullmatch(r"(br_res\d|fuse_res\d_br|up\d_br)_relu", name) for name in relus)
    # Res-5's module: 2 * (2048 * 5 * 15 + 5 * 5 * 15) weights + 4 * 5 biases.
    module = sum(gcn.get_layer(f"gcn_res5_{s}").count_params()
                 for s in ("left_kx1", "left_1xk", "right_1xk", "right_kx1"))
    assert module == 2 * (2048 * 5 * 15 + 5 * 5 * 15) + 4 * 5


def test_gcn_fusion_order(gcn):
    # Each stage: GCN -> BR. Then res5 -> deconv -> + res4 -> BR -> deconv -> + res3 ...
    coarser = "br_res5_add"
    for stage in ("res4", "res3", "res2"):
        assert parents(gcn, f"fuse_{stage}_deconv") == [coarser]
        assert parents(gcn, f"fuse_{stage}_resize") == [f"fuse_{stage}_deconv", f"br_{stage}_add"]
        assert parents(gcn, f"fuse_{stage}_add") == [f"fuse_{stage}_resize", f"br_{stage}_add"]
        assert parents(gcn, f"fuse_{stage}_br_conv1") == [f"fuse_{stage}_add"]
        coarser = f"fuse_{stage}_br_add"
    # Then deconv -> BR twice, straight to the logits (no extra classifier).
    assert parents(gcn, "up1_deconv") == ["fuse_res2_br_add"]
    assert parents(gcn, "up1_br_conv1") == ["up1_deconv"]
    assert parents(gcn, "up2_deconv") == ["up1_br_add"]
    assert parents(gcn, "up2_br_conv1") == ["up2_deconv"]
    assert parents(gcn, "logits")[0] == "up2_br_add"
    deconvs = [layer for layer in gcn.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert len(deconvs) == 5
    assert all(d.kernel_size == (4, 4) and d.strides == (2, 2) for d in deconvs)
    assert len(_names(gcn, r"(br_res\d|fuse_res\d_br|up\d_br)_conv1")) == 9
    fusions = [layer.name for layer in gcn.layers if layer.name.startswith("fuse_") and
               layer.name.endswith("_add") and not layer.name.endswith("br_add")]
    assert fusions == ["fuse_res4_add", "fuse_res3_add", "fuse_res2_add"]


def test_gcn_kernel_size_and_classes_are_hyperparameters():
    model = build_model("GCN", "ResNet18", num_classes=3, output_stride=16, kernel_size=7)
    _check_gcn_modules(model, num_classes=3, k=7)
    names = {layer.name for layer in model.layers}
    # Res-5 and res-4 share a resolution at output stride 16: no deconv between them.
    assert "fuse_res4_deconv" not in names and "fuse_res3_deconv" in names
    logits = model(np.random.default_rng(0).normal(size=(2, 45, 67, 3)).astype("float32"))
    assert tuple(logits.shape) == (2, 45, 67, 3) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize(
    "model_name,hyperparameters",
    [pytest.param("RefineNet", {"widths": (64, 32)}, marks=pytest.mark.slow), ("GCN", {})],
)
def test_learns_the_tiny_task(model_name, hyperparameters):
    # RefineNet at an eighth of the paper's widths: its 64M head parameters
    # make 150 Adam steps take minutes on a CPU.
    model = build_model(model_name, "ResNet18", num_classes=2, **hyperparameters)
    assert_learned(fit_squares(model, steps=150))
