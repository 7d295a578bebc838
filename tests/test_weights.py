"""Pretrained-weights converters (``semseg_suite.weights``).

keras-hub presets must give our frontends keras-hub's feature maps; timm state
dicts written from our weights must convert back to the same weights (and, read
by keras-hub's own timm converter, give the same feature maps); offline hub
weights must fail fast; the CLI's file must load through ``build_frontend``.
"""

import json
import shutil
import time

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from frontends import FrontendWeightsError, build_frontend
from semseg_suite import weights
from semseg_suite.weights import __main__ as weights_cli
from semseg_suite.weights import common, hub
from semseg_suite.weights import keras_hub as keras_hub_source

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# torchvision's headless trainable parameter counts (conv weights, BN weight and bias).
TORCHVISION_PARAMETERS = {"ResNet18": 11_176_512, "DenseNet161": 26_472_000}
KERAS_HUB_BLOCKS = {"ResNet18": [2, 2, 2, 2], "ResNet34": [3, 4, 6, 3]}
# keras-hub pyramid level (or layer) -> our endpoint.
KERAS_HUB_ENDPOINTS = {"conv1_relu": "stride2", "P2": "stride4", "P3": "stride8", "P4": "stride16", "P5": "stride32"}
UNREACHABLE = "https://semseg-suite-offline.invalid"  # .invalid never resolves (RFC 2606)


@pytest.fixture(scope="module")
def keras_hub():
    import keras_hub

    return keras_hub


def randomize(model, seed=0):
    """Random weights everywhere, batch norms included (fresh ones are the identity)."""
    rng = np.random.default_rng(seed)
    for layer in common.weighted_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights([
                # gamma below 1 keeps the residual sums O(1), as in a trained network
                rng.uniform(0.2, 0.6, size), rng.normal(0, 0.1, size), rng.normal(0, 0.1, size),
                rng.uniform(0.5, 2.0, size),
            ])
        else:
            layer.set_weights([rng.normal(0, np.sqrt(2 / np.prod(w.shape[:-1])), w.shape) for w in layer.weights])
    return model


# The architectures in torchvision's order, independently of the library's regex
# mapping: (torch module, our layer) pairs.
def resnet_modules(blocks):
    yield "conv1", "conv1_conv"
    yield "bn1", "conv1_bn"
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            torch_block, our_block = f"layer{stage}.{block}", f"conv{stage + 1}_block{block + 1}"
            for index in (1, 2):
                yield f"{torch_block}.conv{index}", f"{our_block}_{index}_conv"
                yield f"{torch_block}.bn{index}", f"{our_block}_{index}_bn"
            if block == 0 and stage > 1:
                yield f"{torch_block}.downsample.0", f"{our_block}_0_conv"
                yield f"{torch_block}.downsample.1", f"{our_block}_0_bn"


def densenet_modules(blocks):
    yield "features.conv0", "conv1_conv"
    yield "features.norm0", "conv1_bn"
    for index, count in enumerate(blocks, start=1):
        for layer in range(1, count + 1):
            torch_layer, our_layer = f"features.denseblock{index}.denselayer{layer}", f"conv{index + 1}_block{layer}"
            yield f"{torch_layer}.norm1", f"{our_layer}_0_bn"
            yield f"{torch_layer}.conv1", f"{our_layer}_1_conv"
            yield f"{torch_layer}.norm2", f"{our_layer}_1_bn"
            yield f"{torch_layer}.conv2", f"{our_layer}_2_conv"
        if index < len(blocks):
            yield f"features.transition{index}.norm", f"pool{index + 1}_bn"
            yield f"features.transition{index}.conv", f"pool{index + 1}_conv"
    yield "features.norm5", "bn"


# frontend -> (its (torch module, our layer) pairs, the classifier's module, its input width)
MODULES = {
    "ResNet18": (lambda: resnet_modules([2, 2, 2, 2]), "fc", 512),
    "DenseNet161": (lambda: densenet_modules([6, 12, 36, 24]), "classifier", 2208),
}


