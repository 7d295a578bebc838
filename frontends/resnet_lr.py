"""ResNet-101 with ExFuse's layer rearrangement (LR, Zhang et al. ECCV 2018).

ExFuse moves residual blocks from ``conv4`` (the paper's res-4) to the other
stages, so that the low stages, whose features its decoder fuses, get more layers:
``{3, 4, 23, 3}`` bottleneck blocks per stage (``conv2`` .. ``conv5``) become
``{8, 8, 9, 8}``, the same 33 blocks and so the same depth (101 layers). The paper does this to its
ResNeXt-101 and retrains it on ImageNet; ``ResNet101LR`` below does it to the
``keras.applications`` ResNet-101 (v1): the same bottleneck blocks (1x1, 3x3, 1x1
convolutions of 64/128/256/512 and 4x as many filters, the stage's stride on the
first 1x1 convolution of its first block, a projection shortcut there), the same
stem, biases, batch-norm epsilon and initialisers, and the same layer names
(``conv1_conv``, ``conv3_block8_2_conv``, ``conv5_block8_out``, ...). With
``{3, 4, 23, 3}`` blocks the builder gives ``keras.applications.ResNet101`` layer for
layer, so ``--frontend ResNet101LR`` against ``--frontend ResNet101
--frontend-weights none`` compares the two arrangements and nothing else.

The rearrangement is not free: ``conv4`` loses fourteen blocks of 1.12 M
parameters each but ``conv5`` gains five of 4.47 M (and ``conv2``, ``conv3`` five
and four of 0.07 M and 0.28 M), so the network has 50,799,360 parameters without
its classifier (50,696,320 trainable) against ResNet-101's 42,658,176 (42,552,832).
The FLOPs are ResNet-101's (79.1 G for a 512x512 image): past its stage's first,
every bottleneck block does the same multiply-accumulates, its channels doubling
as its resolution halves.

No ImageNet weights exist (the paper's are not published): ``weights="imagenet"``
raises ``FrontendWeightsError``, so ``weights="auto"`` falls back to random
initialisation. A weights file saved from this model loads. Inputs are
expected with ``caffe`` preprocessing, as for ResNet-101.
"""

from __future__ import annotations

import keras

from frontends.base import FrontendWeightsError, build_frontend_model, handwritten_inputs, handwritten_model
from semseg_suite.layers import BatchNormalization

# Blocks per stage (conv2..conv5): ExFuse's rearrangement of ResNet-101's (3, 4, 23, 3).
BLOCKS = (8, 8, 9, 8)
_FILTERS = (64, 128, 256, 512)  # bottleneck widths; blocks output 4x as many channels
_EPSILON = 1.001e-5  # keras.applications' ResNet batch norm


def endpoints(blocks=BLOCKS) -> dict[int, str]:
    """Endpoint layer names by nominal stride for blocks per stage ``blocks``."""
    c2, c3, c4, c5 = blocks
    return {
        2: "conv1_relu",
        4: f"conv2_block{c2}_out",
        8: f"conv3_block{c3}_out",
        16: f"conv4_block{c4}_out",
        32: f"conv5_block{c5}_out",
    }


def _bn(name):
    # Momentum is a training setting: build_frontend_model sets the suite's.
    return BatchNormalization(epsilon=_EPSILON, name=name)


def bottleneck_block(x, filters: int, *, stride: int = 1, shortcut: bool = False, name: str):
    """One ResNet v1 bottleneck block, as ``keras.applications``' ResNets build it.

    1x1 conv (with the stride), BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv to
    ``4 * filters``, BN, added to the shortcut, ReLU.

    Args:
        filters: bottleneck width.
        stride: stride of the first 1x1 conv and of the projection shortcut.
        shortcut: a 1x1 projection shortcut with BN (the first block of a stage)
            instead of the identity.
        name: block name, e.g. ``conv3_block1``.
    """
    if shortcut:
        residual = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        residual = _bn(f"{name}_0_bn")(residual)
    else:
        residual = x
    y = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = _bn(f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = _bn(f"{name}_2_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = _bn(f"{name}_3_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([residual, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def bottleneck_resnet(
    name: str,
    blocks,
    include_top: bool = False,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes: int = 1000,
    classifier_activation="softmax",
) -> keras.Model:
    """A ``keras.applications``-style ResNet v1 with ``blocks`` bottleneck blocks per stage.

    Args:
        name: the network's name, for messages and the model's name.
        blocks: blocks of ``conv2`` .. ``conv5``.
        weights: ``None`` or a path to a weights file saved from this model;
            ``"imagenet"`` raises ``FrontendWeightsError``.
        Other arguments: as in ``keras.applications.ResNet101``.
    """
    if weights == "imagenet":
        raise FrontendWeightsError(
            f"No ImageNet weights exist for {name} (ExFuse's ImageNet retraining of the "
            "rearranged network is not published): train it from random initialisation with "
            "--frontend-weights none (frontend_weights=None in Python), or pass a weights file "
            "saved from this model."
        )
    inputs = handwritten_inputs(name, weights, input_tensor, input_shape)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (count, filters) in enumerate(zip(blocks, _FILTERS), start=2):
        for block in range(1, count + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = bottleneck_block(
                x, filters, stride=stride, shortcut=block == 1, name=f"conv{stage}_block{block}"
            )
    return handwritten_model(
        name, inputs, x, weights=weights, include_top=include_top, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation,
    )


def ResNet101LR(
    include_top=False,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
):
    """ResNet-101 with ExFuse's {8, 8, 9, 8} blocks, with the ``keras.applications`` signature.

    Args:
        include_top: add global average pooling and the ``predictions`` layer.
        weights: ``None`` or a path to a weights file saved from this model;
            ``"imagenet"`` raises ``FrontendWeightsError`` (none exist).
        input_tensor: optional tensor to build on.
        input_shape: ``(H, W, 3)``, ``None`` dims allowed (default any size).
        pooling: ``None``, ``"avg"`` or ``"max"`` when ``include_top`` is false.
        classes: classifier outputs with ``include_top``.
        classifier_activation: activation of the ``predictions`` layer.
    """
    return bottleneck_resnet(
        "ResNet101LR", BLOCKS, include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation,
    )


def build_resnet101_lr(input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds the ``ResNet101LR`` frontend.

    Args:
        input_shape: ``(H, W, 3)``, ``None`` dims for any size.
        weights: ``None`` or a path to a weights file; ``"imagenet"`` raises
            ``FrontendWeightsError``.
        output_stride: 8, 16 or 32.
        multi_grid: ignored: DeepLab's multi-grid gives rates to the three blocks of
            ResNet-101's last stage, which has eight blocks here.
    """
    del multi_grid
    return build_frontend_model(
        ResNet101LR, "ResNet101LR", endpoints(), input_shape=input_shape, weights=weights,
        output_stride=output_stride,
    )
