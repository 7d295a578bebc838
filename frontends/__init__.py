"""Pluggable backbones ("frontends") and their registry.

``build_frontend(name, ...)`` returns a ``keras.Model`` mapping an image to
``{"stride2", "stride4", "stride8", "stride16", "stride32"}`` feature maps; see
``frontends.base`` for the contract.
"""

from __future__ import annotations

import functools
import logging

from frontends.base import (
    OUTPUT_STRIDES,
    STRIDES,
    FrontendSpec,
    FrontendWeightsError,
    endpoint_name,
    keras_cache_dir,
)
from frontends import convnext, efficientnet, efficientnet_v2, inception, mobilenet_v3, nasnet, resnet_v2
from frontends.densenet import build_densenet
from frontends.mobilenet import build_mobilenet_v2
from frontends.resnet import build_resnet
from frontends.resnet_basic import build_resnet_basic
from frontends.resnet_lr import build_resnet101_lr
from frontends.vgg import build_vgg16
from frontends.xception import build_xception
from semseg_suite.registry import Registry

FRONTENDS: Registry[FrontendSpec] = Registry("frontend")

for _depth in ("ResNet50", "ResNet101", "ResNet152"):
    FRONTENDS.add(
        _depth,
        FrontendSpec(_depth, functools.partial(build_resnet, _depth), "caffe", supports_multi_grid=True),
    )
FRONTENDS.add("ResNet101LR", FrontendSpec("ResNet101LR", build_resnet101_lr, "caffe"))  # ExFuse's LR
FRONTENDS.add("MobileNetV2", FrontendSpec("MobileNetV2", build_mobilenet_v2, "tf"))
FRONTENDS.add("Xception", FrontendSpec("Xception", build_xception, "tf"))
FRONTENDS.add("VGG16", FrontendSpec("VGG16", build_vgg16, "caffe"))
for _depth in ("ResNet18", "ResNet34"):
    FRONTENDS.add(_depth, FrontendSpec(_depth, functools.partial(build_resnet_basic, _depth), "torch"))
for _depth in ("DenseNet121", "DenseNet161", "DenseNet169", "DenseNet201"):
    FRONTENDS.add(_depth, FrontendSpec(_depth, functools.partial(build_densenet, _depth), "torch"))
for _variant, _build in mobilenet_v3.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "tf"))  # in-graph [-1, 1] rescaling dropped
for _variant, _build in efficientnet.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "torch"))  # in-graph normalisation stripped
for _variant, _build in efficientnet_v2.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, efficientnet_v2.PREPROCESSING[_variant]))
for _variant, _build in resnet_v2.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "tf"))
for _variant, _build in inception.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "tf"))
for _variant, _build in convnext.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "torch"))  # in-graph normalisation dropped
for _variant, _build in nasnet.BUILDERS.items():
    FRONTENDS.add(_variant, FrontendSpec(_variant, _build, "tf"))

def build_frontend(
    name: str,
    *,
    input_shape=(None, None, 3),
    weights=None,
    output_stride: int = 32,
    multi_grid=None,
):
    """Builds a registered frontend.

    Args:
        name: a registered frontend name (see ``FRONTENDS.names()``).
        input_shape: ``(H, W, 3)``; ``None`` dims accept any size.
        weights: ``None``/``"none"`` (random init), ``"imagenet"``, ``"auto"``
            (ImageNet when Keras has the file cached or can download it, else random
            init with one warning saying why), a path to a weights file, or
            ``"timm:NAME"`` / ``"keras-hub:PRESET"``: pretrained weights downloaded
            and converted once by ``semseg_suite.weights`` (ResNet18/34, DenseNets).
        output_stride: 8, 16 or 32.
        multi_grid: last-stage unit rates, used by frontends that support it and
            ignored by the others.
    """
    spec = FRONTENDS.get(name)
    if not spec.supports_multi_grid:
        multi_grid = None
    if weights == "none":
        weights = None
    if isinstance(weights, str) and ":" in weights:
        from semseg_suite import weights as converted  # here: it imports this package

        if converted.is_hub_spec(weights):
            weights = str(converted.resolve(weights, name))
    if weights == "auto":
        try:
            return spec.build(input_shape, "imagenet", output_stride, multi_grid)
        except FrontendWeightsError as error:
            logging.getLogger("semseg_suite").warning(
                "%s Using random initialisation for %s; --frontend-weights none skips this check.",
                error,
                name,
            )
            weights = None
    return spec.build(input_shape, weights, output_stride, multi_grid)


__all__ = [
    "FRONTENDS",
    "OUTPUT_STRIDES",
    "STRIDES",
    "FrontendSpec",
    "FrontendWeightsError",
    "build_frontend",
    "endpoint_name",
    "keras_cache_dir",
]