def timm_state_dict(model, frontend):
    """Our weights under timm's (torchvision's) names, with the classifier and BN counters timm files hold."""
    modules, classifier, features = MODULES[frontend]
    state = {}
    for module, layer_name in modules():
        layer = model.get_layer(layer_name)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            state.update({f"{module}.weight": gamma, f"{module}.bias": beta, f"{module}.running_mean": mean,
                          f"{module}.running_var": variance,
                          f"{module}.num_batches_tracked": np.array(1000, np.int64)})
        else:
            (kernel,) = layer.get_weights()
            state[f"{module}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    state[f"{classifier}.weight"] = np.zeros((1000, features), np.float32)
    state[f"{classifier}.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A random ResNet18 and its timm-named ``.safetensors`` file."""
    model = randomize(common.target_model("ResNet18"))
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file(timm_state_dict(model, "ResNet18"), str(path))
    return model, path


def assert_same_weights(expected, actual):
    for layer in common.weighted_layers(expected):
        for want, got in zip(layer.get_weights(), actual.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)


def assert_endpoints_match(ours, theirs, inputs, label):
    got, want = ours.predict(inputs, verbose=0), theirs.predict(inputs, verbose=0)
    for their_name, our_name in KERAS_HUB_ENDPOINTS.items():
        assert got[our_name].shape == want[their_name].shape, our_name
        diff = float(np.max(np.abs(got[our_name] - want[their_name])))
        scale = float(np.max(np.abs(want[their_name])))
        print(f"{label} {our_name} vs keras-hub {their_name}: max abs diff {diff:.2e} (max |value| {scale:.2f})")
        assert diff < 1e-4, our_name
        assert scale > 0.1, our_name  # not a vacuous match of all-zero maps


def keras_hub_features(keras_hub, backbone):
    stem = backbone.get_layer("conv1_relu").output
    return keras.Model(backbone.inputs, {**backbone.pyramid_outputs, "conv1_relu": stem})


def images(seed=1, size=67):
    """0-255 RGB of an odd size, where padding conventions would show."""
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def keras_hub_presets(keras_hub, tmp_path_factory):
    """Random torchvision-layout ResNet18/34 keras-hub backbones and their preset folders."""
    presets = {}
    for seed, (frontend, blocks) in enumerate(KERAS_HUB_BLOCKS.items()):
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=blocks, stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
            use_pre_activation=False,
        )
        randomize(backbone, seed=seed)
        preset = tmp_path_factory.mktemp("keras_hub") / frontend
        backbone.save_to_preset(str(preset))
        keras_hub.layers.ResNetImageConverter(image_size=(224, 224), scale=list(1 / (255 * STD)),
                                              offset=list(-MEAN / STD)).save_to_preset(str(preset))
        presets[frontend] = backbone, preset
    return presets


@pytest.mark.parametrize("frontend", list(KERAS_HUB_BLOCKS))
def test_keras_hub_preset_gives_keras_hubs_feature_maps(keras_hub, keras_hub_presets, frontend, tmp_path):
    backbone, preset = keras_hub_presets[frontend]
    output = weights.convert(preset, frontend, tmp_path / "converted.weights.h5")
    ours = build_frontend(frontend, weights=str(output))

    # Each side's own normalisation of the same 0-255 pixels: keras-hub's image
    # converter (scale and offset, without its resizing) and our torch preprocessing.
    pixels = images()
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    theirs_in = pixels * np.asarray(converter.scale, "float32") + np.asarray(converter.offset, "float32")
    ours_in = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode="torch")
    np.testing.assert_allclose(ours_in, theirs_in, atol=1e-5)
    # Both networks then see the same array, so only the networks are compared.
    assert_endpoints_match(ours, keras_hub_features(keras_hub, backbone), ours_in, frontend)


