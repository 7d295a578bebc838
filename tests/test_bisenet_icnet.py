"""BiSeNet and ICNet: paths, attention and fusion modules, cascades, auxiliary heads, learning."""

import keras
import numpy as np
import pytest

import builders
import frontends
import semseg_suite
from semseg_suite import build_model, export, flops
from semseg_suite.layers import AtrousConv2D
from tiny_task import assert_learned, fit_squares
from zoo import parents


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def _hw(tensor):
    return tuple(tensor.shape[1:3])


# --- BiSeNet -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bisenet():
    keras.backend.clear_session()
    return build_model("BiSeNet", num_classes=5, input_shape=(96, 128, 3), auxiliary=True)


def test_bisenet_spatial_path_is_three_stride2_convs_to_output_stride_8(bisenet):
    sizes = [(48, 64), (24, 32), (12, 16)]
    for i, size in enumerate(sizes, start=1):
        conv = bisenet.get_layer(f"spatial_conv{i}_conv")
        assert conv.strides == (2, 2) and conv.kernel_size == (3, 3) and conv.filters == 64
        assert parents(bisenet, f"spatial_conv{i}_relu") == [f"spatial_conv{i}_bn"]
        assert _hw(bisenet.get_layer(f"spatial_conv{i}_relu").output) == size
    assert parents(bisenet, "spatial_conv1_conv") == [bisenet.input._keras_history.operation.name]


@pytest.mark.parametrize("stride,endpoint", [(16, "conv4_block2_out"), (32, "conv5_block2_out")])
def test_bisenet_attention_refinement_gates_channels_with_a_sigmoid(bisenet, stride, endpoint):
    name = f"arm{stride}"
    assert parents(bisenet, f"{name}_conv_conv") == [endpoint]
    assert bisenet.get_layer(f"{name}_pool").keepdims
    assert parents(bisenet, f"{name}_attention_conv") == [f"{name}_pool"]
    assert bisenet.get_layer(f"{name}_attention_conv").kernel_size == (1, 1)
    assert parents(bisenet, f"{name}_attention_bn") == [f"{name}_attention_conv"]
    sigmoid = bisenet.get_layer(f"{name}_attention_sigmoid")
    assert sigmoid.activation is keras.activations.sigmoid
    assert parents(bisenet, f"{name}_multiply") == [f"{name}_conv_relu", f"{name}_attention_sigmoid"]
    gate = bisenet.get_layer(f"{name}_attention_sigmoid").output
    assert tuple(gate.shape[1:]) == (1, 1, 128)


def test_bisenet_context_path_fuses_global_context_and_both_stages(bisenet):
    assert parents(bisenet, "context_pool") == ["conv5_block2_out"]
    assert parents(bisenet, "context32_add") == ["arm32_multiply", "context_global_resize"]
    assert parents(bisenet, "context16_add") == ["arm16_multiply", "context32_refine_relu"]
    assert _hw(bisenet.get_layer("context32_refine_relu").output) == (6, 8)  # stride 16
    assert _hw(bisenet.get_layer("context16_refine_relu").output) == (12, 16)  # stride 8


def test_bisenet_feature_fusion_has_its_own_width_not_the_class_count(bisenet):
    assert parents(bisenet, "ffm_concat") == ["spatial_conv3_relu", "context16_refine_relu"]
    conv = bisenet.get_layer("ffm_conv_conv")
    assert conv.filters == 256 != 5
    for i in (1, 2):
        assert bisenet.get_layer(f"ffm_attention_conv{i}").filters == 256
    assert parents(bisenet, "ffm_attention_relu") == ["ffm_attention_conv1"]
    assert bisenet.get_layer("ffm_attention_sigmoid").activation is keras.activations.sigmoid
    assert parents(bisenet, "ffm_multiply") == ["ffm_conv_relu", "ffm_attention_sigmoid"]
    assert parents(bisenet, "ffm_add") == ["ffm_conv_relu", "ffm_multiply"]
    assert parents(bisenet, "logits_conv") == ["ffm_add"]


