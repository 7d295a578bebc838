"""The NASNet frontends of issue 16 (NASNetMobile, NASNetLarge).

``keras.applications`` NASNet wires its cells from static sizes (and refuses ``None``
dims with ImageNet weights); the frontends build it at its default size and call its
layers on an input of any shape. Checked here: every endpoint is
``ceil(H / min(stride, output_stride))`` at an odd 97x131 input at output stride 8,
16 and 32; the weight-bearing layers keep the application's names and shapes; the
re-wired application equals Keras' own static build; ImageNet weights load with a
``None``-dim input; strides past the output stride become dilation.
"""

import math

import keras
import numpy as np
import pytest

import frontends
from frontends import FRONTENDS, build_frontend, nasnet
from frontends.applications import endpoint_layer_names

HEIGHT, WIDTH = 97, 131  # odd, and not a multiple of any stride
PARAMS = [(name, os_) for name in nasnet.VARIANTS for os_ in (8, 16, 32)]


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def _plain(name, size=None, weights=None):
    """The unmodified application at a static size (its default one by default)."""
    size = size or nasnet.BUILD_SIZES[name]
    return getattr(keras.applications, name)(include_top=False, weights=weights, input_shape=(size, size, 3))


def _weight_shapes(model):
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


def _images(height, width, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, height, width, 3)).astype("float32")


def test_registered_with_tf_normalisation():
    for name in nasnet.VARIANTS:
        spec = FRONTENDS.get(name)
        assert spec.preprocessing == "tf"  # keras.applications.nasnet.preprocess_input: [-1, 1]
        assert not spec.supports_multi_grid


@pytest.mark.parametrize("name,output_stride", PARAMS)
def test_builds_with_nominal_strides_and_application_names(name, output_stride):
    expected = None
    # Names are compared on the most rewritten graph (OS 8), or at OS 32 for
    # NASNetLarge (85 M parameters), so that each of its builds makes one network.
    if output_stride == (32 if name == "NASNetLarge" else 8):
        plain = _plain(name)
        expected = _weight_shapes(plain)
        del plain
        keras.backend.clear_session()  # so the generated names restart alike
    model = build_frontend(name, output_stride=output_stride)
    features = model(_images(HEIGHT, WIDTH))
    assert sorted(features) == sorted(f"stride{s}" for s in frontends.STRIDES)
    for stride in frontends.STRIDES:
        effective = min(stride, output_stride)
        got = tuple(features[f"stride{stride}"].shape)
        assert got[:3] == (1, math.ceil(HEIGHT / effective), math.ceil(WIDTH / effective)), (stride, got)
        assert np.isfinite(keras.ops.convert_to_numpy(features[f"stride{stride}"])).all(), stride
    if expected is not None:
        assert _weight_shapes(model) == expected
    table = nasnet.ENDPOINTS[name]
    names = endpoint_layer_names(model)
    assert {s: names[f"stride{s}"] for s in (2, 4, 8, 16)} == {s: table[s] for s in (2, 4, 8, 16)}
    # stride32 is the application's headless output, the ReLU after the last cell
    relus = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    assert names["stride32"] == relus[-1]


def test_strides_past_the_output_stride_become_dilation():
    model = build_frontend("NASNetMobile", output_stride=8)
    # reduce_4 (stride 8 -> 16) and reduce_8 (16 -> 32) run at stride 1 ...
    for cell, rate in (("reduce_4", 1), ("reduce_8", 2)):
        for branch in ("left1", "right1", "right2", "right3"):
            conv = model.get_layer(f"separable_conv_1_reduction_{branch}_{cell}")
            assert conv.strides == (1, 1) and conv.padding == "same" and conv.dilation_rate == (rate, rate)
        for pool in ("left2", "left3", "right5"):
            assert model.get_layer(f"reduction_{pool}_{cell}").strides == (1, 1)
    # ... and so do the factorised reductions of the cells after them.
    for cell in ("5", "9"):
        for path in (1, 2):
            assert model.get_layer(f"adjust_avg_pool_{path}_{cell}").strides == (1, 1)
    # Cells keep their stride-8 rate before reduce_4, 2 after it, 4 after reduce_8.
    for cell, rate in (("3", 1), ("5", 2), ("8", 2), ("9", 4), ("12", 4)):
        for conv in ("separable_conv_1", "separable_conv_2"):
            assert model.get_layer(f"{conv}_normal_left1_{cell}").dilation_rate == (rate, rate), (cell, conv)
    assert model.get_layer("separable_conv_1_reduction_left1_stem_2").strides == (2, 2)