def test_keras_hub_preset_of_the_wrong_depth_or_layout_is_refused(keras_hub, keras_hub_presets, tmp_path):
    _, resnet34 = keras_hub_presets["ResNet34"]
    with pytest.raises(weights.WeightsConversionError, match=r"stackwise_num_blocks.*the preset is a ResNet34"):
        weights.convert(resnet34, "ResNet18", tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()
    v2 = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=True,
    )
    with pytest.raises(weights.WeightsConversionError, match="v2: ResNetBackbone has use_pre_activation=True"):
        keras_hub_source.check_config(v2, "ResNet18", source="v2")


def test_keras_hub_preset_normalisation_must_be_torch_preprocessing(keras_hub, keras_hub_presets, tmp_path, caplog):
    _, preset = keras_hub_presets["ResNet18"]
    copy = tmp_path / "preset"
    shutil.copytree(preset, copy)
    keras_hub.layers.ResNetImageConverter(image_size=(224, 224), scale=1 / 255).save_to_preset(str(copy))
    with pytest.raises(weights.WeightsConversionError, match=r"copy normalises 0-255 inputs with scale \[0\.0039"):
        keras_hub_source.check_normalisation(str(copy), "ResNet18", source="copy")
    (copy / "image_converter.json").unlink()
    keras_hub_source.check_normalisation(str(copy), "ResNet18", source="copy")
    assert "copy has no image converter" in caplog.text


@pytest.mark.parametrize("frontend", ["ResNet18", "DenseNet161"])
def test_timm_state_dict_round_trips_to_identical_weights(frontend, tmp_path):
    model = randomize(common.target_model(frontend))
    parameters = sum(
        int(np.prod(w.shape)) for layer in common.weighted_layers(model) for w in layer.trainable_weights
    )
    assert parameters == TORCHVISION_PARAMETERS[frontend]
    path = tmp_path / "state.safetensors"
    save_file(timm_state_dict(model, frontend), str(path))
    original = {layer.name: layer.get_weights() for layer in common.weighted_layers(model)}
    output = weights.convert(path, frontend, tmp_path / "converted.weights.h5")
    randomize(model, seed=7)  # other values, so loading must restore every one
    model.load_weights(output)
    for name, arrays in original.items():
        for want, got in zip(arrays, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_timm_mapping_agrees_with_keras_hubs_own_timm_converter(keras_hub, resnet18, tmp_path):
    """keras-hub reads the same timm-named file with its own converter: same feature maps."""
    _, path = resnet18
    folder = tmp_path / "hf_snapshot"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "resnet18", "pretrained_cfg": {"mean": MEAN.tolist(), "std": STD.tolist()}}
    ))
    theirs = keras_hub.models.Backbone.from_preset(str(folder))
    output = weights.convert(path, "ResNet18", tmp_path / "converted.weights.h5")
    ours = build_frontend("ResNet18", weights=str(output))
    normalised = keras.applications.imagenet_utils.preprocess_input(images(seed=2), mode="torch")
    assert_endpoints_match(ours, keras_hub_features(keras_hub, theirs), normalised, "timm ResNet18")