def test_bisenet_auxiliary_heads_supervise_the_context_path(bisenet):
    weights = semseg_suite.models.loss_weights("BiSeNet")
    assert weights == {"logits": 1.0, "aux16": 1.0, "aux32": 1.0}  # alpha = 1
    assert set(bisenet.output) == set(weights)
    assert parents(bisenet, "aux16_conv") == ["context16_refine_relu"]
    assert parents(bisenet, "aux32_conv") == ["context32_refine_relu"]
    outputs = bisenet(np.zeros((2, 96, 128, 3), "float32"))
    for logits in outputs.values():
        assert tuple(logits.shape) == (2, 96, 128, 5) and logits.dtype == "float32"


def test_bisenet_learns_the_tiny_task_with_its_auxiliary_losses():
    keras.utils.set_random_seed(0)
    model = build_model("BiSeNet", num_classes=2, auxiliary=True)
    scores = fit_squares(model, steps=120, learning_rate=2e-3, loss_weights=semseg_suite.models.loss_weights("BiSeNet"))
    assert_learned(scores)


# --- ICNet ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def icnet():
    keras.backend.clear_session()
    return build_model("ICNet", num_classes=5, input_shape=(96, 128, 3), auxiliary=True)


def test_icnet_branches_see_the_image_at_1_1_2_and_1_4(icnet):
    image = icnet.input._keras_history.operation.name
    assert parents(icnet, "input_half") == [image]
    assert parents(icnet, "input_quarter") == ["input_half"]
    assert _hw(icnet.get_layer("input_half").output) == (48, 64)
    assert _hw(icnet.get_layer("input_quarter").output) == (24, 32)
    # The light branch reads the full image: 1/8 after three stride-2 layers.
    assert parents(icnet, "sub1_conv1_conv") == [image]
    for i, width in enumerate((32, 32, 64), start=1):
        conv = icnet.get_layer(f"sub1_conv{i}_conv")
        assert conv.strides == (2, 2) and conv.kernel_size == (3, 3) and conv.filters == width
    assert _hw(icnet.get_layer("sub1_conv3_relu").output) == (12, 16)


def test_icnet_shallow_layers_are_shared_by_the_1_2_and_1_4_branches(icnet):
    stem = icnet.get_layer("conv1_conv")
    inputs = sorted(_hw(node.input_tensors[0]) for node in stem._inbound_nodes)
    assert inputs == [(30, 38), (54, 70)]  # 24x32 and 48x64 zero-padded by 3
    assert {parents(icnet, "conv1_pad", n)[0] for n in (0, 1)} == {"input_half", "input_quarter"}
    stride8 = icnet.get_layer("conv3_block4_out")
    assert sorted(_hw(node.output_tensors[0]) for node in stride8._inbound_nodes) == [(3, 4), (6, 8)]
    # Deeper layers run once, on the 1/4 image: PSPNet at output stride 8 (1/32).
    assert len(icnet.get_layer("conv4_block1_1_conv")._inbound_nodes) == 1
    assert icnet.get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)
    assert _hw(icnet.get_layer("conv5_block3_out").output) == (3, 4)
    # One set of weights: no layer of the frontend is duplicated.
    assert len({id(w) for w in icnet.weights}) == len(icnet.weights)
    assert [layer.name for layer in icnet.layers].count("conv1_conv") == 1


def test_icnet_copies_the_frontend_weights():
    frontend = frontends.build_frontend("ResNet18", output_stride=8)
    model = builders.MODELS.get("ICNet").build(frontend, 3, output_stride=8)
    for name in ("conv1_conv", "conv3_block2_1_bn", "conv5_block2_2_conv"):
        for got, expected in zip(model.get_layer(name).get_weights(), frontend.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, expected)
        assert model.get_layer(name) is not frontend.get_layer(name)


