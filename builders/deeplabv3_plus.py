"""DeepLabV3+: Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation", ECCV 2018."""

from __future__ import annotations

import dataclasses

import keras

from builders.base import frontend_features, register
from builders.deeplabv3 import PAPER_RECIPE, default_atrous_rates
from semseg_suite import layers


@register(
    "DeepLabV3_plus",
    default_frontend="Xception",
    default_output_stride=16,
    recipes={
        "paper": dataclasses.replace(
            PAPER_RECIPE,  # DeepLabv3's protocol, which v3+ follows
            source="Chen et al. 2018 (DeepLabv3+), Sec. 4, following DeepLabv3's Sec. 4.1",
            note=(
                "The 30K iterations are DeepLabv3's, momentum 0.9 DeepLab v1/v2's; no weight decay is "
                "stated. Not done: BN decay 0.9997 (the suite's BN momentum is 0.9)."
            ),
        )
    },
)
def build_deeplabv3_plus(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 16,
    atrous_rates=None,
    aspp_filters: int = 256,
    low_level_filters: int = 48,
    decoder_filters: int = 256,
    dropout: float = 0.1,
) -> keras.Model:
    """DeepLabV3+: DeepLabV3's ASPP as encoder head plus a light decoder.

    Encoder: ASPP with depthwise-separable 3x3 atrous branches (rates 6, 12, 18 at
    output stride 16, doubled at 8), a 1x1 branch and image pooling, 256 channels
    each with BN and ReLU, concatenated, projected by a 1x1 conv to 256 and dropout
    0.1, as in the official code. Decoder (Sec. 3.1 and 4.1): the stride-4 features
    projected to 48 channels by a 1x1 conv-BN-ReLU, concatenated with the encoder
    output upsampled (bilinear) to their size, two 3x3 depthwise-separable
    conv-BN-ReLU of 256 channels (separable as in the official code), a 1x1 conv to
    the classes and bilinear upsampling to the input. Upsampling resizes to the
    reference tensor rather than by a fixed 4x, so odd sizes work.

    The paper's frontend is the aligned Xception-65; the default here is
    ``keras.applications``' original Xception (see ``frontends.xception``). The
    paper does not use multi-grid for DeepLabV3+, nor do we. BN momentum is 0.9
    rather than decay 0.9997 (see ``semseg_suite.layers``).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8, 16 or 32).
        atrous_rates: override the ASPP rates.
        aspp_filters: channels of the ASPP branches and projection (256).
        low_level_filters: channels of the stride-4 projection (48).
        decoder_filters: channels of the two decoder convolutions (256).
        dropout: dropout after the ASPP projection.
    """
    features = frontend_features(frontend)
    rates = tuple(atrous_rates or default_atrous_rates(output_stride))
    x = layers.aspp(
        features["stride32"],
        filters=aspp_filters,
        rates=rates,
        separable=True,
        dropout=dropout,
        name="aspp",
    )
    low_level = layers.conv_bn_relu(
        features["stride4"], low_level_filters, 1, name="decoder_low_level"
    )
    x = layers.ResizeLike(name="decoder_upsample")([x, low_level])
    x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
    x = layers.separable_conv_bn_relu(x, decoder_filters, 3, name="decoder_conv1")
    x = layers.separable_conv_bn_relu(x, decoder_filters, 3, name="decoder_conv2")
    logits = layers.classifier(x, num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="DeepLabV3_plus")
