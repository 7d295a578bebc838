"""EncNet: Zhang, Dana, Shi, Zhang, Wang, Tyagi, Agrawal, "Context Encoding for
Semantic Segmentation", CVPR 2018."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

CODEWORDS = 32
SE_WEIGHT = 0.2  # the semantic-encoding loss (the authors' training options, --se-weight)
AUX_WEIGHT = 0.2  # the auxiliary FCN head on stage 3 (the authors' training options, --aux-weight)


@register(
    "EncNet",
    default_frontend="ResNet101",
    default_output_stride=8,
    aux_loss_weights={"se": SE_WEIGHT, "aux": AUX_WEIGHT},
)
def build_encnet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    codewords: int = CODEWORDS,
    filters: int = 512,
    aux_filters: int = 256,
    dropout: float = 0.1,
) -> keras.Model:
    """EncNet: a dilated frontend and the context encoding module.

    Following the paper (Sec. 3, Fig. 2) and the authors' code where the paper is
    silent (head widths): the stage-4 features (stride 8) go through a 3x3
    conv-BN-ReLU to 512 channels; the context encoding module projects them by a
    1x1 conv-BN-ReLU, encodes them with K = 32 codewords and learned smoothing
    factors (`semseg_suite.layers.Encoding`), applies BN and ReLU to each encoded
    codeword and aggregates them into the encoded vector ``e``. A fully connected layer
    with a sigmoid turns ``e`` into channel scaling factors ``gamma``, and the
    features are scaled channel-wise, ``Y = X * gamma`` (the paper's equation; the
    authors' code adds the input back, ``X + X * gamma``). Then dropout 0.1, a 1x1
    classifier and bilinear upsampling.

    Training outputs (``auxiliary=True``): ``"se"``, class-presence logits
    (B, C) from a second fully connected layer on ``e``, trained by the
    semantic-encoding loss (binary cross-entropy against the classes present in
    each label map, computed inside the training step: `losses.presence_loss`),
    weight 0.2; ``"aux"``, an FCN head on stage 3 (3x3 conv-BN-ReLU to 256,
    dropout 0.1, 1x1 classifier), weight 0.2, as the authors train.

    Difference from the paper: the codewords are averaged, as in the authors' code,
    not summed as the paper's equation writes: the sum is K = 32 times larger, and
    at initialisation it saturates the sigmoid of ``gamma`` (most factors exactly
    1.0 in float32, measured on ResNet-18 features), which stops the gradient
    through the gate; the mean does not. Batch norm is not synchronised across GPUs
    unless ``--sync-bn`` is given (the paper's is).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper).
        codewords: K, the number of codewords.
        filters: channels of the head and of the encoding.
        aux_filters: channels of the auxiliary FCN head.
        dropout: dropout before the classifiers.
    """
    features = frontend_features(frontend)
    x = layers.conv_bn_relu(features["stride32"], filters, 3, name="enc_head")
    encoded = layers.conv_bn_relu(x, filters, 1, name="enc_project")
    encoded = layers.Encoding(codewords, name="enc_encoding")(encoded)
    encoded = layers.BatchNormalization(axis=1, momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPSILON,
                                       name="enc_encoding_bn")(encoded)  # one BN per codeword, as the code
    encoded = keras.layers.ReLU(name="enc_encoding_relu")(encoded)
    encoded = keras.layers.GlobalAveragePooling1D(name="enc_mean")(encoded)  # over the codewords (see doc)
    gamma = keras.layers.Dense(filters, activation="sigmoid", name="enc_gamma")(encoded)
    gamma = keras.layers.Reshape((1, 1, filters), name="enc_gamma_reshape")(gamma)
    scaled = keras.layers.Multiply(name="enc_scale")([x, gamma])
    scaled = keras.layers.Dropout(dropout, name="enc_dropout")(scaled)
    logits = layers.classifier(scaled, num_classes, reference=frontend.input)

    se_logits = keras.layers.Dense(num_classes, name="se_logits", dtype="float32")(encoded)
    aux = layers.conv_bn_relu(features["stride16"], aux_filters, 3, name="aux")
    aux = keras.layers.Dropout(dropout, name="aux_dropout")(aux)
    aux = layers.classifier(aux, num_classes, reference=frontend.input, name="aux_logits")
    return keras.Model(frontend.input, {"logits": logits, "se": se_logits, "aux": aux}, name="EncNet")
