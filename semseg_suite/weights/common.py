"""What every weights source shares: the target networks and the converted file.

A converted file is the Keras ``.weights.h5`` of the headless network a frontend
is cloned from (``frontends.resnet_basic.ResNet18()``, ``keras.applications.DenseNet121()``,
...), which is what ``build_frontend(name, weights=PATH)`` loads. The file holds
no input size, so it serves every input size and output stride.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable, Mapping

import keras
import numpy as np

from frontends import densenet, resnet_basic
from frontends.base import FrontendWeightsError

# Frontend -> constructor of the network its weights file belongs to. Only frontends
# whose layers are torchvision's one to one: keras.applications' ResNet50/101/152
# stride in the first 1x1 convolution of a bottleneck (ResNet v1) where torchvision
# and timm stride in the 3x3 (v1.5), so their weights do not carry over.
APPLICATIONS: dict[str, Callable[..., keras.Model]] = {
    "ResNet18": resnet_basic.ResNet18,
    "ResNet34": resnet_basic.ResNet34,
    "DenseNet121": keras.applications.DenseNet121,
    "DenseNet161": densenet.DenseNet161,
    "DenseNet169": keras.applications.DenseNet169,
    "DenseNet201": keras.applications.DenseNet201,
}
SUFFIX = ".weights.h5"


class WeightsConversionError(FrontendWeightsError, ValueError):
    """A weights source does not fit the frontend (wrong depth, layout or normalisation)."""


def check_frontend(frontend: str, supported=APPLICATIONS) -> None:
    if frontend not in supported:
        raise WeightsConversionError(
            f"no converter for frontend {frontend!r}; supported: {', '.join(supported)}"
        )


def target_model(frontend: str) -> keras.Model:
    """The randomly initialised headless network whose weights a converter fills."""
    check_frontend(frontend)
    return APPLICATIONS[frontend](include_top=False, weights=None, input_shape=(None, None, 3))


def weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def write_weights(
    model: keras.Model, layer_weights: Mapping[str, list[np.ndarray]], output
) -> pathlib.Path:
    """Sets every weighted layer of a frontend's network and saves it atomically.

    Args:
        model: ``target_model(frontend)``.
        layer_weights: layer name -> arrays in ``layer.get_weights()`` order, for
            every weighted layer, as the converters return them (checked there).
        output: the file to write, ending in ``SUFFIX`` (its folder is created); written
            to a temporary file in the same folder and renamed, so a crash never
            leaves a half-written file.

    Returns:
        The path written.
    """
    output = pathlib.Path(output)
    for layer in weighted_layers(model):
        layer.set_weights(layer_weights[layer.name])
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{output.name[: -len(SUFFIX)]}-", suffix=SUFFIX,
                                       dir=output.parent)
    os.close(handle)
    try:
        model.save_weights(partial)
        os.replace(partial, output)
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)
    return output
