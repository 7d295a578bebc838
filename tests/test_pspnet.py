"""PSPNet: pyramid pooling module, dilated frontend, auxiliary head, learning."""

import keras
import numpy as np
import pytest

import semseg_suite
from semseg_suite.layers import AdaptiveAveragePooling2D
from tiny_task import assert_learned, fit_squares


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def test_pspnet_follows_the_paper():
    model = semseg_suite.build_model("PSPNet", "ResNet50", num_classes=7, auxiliary=True)
    pools = [layer for layer in model.layers if isinstance(layer, AdaptiveAveragePooling2D)]
    assert sorted(pool.bins for pool in pools) == [1, 2, 3, 6]
    # Each level: 1x1 conv to a quarter of ResNet's 2048 channels, BN, ReLU.
    for bins in (1, 2, 3, 6):
        conv = model.get_layer(f"ppm_bin{bins}_conv")
        assert conv.kernel_size == (1, 1) and conv.filters == 512
        assert model.get_layer(f"ppm_bin{bins}_bn") is not None
    assert model.get_layer("ppm_concat").output.shape[-1] == 2048 + 4 * 512
    head = model.get_layer("head_conv")
    assert head.kernel_size == (3, 3) and head.filters == 512
    assert model.get_layer("head_dropout").rate == 0.1
    # Output stride 8: stages 4 and 5 dilated by 2 and 4 (Sec. 4.1).
    assert model.get_layer("conv4_block2_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block2_2_conv").dilation_rate == (4, 4)
    x = np.zeros((1, 64, 96, 3), "float32")
    probe = keras.Model(model.input, [model.get_layer("conv5_block3_out").output, model.get_layer("aux_head_conv").input])
    stage5, aux_input = probe(x)
    assert stage5.shape[1:3] == (8, 12)
    # The auxiliary head sits on the stride-16 stage (res4b22): ResNet's conv4 output.
    assert model.get_layer("aux_head_conv").input is model.get_layer("conv4_block6_out").output
    assert aux_input.shape[-1] == 1024 and model.get_layer("aux_head_conv").filters == 256
    assert semseg_suite.models.loss_weights("PSPNet") == {"logits": 1.0, "aux": 0.4}


def test_pspnet_pyramid_levels_see_the_whole_map_at_any_size():
    model = semseg_suite.build_model("PSPNet", "ResNet18", num_classes=3)
    for shape in [(1, 33, 47, 3), (1, 96, 64, 3)]:
        logits = model(np.random.default_rng(0).normal(size=shape).astype("float32"))
        assert tuple(logits.shape) == shape[:3] + (3,)
        assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.slow
def test_pspnet_learns_the_tiny_task_with_its_auxiliary_loss():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("PSPNet", "ResNet18", num_classes=2, auxiliary=True)
    scores = fit_squares(model, steps=60, learning_rate=2e-3, loss_weights=semseg_suite.models.loss_weights("PSPNet"))
    assert_learned(scores)
