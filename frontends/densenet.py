"""DenseNet frontends (Huang, Liu, van der Maaten, Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017): DenseNet-121/169/201 from
``keras.applications`` and a hand-written DenseNet-161.

All four are DenseNet-BC networks: a 7x7/2 convolution, BN, ReLU and a 3x3/2
max-pool, then four dense blocks (``conv2`` .. ``conv5``) joined by transition
layers (``pool2`` .. ``pool4``: BN, ReLU, 1x1 convolution halving the channels
(compression 0.5), 2x2/2 average pooling), and a final BN and ReLU. A dense layer
is BN, ReLU, 1x1 convolution to 4 x growth (the bottleneck), BN, ReLU, 3x3
convolution to ``growth`` channels, concatenated to its input.

=============  ======  =================  =============  ===================
name           growth  layers per block   stem channels  output channels
=============  ======  =================  =============  ===================
DenseNet121    32      6, 12, 24, 16      64             1024
DenseNet169    32      6, 12, 32, 32      64             1664
DenseNet201    32      6, 12, 48, 32      64             1920
DenseNet161    48      6, 12, 36, 24      96             2208
=============  ======  =================  =============  ===================

``keras.applications`` ships DenseNet-121/169/201 (with ImageNet weights) but not
DenseNet-161, and its ``DenseNet(blocks, ...)`` hard-codes growth 32 and a 64-channel
stem, so it cannot build DenseNet-161. ``DenseNet161()`` below builds it with the
``keras.applications`` signature and layer names (``conv1_conv``, ``pool1``,
``conv2_block1_0_bn``, ``conv2_block1_1_conv``, ``conv2_block1_concat``,
``pool2_conv``, ``pool2_pool``, ..., ``bn``, ``relu``), the layers of torchvision's
``densenet161`` one to one (no biases, BN epsilon 1e-5, Kaiming-normal
initialisation), so its trainable parameters are torchvision's headless count,
26,472,000. Keras publishes no ImageNet weights for it: ``weights="imagenet"``
raises ``FrontendWeightsError`` (``weights="auto"`` then falls back to random
initialisation); torchvision's (timm's) ``densenet161`` converts once with
`semseg_suite.weights` (``--frontend-weights timm:densenet161.tv_in1k``, or a
``.weights.h5`` file it wrote). All four expect
``torch`` preprocessing (``keras.applications.densenet.preprocess_input``: RGB in
[0, 1], ImageNet mean and std).

Endpoints. A DenseNet's features are "pre-activation": a dense block's output is a
concatenation of raw convolution outputs, which every consumer first passes
through BN and ReLU. Each endpoint is therefore the block output after the BN-ReLU
that the next transition (or the final ``bn``/``relu``) applies, at the block's
full width and before the transition's compression and pooling:

- ``stride2``: ``conv1_relu`` (the stem convolution, 64 or 96 channels);
- ``stride4``: ``pool2_relu`` (dense block ``conv2`` after the BN-ReLU of
  transition ``pool2``, before its 1x1 convolution and pooling);
- ``stride8``: ``pool3_relu``; ``stride16``: ``pool4_relu``;
- ``stride32``: ``relu``, the network's final BN-ReLU: what DenseASPP takes (its
  official code applies ``norm5`` and a ReLU before the first atrous layer).

Output stride. Strides past ``output_stride`` become dilation through the shared
clone machinery (``frontends.base.build_frontend_model``): at output stride 8 the
average pools of transitions ``pool3`` and ``pool4`` are removed (they become
``Identity`` layers of the same name) and the 3x3 convolutions of dense blocks
``conv4`` and ``conv5`` get rates 2 and 4, as in Yang et al. 2018 (DenseASPP) and
its official code, whose transitions at stride 1 have no pooling. (A 2x2 average
pool at stride 1 would keep the size too, but would blur the features by half a
pixel, which the pretrained network never saw.) At output stride 16 only ``pool4``
goes and ``conv5`` gets rate 2.

Odd sizes. The transitions' 2x2/2 average pools use ``same`` padding instead of
``valid``, so every endpoint is ``ceil(H / stride)`` (``valid``, like torchvision's
``AvgPool2d``, drops the last row and column of an odd-sized map). TensorFlow's
``same`` average pooling averages only the real pixels of a border window, so on
even-sized maps the result, and what pretrained weights see, is unchanged. Inputs
of 32x32 pixels and up work.
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model, check_output_stride, handwritten_inputs, handwritten_model
from semseg_suite.layers import BN_EPSILON, BatchNormalization

# name -> (growth rate, dense layers per block (conv2..conv5), stem channels)
CONFIGS = {
    "DenseNet121": (32, (6, 12, 24, 16), 64),
    "DenseNet161": (48, (6, 12, 36, 24), 96),
    "DenseNet169": (32, (6, 12, 32, 32), 64),
    "DenseNet201": (32, (6, 12, 48, 32), 64),
}
# Bottleneck width (x growth) and transition compression (Huang et al. 2017, Sec. 3).
BOTTLENECK = 4
COMPRESSION = 0.5

# Endpoint layer names by nominal stride (the same for every depth; see the
# module docstring).
ENDPOINTS = {2: "conv1_relu", 4: "pool2_relu", 8: "pool3_relu", 16: "pool4_relu", 32: "relu"}
# Transition average pools by the stride of their output.
TRANSITION_POOLS = {8: "pool2_pool", 16: "pool3_pool", 32: "pool4_pool"}




def _conv(filters, kernel_size, *, strides=1, padding="same", name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        # torchvision's DenseNet initialisation: Kaiming normal, fan in.
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_in", distribution="untruncated_normal"
        ),
        name=name,
    )


def _bn(name):
    # Momentum is a training setting: build_frontend_model sets the suite's.
    return BatchNormalization(epsilon=BN_EPSILON, name=name)


def dense_layer(x, growth_rate: int, *, name: str):
    """BN, ReLU, 1x1 conv to ``4 * growth_rate``, BN, ReLU, 3x3 conv, concatenation.

    Args:
        growth_rate: channels the layer adds.
        name: layer name, e.g. ``conv3_block4``.
    """
    y = _bn(f"{name}_0_bn")(x)
    y = keras.layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = _conv(BOTTLENECK * growth_rate, 1, name=f"{name}_1_conv")(y)
    y = _bn(f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv(growth_rate, 3, name=f"{name}_2_conv")(y)
    return keras.layers.Concatenate(name=f"{name}_concat")([x, y])


def transition(x, *, name: str):
    """BN, ReLU, 1x1 conv to half the channels, 2x2/2 average pooling."""
    x = _bn(f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    x = _conv(int(x.shape[-1] * COMPRESSION), 1, name=f"{name}_conv")(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def _densenet(
    name: str,
    include_top: bool,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes: int,
    classifier_activation,
) -> keras.Model:
    growth_rate, blocks, stem = CONFIGS[name]
    inputs = handwritten_inputs(name, weights, input_tensor, input_shape)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = _conv(stem, 7, strides=2, padding="valid", name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding before the max-pool equals torchvision's -inf padding: x >= 0.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, count in enumerate(blocks, start=2):
        for layer in range(1, count + 1):
            x = dense_layer(x, growth_rate, name=f"conv{stage}_block{layer}")
        if stage < 5:
            x = transition(x, name=f"pool{stage}")
    x = _bn("bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    return handwritten_model(
        name, inputs, x, weights=weights, include_top=include_top, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
    )


def DenseNet161(
    include_top=False,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
):
    """DenseNet-161 with the ``keras.applications`` signature and layer names.

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
    return _densenet(
        "DenseNet161", include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation,
    )


