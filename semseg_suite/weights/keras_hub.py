"""keras-hub ``ResNetBackbone`` presets -> our ResNet-18/34 frontends' weights.

keras-hub's ResNet v1 with basic blocks is torchvision's ResNet-18/34 (its timm
converter reads torchvision's names): the same explicit zero padding before the
stem and strided convolutions, BN epsilon 1e-5, no convolution biases. Only the
layer names differ, systematically: keras-hub's stage ``stack{i}`` and 0-based
block ``block{j}`` are our ``conv{i+2}`` and 1-based ``block{j+1}``
(``stack1_block0_0_conv`` is our ``conv3_block1_0_conv``); the stem
(``conv1_conv``, ``conv1_bn``) and the positions within a block (``_0`` the
projection shortcut, ``_1``/``_2`` the 3x3 convolutions) are named alike.
Weights are copied variable by variable under that renaming; every layer on
both sides must be matched with equal shapes. What carries no weights is checked
in the backbone's config: basic blocks, no pre-activation (ResNetV2), strides
1, 2, 2, 2 and a single 7x7 stem convolution (not ResNet-vd).

A preset's image converter normalises 0-255 RGB with ``scale`` and ``offset``;
it must equal ``torch`` preprocessing (ImageNet mean and std), which our
frontends are registered with.

``keras_hub`` is imported only here, and only when a preset is read: importing it
takes seconds.
"""

from __future__ import annotations

import logging
import re

import keras
import numpy as np

from semseg_suite.weights.common import WeightsConversionError, check_frontend, weighted_layers
from semseg_suite.weights.timm import IMAGENET_MEAN, IMAGENET_STD

# Frontend -> basic blocks per stage, the backbone config that must match.
DEPTHS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}
_CONFIG = {
    "block_type": "basic_block",
    "use_pre_activation": False,
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_strides": [1, 2, 2, 2],
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
}
_STACK_LAYER = re.compile(r"stack(\d+)_block(\d+)_(.+)")
log = logging.getLogger("semseg_suite")


def our_layer_name(layer: str) -> str:
    """keras-hub ResNet layer name -> ours (``stack1_block0_0_bn`` -> ``conv3_block1_0_bn``)."""
    match = _STACK_LAYER.fullmatch(layer)
    if not match:
        return layer
    stack, block, rest = match.groups()
    return f"conv{int(stack) + 2}_block{int(block) + 1}_{rest}"


def load_backbone(preset: str):
    """``keras_hub.models.Backbone.from_preset``: a local folder, a preset name or handle."""
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(preset)
    except (ValueError, FileNotFoundError) as error:  # not a preset: no config.json, unknown name, ...
        raise WeightsConversionError(f"cannot load keras-hub preset {preset}: {error}") from None


def check_config(backbone, frontend: str, *, source: str) -> None:
    """Checks that ``backbone`` is the torchvision-layout ResNet of ``frontend``."""
    import keras_hub

    if not isinstance(backbone, keras_hub.models.ResNetBackbone):
        raise WeightsConversionError(
            f"{source} is a {type(backbone).__name__}; frontend {frontend} converts from a ResNetBackbone"
        )
    config = backbone.get_config()
    expected = {**_CONFIG, "stackwise_num_blocks": list(DEPTHS[frontend])}
    for key, value in expected.items():
        found = list(config[key]) if isinstance(config[key], (list, tuple)) else config[key]
        if found != value:
            named = [name for name, blocks in DEPTHS.items() if list(blocks) == list(config["stackwise_num_blocks"])]
            hint = f" (the preset is a {named[0]})" if key == "stackwise_num_blocks" and named else ""
            raise WeightsConversionError(
                f"{source}: ResNetBackbone has {key}={found!r}, frontend {frontend} needs {value!r}{hint}"
            )


def check_normalisation(preset: str, frontend: str, *, source: str) -> None:
    """Checks the preset's image converter (when it has one) against ``torch`` preprocessing."""
    import keras_hub

    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except FileNotFoundError:
        log.warning("%s has no image converter; assuming ImageNet mean/std normalisation", source)
        return
    std = np.asarray(IMAGENET_STD)
    scale = np.broadcast_to(np.asarray(converter.scale if converter.scale is not None else 1.0, float), 3)
    offset = np.broadcast_to(np.asarray(converter.offset if converter.offset is not None else 0.0, float), 3)
    if not (np.allclose(scale, 1.0 / (255.0 * std), rtol=1e-3)
            and np.allclose(offset, -np.asarray(IMAGENET_MEAN) / std, atol=1e-3)):
        raise WeightsConversionError(
            f"{source} normalises 0-255 inputs with scale {scale.tolist()} and offset {offset.tolist()}; "
            f"frontend {frontend} feeds ImageNet mean/std normalisation (torch preprocessing: scale "
            f"{(1.0 / (255.0 * std)).tolist()}, offset {(-np.asarray(IMAGENET_MEAN) / std).tolist()})"
        )


def layer_weights(backbone, model: keras.Model, frontend: str, *, source: str) -> dict[str, list[np.ndarray]]:
    """Copies a keras-hub ResNet-18/34 backbone's weights onto our layer names.

    Args:
        backbone: a ``keras_hub.models.ResNetBackbone``.
        model: ``common.target_model(frontend)``.
        frontend: ``ResNet18`` or ``ResNet34``.
        source: the preset, for messages.

    Returns:
        layer name -> arrays in ``layer.get_weights()`` order.
    """
    check_frontend(frontend, DEPTHS)
    check_config(backbone, frontend, source=source)
    theirs = {our_layer_name(layer.name): layer for layer in backbone.layers if layer.weights}
    converted = {}
    for layer in weighted_layers(model):
        if layer.name not in theirs:
            raise WeightsConversionError(f"{source}: no layer for our {layer.name} in the backbone")
        other = theirs.pop(layer.name)
        ours_shapes = [tuple(v.shape) for v in layer.weights]
        their_shapes = [tuple(v.shape) for v in other.weights]
        if ours_shapes != their_shapes:
            raise WeightsConversionError(
                f"{source}: layer {other.name} has weight shapes {their_shapes}, our {layer.name} {ours_shapes}"
            )
        converted[layer.name] = [np.asarray(array, np.float32) for array in other.get_weights()]
    if theirs:
        first = next(iter(theirs.values()))
        raise WeightsConversionError(
            f"{source}: {len(theirs)} backbone layers have no place in {frontend}, the first {first.name}"
        )
    return converted
