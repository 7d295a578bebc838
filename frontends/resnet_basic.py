"""ResNet-18/34 frontends (He et al. 2016): residual networks of basic blocks.

``keras.applications`` has no ResNet-18/34, so ``ResNet18`` and ``ResNet34`` below
build them with its signature and its ResNet layer names (``conv1_conv``,
``pool1_pool``, ``conv3_block1_1_conv``, ``conv3_block1_0_bn``,
``conv3_block1_out``, ...), and the frontend goes through the same clone
machinery as the other frontends (``frontends.base.build_frontend_model``).

Architecture (He et al. 2016, Table 1): a 7x7/2 convolution with 64 filters, BN,
ReLU and a 3x3/2 max-pool; then four stages (``conv2`` .. ``conv5``) of 2, 2, 2, 2
(ResNet-18) or 3, 4, 6, 3 (ResNet-34) basic blocks of 64, 128, 256 and 512 filters.
A basic block is 3x3 conv, BN, ReLU, 3x3 conv, BN, added to the shortcut, ReLU.
The first block of ``conv3`` .. ``conv5`` downsamples with stride 2 on its first
3x3 convolution, and its shortcut is a 1x1 stride-2 projection with BN (option B
of the paper, as in torchvision). Convolutions have no bias, as in torchvision,
so the trainable parameters are exactly torchvision's (11,176,512 and 21,284,672
without the classifier).

Padding follows torchvision: the stem and the strided 3x3 convolutions are
explicitly zero-padded (``*_pad`` layers) and valid, so ``.weights.h5`` files
converted from torchvision weights give torchvision's outputs. When a stride is
turned into dilation, the pair becomes one same-padded convolution (symmetric
for stride 1). Sizes are ``ceil(H / stride)`` for every input size.

Keras publishes no ImageNet weights for these networks: ``weights="imagenet"``
raises ``FrontendWeightsError`` (so ``weights="auto"`` falls back to random
initialisation). ImageNet weights come from torchvision's (timm's)
``resnet18``/``resnet34`` or keras-hub's ``ResNetBackbone`` presets, converted once
by `semseg_suite.weights` (``--frontend-weights timm:resnet18.tv_in1k``, or a
``.weights.h5`` file it wrote). Inputs are expected with
``torch`` preprocessing (RGB in [0, 1], ImageNet mean and std).
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model, handwritten_inputs, handwritten_model
from semseg_suite.layers import BN_EPSILON, BatchNormalization

# Blocks per stage (conv2..conv5) per depth (He et al. 2016, Table 1).
_BLOCKS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}
_FILTERS = (64, 128, 256, 512)





def endpoints(name: str) -> dict[int, str]:
    """Endpoint layer names by nominal stride for one depth."""
    c2, c3, c4, c5 = _BLOCKS[name]
    return {
        2: "conv1_relu",
        4: f"conv2_block{c2}_out",
        8: f"conv3_block{c3}_out",
        16: f"conv4_block{c4}_out",
        32: f"conv5_block{c5}_out",
    }


def _conv(filters, kernel_size, *, strides=1, padding="same", name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        # torchvision's initialisation: Kaiming normal, fan out.
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"
        ),
        name=name,
    )


def _bn(name):
    # Momentum is a training setting: build_frontend_model sets the suite's.
    return BatchNormalization(epsilon=BN_EPSILON, name=name)


def basic_block(x, filters: int, *, stride: int = 1, name: str):
    """One basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU.

    Args:
        filters: output channels.
        stride: stride of the first 3x3 conv and of the projection shortcut.
        name: block name, e.g. ``conv3_block1``.
    """
    if stride > 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides=stride, padding="valid", name=f"{name}_0_conv")(x)
        shortcut = _bn(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    if stride > 1:
        y = keras.layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
        y = _conv(filters, 3, strides=stride, padding="valid", name=f"{name}_1_conv")(y)
    else:
        y = _conv(filters, 3, name=f"{name}_1_conv")(x)
    y = _bn(f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv(filters, 3, name=f"{name}_2_conv")(y)
    y = _bn(f"{name}_2_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def _resnet(
    name: str,
    include_top: bool,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes: int,
    classifier_activation,
) -> keras.Model:
    inputs = handwritten_inputs(name, weights, input_tensor, input_shape)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = _conv(64, 7, strides=2, padding="valid", name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding before the max-pool equals torchvision's -inf padding: x >= 0.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (blocks, filters) in enumerate(zip(_BLOCKS[name], _FILTERS), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = basic_block(x, filters, stride=stride, name=f"conv{stage}_block{block}")
    return handwritten_model(
        name, inputs, x, weights=weights, include_top=include_top, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
    )


def ResNet18(
    include_top=False,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
):
    """ResNet-18 with the ``keras.applications`` signature and layer names.

    Args:
        include_top: add global average pooling and the ``predictions`` layer.
        weights: ``None`` or a path to a weights file saved from this model;
            ``"imagenet"`` raises ``FrontendWeightsError`` (none published).
        input_tensor: optional tensor to build on.
        input_shape: ``(H, W, 3)``, ``None`` dims allowed (default any size).
        pooling: ``None``, ``"avg"`` or ``"max"`` when ``include_top`` is false.
        classes: classifier outputs with ``include_top``.
        classifier_activation: activation of the ``predictions`` layer.
    """
    return _resnet(
        "ResNet18", include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation,
    )


def ResNet34(
    include_top=False,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
):
    """ResNet-34 with the ``keras.applications`` signature; see ``ResNet18``."""
    return _resnet(
        "ResNet34", include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation,
    )


_APPLICATIONS = {"ResNet18": ResNet18, "ResNet34": ResNet34}


def build_resnet_basic(
    name, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None
):
    """Builds a ResNet-18/34 frontend.

    Args:
        name: "ResNet18" or "ResNet34".
        input_shape: ``(H, W, 3)``, ``None`` dims for any size.
        weights: ``None`` or a path to a weights file; ``"imagenet"`` raises
            ``FrontendWeightsError`` (Keras publishes none; see the module
            docstring).
        output_stride: 8, 16 or 32.
        multi_grid: ignored: DeepLab's multi-grid is defined for the three
            bottleneck blocks of a deep ResNet's last stage.
    """
    del multi_grid
    return build_frontend_model(
        _APPLICATIONS[name],
        name,
        endpoints(name),
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
    )