_APPLICATIONS = {
    "DenseNet121": keras.applications.DenseNet121,
    "DenseNet161": DenseNet161,
    "DenseNet169": keras.applications.DenseNet169,
    "DenseNet201": keras.applications.DenseNet201,
}


def transition_overrides(output_stride: int) -> dict[str, dict]:
    """Config overrides of the transition pools for one output stride.

    Pools whose output stride exceeds ``output_stride`` are removed (replaced by
    an ``Identity`` of the same name); the others get ``same`` padding.
    """
    return {
        pool: {"identity": True} if stride > output_stride else {"padding": "same"}
        for stride, pool in TRANSITION_POOLS.items()
    }


def build_densenet(
    name, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None
):
    """Builds a DenseNet frontend.

    Args:
        name: "DenseNet121", "DenseNet161", "DenseNet169" or "DenseNet201".
        input_shape: ``(H, W, 3)``, ``None`` dims for any size.
        weights: ``None``, ``"imagenet"`` (not for DenseNet161: see the module
            docstring) or a path to a weights file.
        output_stride: 8, 16 or 32.
        multi_grid: ignored: DeepLab's multi-grid is defined for ResNet blocks.
    """
    del multi_grid
    output_stride = check_output_stride(output_stride)
    return build_frontend_model(
        _APPLICATIONS[name],
        name,
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        extra_overrides=transition_overrides(output_stride),
    )
