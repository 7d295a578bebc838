"""BiSeNet: Yu, Wang, Peng, Gao, Yu, Sang, "BiSeNet: Bilateral Segmentation Network
for Real-time Semantic Segmentation", ECCV 2018."""

from __future__ import annotations

from typing import Sequence

import keras

from builders.base import PaperParams, Recipe, frontend_features, register
from semseg_suite import layers

# The joint loss (Sec. 3.3, "Loss function"): the principal loss plus alpha times
# each auxiliary loss on the context path, with alpha = 1.
AUX_WEIGHT = 1.0


def spatial_path(inputs, filters: Sequence[int] = (64, 64, 64), *, name: str = "spatial"):
    """Spatial path (Sec. 3.1): stride-2 conv-BN-ReLU layers, output stride 8."""
    x = inputs
    for i, width in enumerate(filters, start=1):
        x = layers.conv_bn_relu(x, width, 3, strides=2, name=f"{name}_conv{i}")
    return x


def attention_refinement(x, filters: int, *, name: str):
    """Attention refinement module (Sec. 3.2, Fig. 2(b)).

    A 3x3 conv-BN-ReLU to ``filters`` channels (the authors' code; it lets the
    stride-16 and stride-32 paths be added), then the paper's channel attention:
    global average pooling, 1x1 conv, BN, sigmoid, and the features multiplied by
    the resulting per-channel weights.
    """
    x = layers.conv_bn_relu(x, filters, 3, name=f"{name}_conv")
    weights = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    weights = layers.conv2d(filters, 1, name=f"{name}_attention_conv")(weights)
    weights = layers.batch_norm(f"{name}_attention_bn")(weights)
    weights = keras.layers.Activation("sigmoid", name=f"{name}_attention_sigmoid")(weights)
    return keras.layers.Multiply(name=f"{name}_multiply")([x, weights])


def feature_fusion(spatial, context, filters: int, *, name: str = "ffm"):
    """Feature fusion module (Sec. 3.3, Fig. 2(c)).

    Concatenates the spatial and context features, balances them with a
    conv-BN-ReLU to ``filters`` channels (1x1, as in the authors' code), then
    re-weights them SENet-style: global average pooling, 1x1 conv, ReLU, 1x1 conv,
    sigmoid; the weighted features are added to the unweighted ones.
    """
    x = keras.layers.Concatenate(name=f"{name}_concat")([spatial, context])
    x = layers.conv_bn_relu(x, filters, 1, name=f"{name}_conv")
    weights = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    weights = layers.conv2d(filters, 1, name=f"{name}_attention_conv1")(weights)
    weights = keras.layers.ReLU(name=f"{name}_attention_relu")(weights)
    weights = layers.conv2d(filters, 1, name=f"{name}_attention_conv2")(weights)
    weights = keras.layers.Activation("sigmoid", name=f"{name}_attention_sigmoid")(weights)
    weighted = keras.layers.Multiply(name=f"{name}_multiply")([x, weights])
    return keras.layers.Add(name=f"{name}_add")([x, weighted])


