"""FRRN-A and FRRN-B: Pohlen, Hermans, Mathias, Leibe, "Full-Resolution Residual
Networks for Semantic Segmentation in Street Scenes", CVPR 2017 (arXiv 1611.08323).

Two streams run side by side: a 32-channel residual stream that stays at the full
image resolution, and a pooling stream that goes down and back up like an
encoder-decoder. Every full-resolution residual unit (FRRU) reads both and writes
a residual back into the full-resolution stream.
"""

from __future__ import annotations

import keras

from builders.base import register
from semseg_suite import layers
from semseg_suite.layers import CropLike

# Channels of the full-resolution residual stream ("lanes" in the authors' code).
RESIDUAL_CHANNELS = 32
# Channels of the first convolution and of the residual units (RU 48).
BASE_CHANNELS = 48

# The paper's Table 1 as (number of FRRUs, pooling-stream channels) per stage; the
# stage at index i works at scale 2 ** (i + 1) on the way down. The decoder
# stages go back up, the last one at scale 2.
FRRN_A_ENCODER = ((3, 96), (4, 192), (2, 384), (2, 384))
FRRN_A_DECODER = ((2, 192), (2, 192), (2, 96))
FRRN_B_ENCODER = FRRN_A_ENCODER + ((2, 384),)
FRRN_B_DECODER = ((2, 192), (2, 192), (2, 192), (2, 96))


def residual_unit(x, filters: int, *, name: str):
    """Residual unit (RU): 3x3 conv, BN, ReLU, 3x3 conv, BN, added to the input.

    No ReLU after the addition (as in the authors' code). When the input has a
    different width, the shortcut is a linear 1x1 projection (no BN, no bias).
    """
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.conv2d(filters, 1, name=f"{name}_shortcut_conv")(x)
    y = layers.conv_bn_relu(x, filters, 3, name=f"{name}_conv1")
    y = layers.conv2d(filters, 3, name=f"{name}_conv2_conv")(y)
    y = layers.batch_norm(f"{name}_conv2_bn")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def frru(pooling, residual, filters: int, *, scale: int, name: str):
    """Full-resolution residual unit (FRRU, Fig. 3) at ``scale``.

    The residual stream, max-pooled by ``scale`` (``scale x scale`` windows and
    strides), is concatenated with the pooling stream; two 3x3 conv-BN-ReLU with
    ``filters`` channels give the new pooling stream. A 1x1 convolution with bias
    (no BN) maps it to the 32 channels of the residual stream; it is unpooled by
    ``scale`` (nearest-neighbour repetition, as in the authors' code) and added to
    the residual stream.

    Returns:
        ``(pooling, residual)``: both streams after the unit.
    """
    pooled = keras.layers.MaxPooling2D(
        scale, strides=scale, padding="same", name=f"{name}_pool"
    )(residual)
    y = keras.layers.Concatenate(name=f"{name}_concat")([pooling, pooled])
    y = layers.conv_bn_relu(y, filters, 3, name=f"{name}_conv1")
    pooling = layers.conv_bn_relu(y, filters, 3, name=f"{name}_conv2")
    z = layers.conv2d(RESIDUAL_CHANNELS, 1, use_bias=True, name=f"{name}_residual_conv")(pooling)
    z = keras.layers.UpSampling2D(scale, interpolation="nearest", name=f"{name}_unpool")(z)
    z = CropLike(name=f"{name}_crop")([z, residual])
    residual = keras.layers.Add(name=f"{name}_add")([residual, z])
    return pooling, residual


def _frrn(num_classes: int, input_shape, encoder, decoder, name: str) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = layers.conv_bn_relu(inputs, BASE_CHANNELS, 5, name="stem")
    for i in (1, 2, 3):
        x = residual_unit(x, BASE_CHANNELS, name=f"stem_ru{i}")
    residual = layers.conv2d(RESIDUAL_CHANNELS, 1, name="split_conv")(x)
    residual = layers.batch_norm("split_bn")(residual)

    # Pooling-stream tensors right after each 2x2 max-pool: the size references
    # of the decoder stage at the same scale.
    pooling = x
    references = [x]
    for stage, (units, filters) in enumerate(encoder, start=1):
        pooling = keras.layers.MaxPooling2D(2, padding="same", name=f"enc{stage}_pool")(pooling)
        references.append(pooling)
        for unit in range(1, units + 1):
            pooling, residual = frru(
                pooling, residual, filters, scale=2**stage, name=f"enc{stage}_frru{unit}"
            )

    for index, (units, filters) in enumerate(decoder):
        stage = len(encoder) - 1 - index  # scale 2 ** stage
        pooling = layers.ResizeLike(name=f"dec{stage}_upsample")([pooling, references[stage]])
        for unit in range(1, units + 1):
            pooling, residual = frru(
                pooling, residual, filters, scale=2**stage, name=f"dec{stage}_frru{unit}"
            )

    pooling = layers.ResizeLike(name="merge_upsample")([pooling, residual])
    x = keras.layers.Concatenate(name="merge_concat")([pooling, residual])
    for i in (1, 2, 3):
        x = residual_unit(x, BASE_CHANNELS, name=f"merge_ru{i}")
    logits = layers.classifier(x, num_classes, reference=inputs)
    return keras.Model(inputs, logits, name=name)