def test_rewired_application_equals_keras_static_build():
    """Built at 224 px and called on a ``None``-dim input, the application equals
    Keras' own build at 160 px on a 160-px image: every stage has the parity it has at
    224 px, so ``correct_pad`` pads alike and only the wiring could differ."""
    rewired = nasnet.application_on_any_input(
        "NASNetMobile", include_top=False, weights=None, input_shape=(None, None, 3)
    )
    assert tuple(rewired.input.shape) == (None, None, None, 3)
    plain = _plain("NASNetMobile", size=160)
    assert _weight_shapes(plain) == _weight_shapes(rewired)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(rewired.get_layer(layer.name).get_weights())
    images = _images(160, 160, seed=1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(rewired(images)), keras.ops.convert_to_numpy(plain(images)), rtol=1e-4, atol=1e-4
    )


def test_same_padding_throughout_and_the_stem_keeps_the_application_grid():
    frontend = build_frontend("NASNetMobile")
    valid = [
        layer.name
        for layer in frontend.layers
        if getattr(layer, "padding", None) == "valid"
        and max(getattr(layer, "kernel_size", getattr(layer, "pool_size", (1, 1)))) > 1
    ]
    assert valid == []
    # The only padding layers left are the factorised reductions' one-pixel shifts.
    pads = [layer for layer in frontend.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert len(pads) == 4  # cells stem_2, 0, 5 and 9: each follows a stride change
    for pad in pads:
        assert [type(node.operation) for node in pad._outbound_nodes] == [keras.layers.Cropping2D]
    keras.backend.clear_session()
    plain = _plain("NASNetMobile")
    for name in ("stem_conv1", "stem_bn1"):
        plain.get_layer(name).set_weights(frontend.get_layer(name).get_weights())
    stem = keras.Model(plain.input, plain.get_layer("stem_bn1").output)
    images = _images(224, 224, seed=2)
    expected = keras.ops.convert_to_numpy(stem(images))  # valid: 111 x 111
    got = keras.ops.convert_to_numpy(frontend(images)["stride2"])  # same: 112 x 112
    assert expected.shape[1:3] == (111, 111) and got.shape[1:3] == (112, 112)
    np.testing.assert_allclose(got[:, :111, :111], expected, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_load_with_any_input_shape(monkeypatch, tmp_path):
    """Keras refuses ``None`` dims with ImageNet weights; the frontend loads them (a
    stand-in file served by a patched ``get_file``, as no download is possible here)."""
    with pytest.raises(ValueError, match="must be static"):
        keras.applications.NASNetMobile(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    plain = _plain("NASNetMobile")
    path = tmp_path / "nasnet_mobile_no_top.h5"
    plain.save(path)
    requested = []

    def get_file(fname, *args, **kwargs):
        requested.append(fname)
        return str(path)

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", get_file)
    frontend = build_frontend("NASNetMobile", weights="imagenet", input_shape=(None, None, 3))
    assert requested == ["nasnet_mobile_no_top.h5"]
    compared = 0
    for layer in frontend.layers:
        if layer.weights:
            for got, expected in zip(layer.get_weights(), plain.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(got, expected)
                compared += 1
    assert compared == len(plain.get_weights())
    assert frontend(_images(HEIGHT, WIDTH))["stride32"].shape[1:3] == (4, 5)