def test_icnet_pyramid_pooling_and_cascade_feature_fusion(icnet):
    for b in (1, 2, 3, 6):
        assert parents(icnet, f"sub4_ppm_pool{b}") == ["conv5_block3_out"]
    assert icnet.get_layer("sub4_projection_conv").filters == 256
    units = {"cff_sub24": ("sub4_projection_relu", "conv3_block4_out", (6, 8)),
             "cff_sub124": ("cff_sub24_relu", "sub1_conv3_relu", (12, 16))}
    for name, (coarse, fine, size) in units.items():
        assert parents(icnet, f"{name}_upsample") == [coarse, fine]
        assert _hw(icnet.get_layer(f"{name}_upsample").output) == size  # 2x the coarse map
        dilated = icnet.get_layer(f"{name}_dilated_conv")
        assert isinstance(dilated, AtrousConv2D)
        assert dilated.dilation_rate == (2, 2) and dilated.kernel_size == (3, 3) and dilated.filters == 128
        assert parents(icnet, f"{name}_dilated_conv") == [f"{name}_upsample"]
        projection = icnet.get_layer(f"{name}_projection_conv")
        assert projection.kernel_size == (1, 1) and projection.filters == 128
        assert parents(icnet, f"{name}_projection_conv") == [fine]
        assert parents(icnet, f"{name}_add") == [f"{name}_dilated_bn", f"{name}_projection_bn"]
    assert parents(icnet, "sub124_upsample") == ["cff_sub124_relu", "input_quarter"]
    assert _hw(icnet.get_layer("sub124_upsample").output) == (24, 32)
    assert parents(icnet, "logits_conv") == ["sub124_upsample"]


def test_icnet_cascade_label_guidance(icnet):
    weights = semseg_suite.models.loss_weights("ICNet")
    assert weights == {"logits": 1.0, "sub4": 0.4, "sub24": 0.4}
    assert set(icnet.output) == set(weights)
    assert parents(icnet, "sub4_conv") == ["cff_sub24_upsample"]
    assert parents(icnet, "sub24_conv") == ["cff_sub124_upsample"]
    outputs = icnet(np.random.default_rng(0).normal(size=(1, 96, 128, 3)).astype("float32"))
    for logits in outputs.values():
        assert tuple(logits.shape) == (1, 96, 128, 5) and logits.dtype == "float32"
        assert np.isfinite(np.asarray(logits)).all()


def _call_flops(layer):
    return sum(
        2 * flops.layer_macs(layer, node.input_tensors[0].shape, node.output_tensors[0].shape)
        for node in layer._inbound_nodes
        if node.input_tensors and node.output_tensors
    )


def test_icnet_flops_count_each_branch_at_its_own_resolution():
    model = build_model("ICNet", "ResNet18", num_classes=19, input_shape=(96, 128, 3))
    # The shared stem runs on the 1/4 and the 1/2 image: 12x16 and 24x32 outputs.
    assert _call_flops(model.get_layer("conv1_conv")) == 2 * 7 * 7 * 3 * 64 * (12 * 16 + 24 * 32)
    quarter = frontends.build_frontend("ResNet18", input_shape=(24, 32, 3), output_stride=8)
    half = frontends.build_frontend("ResNet18", input_shape=(48, 64, 3), output_stride=8)
    shallow = keras.Model(half.input, half.output["stride8"])
    frontend_layers = {layer.name for layer in quarter.layers}
    heads = sum(_call_flops(layer) for layer in model.layers if layer.name not in frontend_layers)
    assert flops.count_flops(model) == flops.count_flops(quarter) + flops.count_flops(shallow) + heads


def test_served_models_drop_the_auxiliary_heads(bisenet, icnet):
    for trained, aux in ((bisenet, ("aux16_conv", "aux32_conv")), (icnet, ("sub4_conv", "sub24_conv"))):
        served = export.inference_model(trained)
        assert not isinstance(served.output, dict)
        names = {layer.name for layer in served.layers}
        assert names.isdisjoint(aux) and "logits_conv" in names


def test_bisenet_training_model_reloads_with_equal_outputs(tmp_path, bisenet):
    x = np.random.default_rng(4).normal(size=(1, 96, 128, 3)).astype("float32")
    expected = {k: np.asarray(v) for k, v in bisenet(x, training=False).items()}
    bisenet.save(tmp_path / "bisenet.keras")
    reloaded = keras.models.load_model(tmp_path / "bisenet.keras", compile=False)
    for name, logits in reloaded(x, training=False).items():
        np.testing.assert_allclose(np.asarray(logits), expected[name], atol=1e-4)