@register("FRRN-A", default_frontend=None, takes_frontend=False)
def build_frrn_a(
    frontend: keras.Model | None, num_classes: int, *, input_shape=(None, None, 3)
) -> keras.Model:
    """FRRN-A: a full-resolution residual network (Pohlen et al. 2017).

    Layout (the paper's Table 1 and Fig. 3; the authors' code agrees): 5x5 conv
    to 48, BN, ReLU; three residual units (RU 48, ``residual_unit``); a 1x1 conv
    to 32 and BN (no ReLU) split off the full-resolution residual stream, while
    the RU output goes on as the pooling stream.
    Encoder: per stage a 2x2 max-pool of the pooling stream, then full-resolution
    residual units (FRRU, ``frru``): 3 x FRRU 96 at scale 2, 4 x FRRU 192 at 4,
    2 x FRRU 384 at 8, 2 x FRRU 384 at 16 (``FRRN_A_ENCODER``). Decoder: per stage
    a 2x bilinear upsampling of the pooling stream, then 2 x FRRU 192 at scale 8,
    2 x FRRU 192 at 4, 2 x FRRU 96 at 2 (``FRRN_A_DECODER``). Finally the pooling
    stream is upsampled 2x to full resolution and concatenated with the residual
    stream (96 + 32 channels); three RU 48 follow (the first with a linear 1x1
    projection shortcut from 128 to 48 channels) and a 1x1 conv with bias gives
    the float32 class logits. The residual stream keeps 32 channels at full
    resolution throughout; each FRRU max-pools it by exactly its scale and
    unpools its 32-channel residual by the same factor.

    The paper trains from scratch with a bootstrapped cross-entropy loss (the
    mean over the K worst-predicted pixels of each image; K = 512 * 64 in the
    authors' code) and Adam. The loss is a training setting, not part of the
    model.

    Differences from the paper and the authors' code:
      * "Unpooling" follows the authors' code: bilinear 2x upsampling in the
        pooling stream, nearest-neighbour repetition of each FRRU's residual.
      * Any input size: max-pools are same-padded (``ceil(H / 2)`` rows); the
        pooling stream is upsampled by resizing it bilinearly to the encoder's
        pooling-stream map of the same scale (exactly 2x whenever the sizes
        divide), and each FRRU's repeated residual is cropped at the
        bottom/right to the residual stream (``CropLike``), which keeps every
        pixel under the pooling window it came from. The authors' code needs
        sizes divisible by 16 (32 for FRRN-B).
      * Convolutions followed by BN have no bias; BN uses the suite's settings
        (momentum 0.9, eps 1e-5). The authors' block-wise backpropagation (to
        save GPU memory) is a training detail with no effect on the model.
      * We found no parameter count in the paper, so none is registered. Ours
        with 19 classes (Cityscapes) is 17,762,323.

    Args:
        frontend: must be ``None``: FRRN has its own encoder.
        num_classes: number of output classes.
        input_shape: ``(H, W, C)``; ``None`` dims accept any size.
    """
    return _frrn(num_classes, input_shape, FRRN_A_ENCODER, FRRN_A_DECODER, "FRRN-A")


@register("FRRN-B", default_frontend=None, takes_frontend=False)
def build_frrn_b(
    frontend: keras.Model | None, num_classes: int, *, input_shape=(None, None, 3)
) -> keras.Model:
    """FRRN-B: FRRN-A one pooling stage deeper (Pohlen et al. 2017, Table 1).

    As ``build_frrn_a``, with a fifth encoder stage, 2 x FRRU 384 at scale 32
    (``FRRN_B_ENCODER``), and a fourth decoder stage: 2 x FRRU 192 at scale 16,
    2 x FRRU 192 at 8, 2 x FRRU 192 at 4, 2 x FRRU 96 at 2 (``FRRN_B_DECODER``).
    Every upsampling and unpooling factor is exactly the stream's scale (2 to
    32); a popular TF port upsampled by 17 instead of 16. The paper uses FRRN-B
    on half-resolution Cityscapes images (1024 x 512). We found no parameter
    count in the paper; ours with 19 classes is 24,775,827. Differences from the
    paper: those of ``build_frrn_a``.

    Args:
        frontend: must be ``None``: FRRN has its own encoder.
        num_classes: number of output classes.
        input_shape: ``(H, W, C)``; ``None`` dims accept any size.
    """
    return _frrn(num_classes, input_shape, FRRN_B_ENCODER, FRRN_B_DECODER, "FRRN-B")
