"""DeepLabV3: Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for
Semantic Image Segmentation", arXiv:1706.05587, 2017."""

from __future__ import annotations

import keras

from builders.base import Recipe, frontend_features, register
from semseg_suite import layers


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP rates (6, 12, 18) at output stride 16, scaled with the output stride."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


# Sec. 4.1, training protocol: the first stage (PASCAL VOC train_aug, output stride 16).
PAPER_RECIPE = Recipe(
    source="Chen et al. 2017 (DeepLabv3), Sec. 4.1",
    note=(
        "Momentum 0.9 is DeepLab v1/v2's (v3 does not restate it); no weight decay is stated. Not done: "
        "the second stage (BN frozen, output stride 8, trainval, lr 0.001, another 30K iterations), and "
        "BN decay 0.9997 (the suite's BN momentum is 0.9)."
    ),
    optimizer="sgd",
    learning_rate=0.007,
    momentum=0.9,
    lr_schedule="poly",
    batch_size=16,
    crop_height=513,
    crop_width=513,
    iterations=30_000,
    scale_range=(0.5, 2.0),
    h_flip=True,
)


@register(
    "DeepLabV3",
    default_frontend="ResNet101",
    default_output_stride=16,
    multi_grid=(1, 2, 4),
    recipes={"paper": PAPER_RECIPE},
)
def build_deeplabv3(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 16,
    atrous_rates=None,
    aspp_filters: int = 256,
    dropout: float = 0.1,
) -> keras.Model:
    """DeepLabV3: a dilated frontend and ASPP with image-level features.

    Following the paper (Sec. 3.3 and 4.2): ASPP on the frontend's last features
    with a 1x1 branch, three 3x3 atrous branches at rates (6, 12, 18) for output
    stride 16 (doubled at 8), and an image-pooling branch (global average pool,
    1x1 conv, BN, bilinear upsampling), all 256 channels with BN and ReLU;
    concatenation, a 1x1 conv-BN-ReLU to 256, dropout 0.1 (keep 0.9 in the official
    code), a 1x1 conv to the classes, and bilinear upsampling to the input. With a
    ResNet frontend, the last stage (the paper's block4) uses multi-grid unit rates
    (1, 2, 4) times its atrous rate: the registry asks the frontend for them.

    Differences from the paper: BN momentum 0.9 instead of decay 0.9997 (see
    ``semseg_suite.layers``); atrous rates at output stride 32 are scaled to
    (3, 6, 9) rather than left undefined.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8, 16 or 32).
        atrous_rates: override the ASPP rates.
        aspp_filters: channels of the ASPP branches and projection (256).
        dropout: dropout after the ASPP projection.
    """
    features = frontend_features(frontend)
    rates = tuple(atrous_rates or default_atrous_rates(output_stride))
    x = layers.aspp(
        features["stride32"], filters=aspp_filters, rates=rates, dropout=dropout, name="aspp"
    )
    logits = layers.classifier(x, num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="DeepLabV3")
