"""MobileUNet and MobileUNet-Skip: the old Semantic Segmentation Suite's
Encoder-Decoder with MobileNet's depthwise-separable blocks
(GeorgeSeif/Semantic-Segmentation-Suite, ``models/MobileUNet.py``). There is no
paper; the old suite's code is the reference for the layout."""

from __future__ import annotations

import keras

from builders.base import register
from builders.encoder_decoder import encoder_decoder
from semseg_suite import layers


def _build(frontend, num_classes, input_shape, kernel_size, *, skip, name):
    if frontend is not None:
        raise ValueError(f"{name} has its own encoder and takes no frontend")

    def first_block(x, filters, *, name):
        return layers.conv_bn_relu(x, filters, kernel_size, name=name)

    def separable_block(x, filters, *, name):
        return layers.separable_conv_bn_relu(x, filters, kernel_size, name=name)

    return encoder_decoder(
        keras.Input(input_shape),
        num_classes,
        conv_block=separable_block,
        first_block=first_block,
        skip=skip,
        name=name,
    )


@register("MobileUNet", default_frontend=None, takes_frontend=False)
def build_mobile_unet(
    frontend: None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    kernel_size: int = 3,
) -> keras.Model:
    """MobileUNet: Encoder-Decoder built from depthwise-separable blocks.

    The old Semantic Segmentation Suite's own model (no paper); despite the name
    this variant has no skips (see ``build_mobile_unet_skip``). The layout is
    ``builders.encoder_decoder``'s: encoder 2x64, pool, 2x128, pool, 3x256, pool,
    3x512, pool, 3x512, pool; decoder stages of a 3x3 stride-2 transposed
    conv-BN-ReLU (regular, not separable, as in the old suite) and blocks
    512 + (512, 512, 512), 512 + (512, 512, 256), 256 + (256, 256, 128),
    128 + (128, 64), 64 + (64, 64); a 1x1 conv to the classes. The first block is
    a regular conv-BN-ReLU; every other block is MobileNet's depthwise-separable
    unit: ``kernel_size`` depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU
    (``layers.separable_conv_bn_relu``; names ``{block}_depthwise``,
    ``{block}_pointwise_conv``).

    Where we differ from the old code:

    - Its blocks ignored their kernel size: the depthwise convs were hard-coded
      3x3 and the first block was hard-coded 1x1 (a pointwise conv on the RGB
      image). Here every depthwise conv and the first conv use ``kernel_size``
      (default 3, which the old depthwise convs used).
    - Convolutions have no bias (BN follows each one); He-normal initialisation;
      BN momentum 0.9 (``semseg_suite.layers``).
    - Same-padded pooling and resizing of each upsampled tensor to the size of the
      encoder tensor of its level, so any input size works (see
      ``builders.encoder_decoder``).

    Args:
        frontend: must be ``None`` (the model has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; ``None`` sizes accept any size.
        kernel_size: kernel of the first conv and of every depthwise conv (3).
    """
    return _build(frontend, num_classes, input_shape, kernel_size, skip=False, name="MobileUNet")


@register("MobileUNet-Skip", default_frontend=None, takes_frontend=False)
def build_mobile_unet_skip(
    frontend: None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    kernel_size: int = 3,
) -> keras.Model:
    """MobileUNet-Skip: MobileUNet plus additive encoder-to-decoder skips.

    The network, hyperparameters and differences from the old suite's code are
    those of ``build_mobile_unet``. In addition, as in the old suite, after the
    blocks of decoder stages 1-4 the pooled (post-pool) output of encoder stages
    4, 3, 2 and 1 is added (``dec{i}_skip_add``): addition, not U-Net's
    concatenation.

    Args:
        frontend: must be ``None`` (the model has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; ``None`` sizes accept any size.
        kernel_size: kernel of the first conv and of every depthwise conv (3).
    """
    return _build(
        frontend, num_classes, input_shape, kernel_size, skip=True, name="MobileUNet-Skip"
    )
