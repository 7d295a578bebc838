"""DeepLab v2: Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image
Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected
CRFs", TPAMI 2018 (arXiv:1606.00915, 2016)."""

from __future__ import annotations

import keras

from builders.base import PaperParams, Recipe, frontend_features, register
from semseg_suite import layers

ASPP_L_RATES = (6, 12, 18, 24)  # Sec. 4.1.2, Table 3 (ASPP-L); ASPP-S is (2, 4, 8, 12)
LARGE_FOV_RATE = 12
FC_CHANNELS = 1024  # fc6 and fc7 of the VGG-16 variants
DROPOUT = 0.5


def _paper_recipe(learning_rate: float, rate_source: str) -> Recipe:
    """Sec. 4.1's training (poly, batch 10, 20K iterations, Table 1) at the variant's rate."""
    return Recipe(
        source=f"Chen et al. 2018 (DeepLab v2), Sec. 4.1 and Table 1; learning rate: {rate_source}",
        note=(
            "Batch 10 and 20K iterations are Table 1's best schedule. Not done: the classifier's 10x "
            "learning rate (the whole network trains at the base rate) and the dense CRF."
        ),
        optimizer="sgd",
        learning_rate=learning_rate,
        momentum=0.9,
        lr_schedule="poly",
        weight_decay=5e-4,
        batch_size=10,
        crop_height=321,
        crop_width=321,
        iterations=20_000,
        scale_range=(0.5, 1.5),
    )


def _fc_branch(x, num_classes, rate, channels, dropout, name):
    """VGG-16's fc6 (3x3 at `rate`) -> fc7 (1x1) -> fc8 (classes), ReLU and dropout after fc6 and fc7."""
    for index, kernel in ((6, 3), (7, 1)):
        x = layers.conv2d(channels, kernel, rate=rate if index == 6 else 1, name=f"{name}_fc{index}", use_bias=True)(x)
        x = keras.layers.ReLU(name=f"{name}_fc{index}_relu")(x)
        x = keras.layers.Dropout(dropout, name=f"{name}_fc{index}_dropout")(x)
    return keras.layers.Conv2D(num_classes, 1, name=f"{name}_fc8")(x)


def _is_vgg(frontend):
    return frontend.name.lower().startswith("vgg")


@register(
    "DeepLabV2-ASPP",
    default_frontend="ResNet101",
    default_output_stride=8,
    recipes={"paper": _paper_recipe(2.5e-4, "2.5e-4, the authors' released ResNet-101 solver")},
)
def build_deeplabv2_aspp(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    atrous_rates=ASPP_L_RATES,
    fc_channels: int | str | None = "auto",
    dropout: float = DROPOUT,
) -> keras.Model:
    """DeepLab v2 with ASPP-L: parallel atrous branches whose class scores are summed.

    Following the paper (Sec. 3.3, Fig. 7, Table 3) and its released prototxts:
    on the frontend's last features at output stride 8, four parallel branches at
    rates 6, 12, 18 and 24. On ResNet-101 each branch is one 3x3 atrous convolution
    straight to the class scores (``fc1_c0..c3`` of the ResNet prototxt); on VGG-16
    each branch is fc6 (3x3 atrous, 1024) -> fc7 (1x1, 1024) -> fc8 (classes) with
    ReLU and dropout 0.5 after fc6 and fc7. The branch scores are summed and
    bilinearly upsampled to the input (the paper upsamples by 8 at test time and
    downsamples the labels in training; upsampling the scores is the same model).

    Not built: the paper's multi-scale input fusion (MSC, max over three scales) and
    the dense CRF post-processing (out of scope); batch norm follows the frontend,
    the heads have none (as in the paper).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper).
        atrous_rates: rates of the branches (ASPP-L; ``(2, 4, 8, 12)`` is ASPP-S).
        fc_channels: channels of each branch's fc6/fc7 (the VGG-16 form), or None
            for one convolution straight to the classes (the ResNet-101 form);
            ``"auto"``: 1024 on a VGG frontend, else None.
        dropout: dropout after fc6 and fc7 (VGG-16 form).
    """
    features = frontend_features(frontend)["stride32"]
    if fc_channels == "auto":
        fc_channels = FC_CHANNELS if _is_vgg(frontend) else None
    scores = []
    for index, rate in enumerate(atrous_rates):
        name = f"aspp_branch{index}"
        if fc_channels:
            scores.append(_fc_branch(features, num_classes, rate, fc_channels, dropout, name))
        else:
            scores.append(layers.conv2d(num_classes, 3, rate=rate, name=f"{name}_conv", use_bias=True)(features))
    x = keras.layers.Add(name="aspp_sum")(scores)
    logits = layers.ResizeLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name="DeepLabV2-ASPP")


@register(
    "DeepLabV2-LargeFOV",
    default_frontend="VGG16",
    default_output_stride=8,
    paper_params=PaperParams(
        20.5e6, "Chen et al. 2015 (DeepLab v1, ICLR), Table 2 (DeepLab-CRF-LargeFOV)", num_classes=21, frontend="VGG16"
    ),
    recipes={"paper": _paper_recipe(1e-3, "1e-3, DeepLab v1 (Chen et al. 2015, Sec. 4), kept in v2")},
)
def build_deeplabv2_large_fov(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    rate: int = LARGE_FOV_RATE,
    fc_channels: int = FC_CHANNELS,
    dropout: float = DROPOUT,
) -> keras.Model:
    """DeepLab-LargeFOV: one fc6 (3x3, rate 12, 1024) -> fc7 (1x1, 1024) -> fc8 head.

    The paper's single-branch baseline (Sec. 4.1.2, Table 3; DeepLab v1's
    LargeFOV): VGG-16 at output stride 8 (pool4 and pool5 with stride 1, conv5
    dilated by 2: the frontend's output-stride option), fc6 subsampled to a 3x3
    kernel at rate 12 with 1024 channels, fc7 1x1 with 1024, ReLU and dropout 0.5
    after each, fc8 to the classes, bilinear upsampling to the input. The dense CRF
    is out of scope.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper).
        rate: fc6's atrous rate.
        fc_channels: channels of fc6 and fc7.
        dropout: dropout after fc6 and fc7.
    """
    features = frontend_features(frontend)["stride32"]
    x = _fc_branch(features, num_classes, rate, fc_channels, dropout, "largefov")
    logits = layers.ResizeLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name="DeepLabV2-LargeFOV")
