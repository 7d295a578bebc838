"""timm / torchvision state dicts (``.safetensors``) -> our frontends' weights.

timm's ResNet-18/34 and DenseNets keep torchvision's module names (``conv1``,
``layer2.0.downsample.1``, ``features.denseblock3.denselayer7.conv2``, ...), so
one mapping reads both. The mapping is systematic: each of our layer names
(``keras.applications`` style, ``conv3_block1_0_bn``) is parsed into stage, block
and position and rewritten as the torch module name; each Keras variable maps to
one tensor of that module:

- ``kernel``: ``weight``, (out, in, kh, kw) transposed to (kh, kw, in, out);
- ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` (batch norm):
  ``weight``, ``bias``, ``running_mean``, ``running_var``.

The classifier (``fc.*``, ``classifier.*``) and ``num_batches_tracked`` are
dropped. Every other tensor of the file must be used and every layer of the
frontend filled with the right shape, so a state dict of another depth or
variant (``resnet34`` for ResNet18, timm's deep-stem ``resnet18d``) fails naming
the file and the first key that does not fit.

Files are read with the ``safetensors`` package's NumPy API: no torch needed.
The weights expect ``torch`` preprocessing (ImageNet mean and std), as every
frontend that converts from here is registered with; a timm hub model whose
``config.json`` declares another normalisation is refused. keras.applications'
DenseNet-121/169/201 use BN epsilon 1.001e-5 where torch uses 1e-5: a relative
change of about 5e-9 / (variance + 1e-5) in a channel's normalised activations,
under 1e-6 for any variance above 0.005.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Mapping

import keras
import numpy as np

from semseg_suite.weights.common import WeightsConversionError, check_frontend, weighted_layers

# Frontend -> timm architecture name (``config.json`` "architecture").
ARCHITECTURES = {
    "ResNet18": "resnet18",
    "ResNet34": "resnet34",
    "DenseNet121": "densenet121",
    "DenseNet161": "densenet161",
    "DenseNet169": "densenet169",
    "DenseNet201": "densenet201",
}
# Normalisation of ``torch`` preprocessing (keras.applications.imagenet_utils).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_VARIABLES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_BLOCK_LAYER = re.compile(r"conv(\d)_block(\d+)_(\d)_(conv|bn)")


def resnet_module(layer: str) -> str | None:
    """Our ResNet-18/34 layer name -> torchvision module name (``None``: unknown).

    ``conv{s}_block{b}_{1,2}_{conv,bn}`` is ``layer{s-1}.{b-1}.{conv,bn}{1,2}``; the
    projection shortcut ``_0_conv``/``_0_bn`` is ``downsample.0``/``downsample.1``.
    """
    stem = {"conv1_conv": "conv1", "conv1_bn": "bn1"}
    if layer in stem:
        return stem[layer]
    match = _BLOCK_LAYER.fullmatch(layer)
    if not match:
        return None
    stage, block, position, kind = match.groups()
    prefix = f"layer{int(stage) - 1}.{int(block) - 1}"
    if position == "0":
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{position}"


def densenet_module(layer: str) -> str | None:
    """Our DenseNet layer name -> torchvision module name (``None``: unknown).

    Dense layer ``conv{s}_block{l}_{0_bn,1_conv,1_bn,2_conv}`` is
    ``features.denseblock{s-1}.denselayer{l}.{norm1,conv1,norm2,conv2}``; transition
    ``pool{t}_{bn,conv}`` is ``features.transition{t-1}.{norm,conv}``.
    """
    fixed = {"conv1_conv": "features.conv0", "conv1_bn": "features.norm0", "bn": "features.norm5"}
    if layer in fixed:
        return fixed[layer]
    match = _BLOCK_LAYER.fullmatch(layer)
    if match:
        stage, block, position, kind = match.groups()
        part = {("0", "bn"): "norm1", ("1", "conv"): "conv1", ("1", "bn"): "norm2", ("2", "conv"): "conv2"}
        if (position, kind) in part:
            return f"features.denseblock{int(stage) - 1}.denselayer{block}.{part[position, kind]}"
        return None
    match = re.fullmatch(r"pool(\d)_(conv|bn)", layer)
    if match:
        transition, kind = match.groups()
        return f"features.transition{int(transition) - 1}.{'norm' if kind == 'bn' else 'conv'}"
    return None


# Frontend family -> (layer -> module mapping, prefixes of the classifier's tensors).
_FAMILIES: dict[str, tuple[Callable[[str], str | None], tuple[str, ...]]] = {
    "ResNet": (resnet_module, ("fc.",)),
    "DenseNet": (densenet_module, ("classifier.",)),
}


def _family(frontend: str) -> tuple[Callable[[str], str | None], tuple[str, ...]]:
    check_frontend(frontend, ARCHITECTURES)
    return _FAMILIES["ResNet" if frontend.startswith("ResNet") else "DenseNet"]


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into NumPy arrays."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError and plain Exceptions
        raise WeightsConversionError(f"{path}: not a readable .safetensors state dict ({error})") from None


def layer_weights(
    state: Mapping[str, np.ndarray], model: keras.Model, frontend: str, *, source: str
) -> dict[str, list[np.ndarray]]:
    """Maps a torchvision/timm state dict onto ``frontend``'s layers.

    Args:
        state: tensor name -> array, as in the ``.safetensors`` file.
        model: ``common.target_model(frontend)``.
        frontend: ``ResNet18``, ``ResNet34`` or a DenseNet.
        source: the file (or hub name) the state dict came from, for messages.

    Returns:
        layer name -> arrays in ``layer.get_weights()`` order, for every weighted
        layer of the frontend's network.

    Raises:
        WeightsConversionError: a tensor is missing or has the wrong shape (the
            first one in network order is named), or the file holds tensors the
            frontend has no place for (a different depth or variant).
    """
    module_of, classifier = _family(frontend)
    used: set[str] = set()
    converted: dict[str, list[np.ndarray]] = {}
    for layer in weighted_layers(model):
        module = module_of(layer.name)
        if module is None:
            raise WeightsConversionError(f"{frontend}: no torchvision name for layer {layer.name}")
        arrays = []
        for variable in layer.weights:
            key = f"{module}.{_VARIABLES[variable.name]}"
            if key not in state:
                raise WeightsConversionError(
                    f"{source}: no tensor {key!r}, which {frontend} needs for {variable.path}: "
                    f"not a torchvision/timm {ARCHITECTURES[frontend]} state dict"
                )
            array = np.asarray(state[key], dtype=np.float32)
            if variable.name == "kernel":
                array = array.transpose(2, 3, 1, 0)
            if array.shape != tuple(variable.shape):
                raise WeightsConversionError(
                    f"{source}: tensor {key!r} has shape {tuple(np.shape(state[key]))}, but {frontend} "
                    f"needs {tuple(variable.shape)} for {variable.path} (after transposing to Keras' layout): "
                    f"not a {ARCHITECTURES[frontend]} state dict"
                )
            arrays.append(array)
            used.add(key)
        converted[layer.name] = arrays
    unused = [
        key for key in state
        if key not in used and not key.startswith(classifier) and not key.endswith(".num_batches_tracked")
    ]
    if unused:
        raise WeightsConversionError(
            f"{source}: {len(unused)} tensors have no place in {frontend}, the first {unused[0]!r}: "
            f"a deeper network or another variant than {ARCHITECTURES[frontend]}?"
        )
    return converted


def check_config(config_path, frontend: str, *, source: str) -> None:
    """Checks a timm hub ``config.json``: the architecture and the normalisation.

    Raises:
        WeightsConversionError: another architecture than ``frontend``'s, or a
            mean/std other than ImageNet's (what ``torch`` preprocessing applies).
    """
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    architecture = config.get("architecture")
    if architecture != ARCHITECTURES[frontend]:
        raise WeightsConversionError(
            f"{source} is a timm {architecture!r}; frontend {frontend} needs {ARCHITECTURES[frontend]!r}"
        )
    pretrained = config.get("pretrained_cfg", {})
    mean, std = pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD)
    if not (np.allclose(mean, IMAGENET_MEAN, atol=1e-3) and np.allclose(std, IMAGENET_STD, atol=1e-3)):
        raise WeightsConversionError(
            f"{source} was trained on inputs normalised with mean {mean} and std {std}; frontend "
            f"{frontend} feeds ImageNet's mean {IMAGENET_MEAN} and std {IMAGENET_STD} (torch preprocessing)"
        )