@register(
    "BiSeNet",
    default_frontend="ResNet18",
    default_output_stride=32,
    aux_loss_weights={"aux16": AUX_WEIGHT, "aux32": AUX_WEIGHT},
    paper_params=PaperParams(
        params=49.0e6,
        source="Yu et al. 2018, speed comparison table (FLOPs and parameters, 640x360)",
        num_classes=19,
        frontend="ResNet18",
        note=(
            "The paper's 49M for its ResNet-18 model cannot be reached by the network "
            "it describes: ResNet-18 itself has 11.2M parameters, and the spatial "
            "path, attention refinement and fusion modules add about 1.5M (the "
            "authors' released ResNet-18 BiSeNet has about 13M). Ours: 12.7M, and "
            "its 10.5G multiply-adds at 640x360 match the 10.8G FLOPs the same "
            "table reports, so the architecture is the paper's."
        ),
    ),
    recipes={
        "paper": Recipe(
            source="Yu et al. 2018, Sec. 4 (implementation protocol)",
            note=(
                "The paper's scales {0.75, 1, 1.5, 1.75, 2} are drawn here from the range 0.75-2. The "
                "crop depends on the dataset (Cityscapes 1024x1024, CamVid 960x720, COCO-Stuff 640x640: "
                "set --crop-height/--crop-width). No epoch count is stated."
            ),
            optimizer="sgd",
            learning_rate=0.025,
            momentum=0.9,
            lr_schedule="poly",
            weight_decay=1e-4,
            batch_size=16,
            scale_range=(0.75, 2.0),
            h_flip=True,
        )
    },
)
def build_bisenet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    spatial_filters: Sequence[int] = (64, 64, 64),
    context_filters: int = 128,
    fusion_filters: int = 256,
) -> keras.Model:
    """BiSeNet: a high-resolution spatial path beside a fast-downsampling context path.

    Spatial path (Sec. 3.1): three stride-2 conv-BN-ReLU layers on the image,
    output stride 8. The paper gives neither kernel sizes nor widths; the
    authors' code uses 64 channels per layer (a 7x7 first conv, then 3x3, and an
    extra 1x1 conv-BN-ReLU to 128); we build the paper's three layers as 3x3
    convs of 64 channels and leave out the fourth, 1x1 layer.

    Context path (Sec. 3.2): the frontend (ResNet-18 by default, one of the
    paper's two backbones) with a global average pooling tail on its stride-32
    features. An attention refinement module (``attention_refinement``) refines
    the stride-16 and the stride-32 features. The paper fuses the last two
    stages and the global context "U-shape" style without details; as in the
    authors' code: the pooled context (1x1 conv-BN-ReLU to ``context_filters``)
    is added to the refined stride-32 features, the sum upsampled to the
    stride-16 features and passed through a 3x3 conv-BN-ReLU, added to the
    refined stride-16 features, upsampled to the spatial path's resolution and
    passed through another 3x3 conv-BN-ReLU: the context path's output.

    Feature fusion module (Sec. 3.3, ``feature_fusion``): concatenation, a
    conv-BN-ReLU to ``fusion_filters`` (256, the authors' ResNet-18 setting;
    a fixed width, not the class count), and a global-pool attention branch
    whose weighting is added back. A 1x1 conv to the classes and bilinear
    upsampling (8x) to the input give float32 logits.

    Auxiliary heads (Sec. 3.3, "Loss function"): the context path is deeply
    supervised at its two fusion stages, where the authors' code attaches them:
    ``aux32`` on the stride-32 fusion (upsampled to stride 16 and refined) and
    ``aux16`` on the stride-16 fusion (the context path's output). Each is a 1x1
    conv to the classes upsampled to the input, with loss weight alpha = 1 (the
    paper's joint loss); ``build_model`` drops them unless ``auxiliary=True``.

    Differences from the paper and the authors' code:
      * The attention refinement module starts with the authors' 3x3
        conv-BN-ReLU to 128 channels (Fig. 2(b) has none), without which the
        stride-16 and stride-32 paths (256 and 512 channels on ResNet-18) could
        not be added.
      * The authors' code puts a 3x3 conv-BN-ReLU (64 channels for the main
        head, 256 for the auxiliary ones) before each classifier; the paper
        shows none, and neither do we.
      * Upsampling resizes to the reference tensor (bilinear, half-pixel
        centres, not PyTorch's ``align_corners=True``) so any input size works.
        BN momentum 0.9 (see ``semseg_suite.layers``).
      * The paper's lighter backbone, Xception39, is not a registered frontend.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        spatial_filters: widths of the spatial path's three stride-2 layers.
        context_filters: width of the context path's fusion (128).
        fusion_filters: width of the feature fusion module (256).
    """
    features = frontend_features(frontend)
    inputs = frontend.input
    spatial = spatial_path(inputs, spatial_filters, name="spatial")

    stride32, stride16 = features["stride32"], features["stride16"]
    context = keras.layers.GlobalAveragePooling2D(keepdims=True, name="context_pool")(stride32)
    context = layers.conv_bn_relu(context, context_filters, 1, name="context_global")
    context = layers.ResizeLike(name="context_global_resize")([context, stride32])

    x = attention_refinement(stride32, context_filters, name="arm32")
    x = keras.layers.Add(name="context32_add")([x, context])
    x = layers.ResizeLike(name="context32_upsample")([x, stride16])
    context32 = layers.conv_bn_relu(x, context_filters, 3, name="context32_refine")

    x = attention_refinement(stride16, context_filters, name="arm16")
    x = keras.layers.Add(name="context16_add")([x, context32])
    x = layers.ResizeLike(name="context16_upsample")([x, spatial])
    context16 = layers.conv_bn_relu(x, context_filters, 3, name="context16_refine")

    x = feature_fusion(spatial, context16, fusion_filters, name="ffm")
    outputs = {
        "logits": layers.classifier(x, num_classes, reference=inputs),
        "aux16": layers.classifier(context16, num_classes, reference=inputs, name="aux16"),
        "aux32": layers.classifier(context32, num_classes, reference=inputs, name="aux32"),
    }
    return keras.Model(inputs, outputs, name="BiSeNet")
