"""PSPNet: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017."""

from __future__ import annotations

from typing import Sequence

import keras

from builders.base import Recipe, frontend_features, register
from semseg_suite import layers

# Deep supervision on the stride-16 stage (res4b22 in the paper), Sec. 3.3 and 4.1.
AUX_WEIGHT = 0.4


@register(
    "PSPNet",
    default_frontend="ResNet101",
    default_output_stride=8,
    aux_loss_weights={"aux": AUX_WEIGHT},
    recipes={
        "paper": Recipe(
            source="Zhao et al. 2017, Sec. 4.1",
            note=(
                "The Gaussian blur (on ImageNet and VOC) has no probability or sigma in the paper: 0.5 "
                "and the suite's sigma are ours. The iterations depend on the dataset (150K ADE20K, 30K "
                "VOC, 90K Cityscapes: set --num-epochs); no crop is stated (the authors' models: 473, "
                "Cityscapes 713)."
            ),
            optimizer="sgd",
            learning_rate=0.01,
            momentum=0.9,
            lr_schedule="poly",
            weight_decay=1e-4,
            batch_size=16,
            scale_range=(0.5, 2.0),
            h_flip=True,
            rotation=10.0,
            blur_prob=0.5,
        )
    },
)
def build_pspnet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    head_filters: int = 512,
    aux_filters: int = 256,
    dropout: float = 0.1,
) -> keras.Model:
    """PSPNet: a dilated frontend, the pyramid pooling module and a conv head.

    Frontend: a ResNet whose last two stages are dilated (rates 2 and 4), output
    stride 8 (Sec. 3.2, 4.1). Pyramid pooling module (Fig. 3): adaptive average
    pooling of the stride-32 features to 1x1, 2x2, 3x3 and 6x6 bins, each level a
    1x1 conv-BN-ReLU to a quarter of the input channels (512 of ResNet's 2048),
    bilinearly upsampled and concatenated with the features (4096 channels).
    Head, as in the authors' released models: 3x3 conv-BN-ReLU to 512, dropout
    0.1, 1x1 conv to the classes, bilinear upsampling to the input. Auxiliary
    head for deep supervision (Sec. 3.3) on the stride-16 stage (``res4b22``):
    3x3 conv-BN-ReLU to 256, dropout 0.1, 1x1 conv to the classes, upsampled;
    its loss weighs 0.4 (Sec. 4.1), and it is dropped from inference models.
    Training recipe from Sec. 4.1 (poly learning rate, base 0.01, power 0.9;
    momentum 0.9, weight decay 1e-4): the registered ``paper`` recipe.

    Pooling is adaptive (``layers.AdaptiveAveragePooling2D``, bins of
    ``[floor(i n / b), ceil((i + 1) n / b))``), so every input size works; the
    authors' Caffe model uses fixed kernels for 473x473 crops (60x60 features),
    where both agree.

    Differences from the paper: the paper's ResNet replaces the 7x7 stem by three
    3x3 convolutions (the "deep stem" of its released models); the default here
    is ``keras.applications``' ResNet101, whose ImageNet weights load by name.
    BN momentum 0.9 (see ``semseg_suite.layers``).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper).
        bins: pyramid levels (1, 2, 3, 6).
        head_filters: channels of the head's 3x3 conv (512).
        aux_filters: channels of the auxiliary head's 3x3 conv (256).
        dropout: dropout before both classifiers (0.1).
    """
    features = frontend_features(frontend)
    x = layers.pyramid_pooling(features["stride32"], bins=bins, name="ppm")
    x = layers.conv_bn_relu(x, head_filters, 3, name="head")
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.classifier(x, num_classes, reference=frontend.input)

    aux = layers.conv_bn_relu(features["stride16"], aux_filters, 3, name="aux_head")
    aux = keras.layers.Dropout(dropout, name="aux_head_dropout")(aux)
    aux = layers.classifier(aux, num_classes, reference=frontend.input, name="aux")
    return keras.Model(frontend.input, {"logits": logits, "aux": aux}, name="PSPNet")