def test_state_dict_of_another_depth_names_the_file_and_the_first_key(resnet18, tmp_path):
    _, path = resnet18
    with pytest.raises(weights.WeightsConversionError) as info:
        weights.convert(path, "ResNet34", tmp_path / "out.weights.h5")
    assert str(path) in str(info.value) and "'layer1.2.conv1.weight'" in str(info.value)

    state = load_file(str(path))
    state["layer1.2.conv1.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    deeper = tmp_path / "deeper.safetensors"
    save_file(state, str(deeper))
    with pytest.raises(weights.WeightsConversionError, match=r"deeper\.safetensors.*'layer1\.2\.conv1\.weight'"):
        weights.convert(deeper, "ResNet18", tmp_path / "out.weights.h5")

    state = load_file(str(path))
    state["conv1.weight"] = np.zeros((96, 3, 7, 7), np.float32)  # DenseNet161's stem width
    wider = tmp_path / "wider.safetensors"
    save_file(state, str(wider))
    with pytest.raises(weights.WeightsConversionError, match=r"wider\.safetensors.*'conv1\.weight'.*\(96, 3, 7, 7\)"):
        weights.convert(wider, "ResNet18", tmp_path / "out.weights.h5")
    assert not (tmp_path / "out.weights.h5").exists()


def test_hub_weights_are_converted_once_and_then_read_from_the_cache(resnet18, tmp_path, monkeypatch):
    model, path = resnet18
    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {"mean": MEAN.tolist(),
                                                                                 "std": STD.tolist()}}))
    downloads = []

    def fake_download(name, frontend):  # stands in for hf_hub_download's cached files
        downloads.append(name)
        return str(config), str(path)

    monkeypatch.setattr(hub, "fetch_timm", fake_download)
    first = build_frontend("ResNet18", weights="timm:resnet18.tv_in1k")
    cached = weights.cached_path("timm:resnet18.tv_in1k", "ResNet18")
    assert cached.is_file() and str(tmp_path / "cache") in str(cached)
    second = build_frontend("ResNet18", weights="timm:resnet18.tv_in1k", output_stride=16)
    assert downloads == ["resnet18.tv_in1k"]
    for frontend in (first, second):
        np.testing.assert_array_equal(frontend.get_layer("conv1_conv").get_weights()[0],
                                      model.get_layer("conv1_conv").get_weights()[0])
    config.write_text(json.dumps({"architecture": "resnet34"}))
    with pytest.raises(weights.WeightsConversionError, match="timm:resnet18.a1_in1k is a timm 'resnet34'"):
        build_frontend("ResNet18", weights="timm:resnet18.a1_in1k")
    with pytest.raises(weights.WeightsConversionError, match="ResNet18, ResNet34"):
        build_frontend("DenseNet161", weights="keras-hub:resnet_18_imagenet")


@pytest.mark.parametrize("spec, patch", [
    ("timm:resnet18.semseg_suite_never_cached", "endpoint"),
    ("timm:resnet18.semseg_suite_never_cached", "HF_HUB_OFFLINE"),
    ("keras-hub:resnet_18_imagenet", "endpoint"),
])
def test_offline_hub_weights_fail_within_a_second_saying_what_to_do(spec, patch, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path))
    if patch == "endpoint":
        monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
        monkeypatch.setattr(hub, "KAGGLE_ENDPOINT", UNREACHABLE)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FrontendWeightsError) as info:
        build_frontend("ResNet18", weights=spec)
    elapsed = time.perf_counter() - start
    print(f"{spec} ({patch}): failed after {elapsed:.2f} s: {info.value}")
    assert elapsed < 2.0
    message = str(info.value)
    assert spec in message and "offline" in message
    assert "python -m semseg_suite.weights convert" in message and "--frontend ResNet18" in message
    assert ("HF_HUB_OFFLINE" if patch != "endpoint" else "semseg-suite-offline.invalid") in message


def test_cli_writes_a_file_that_build_frontend_loads(resnet18, tmp_path, capsys):
    model, path = resnet18
    output = tmp_path / "resnet18.weights.h5"
    assert weights_cli.main(["convert", str(path), "--frontend", "ResNet18", "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    assert [entry.name for entry in tmp_path.iterdir()] == [output.name]  # no temporary file left
    frontend = build_frontend("ResNet18", weights=str(output), output_stride=8)
    assert_same_weights(model, frontend)

    assert weights_cli.main(["convert", str(path), "--frontend", "ResNet34", "--output", str(output)]) == 2
    assert "layer1.2.conv1.weight" in capsys.readouterr().err
    assert weights_cli.main(["convert", str(tmp_path / "missing.safetensors"), "--frontend", "ResNet18",
                             "--output", str(output)]) == 2
    assert "no such" in capsys.readouterr().err
