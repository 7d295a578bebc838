"""U-Net: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

ENCODER_DEPTH = 4  # max-pooling steps of the paper's contracting path


def _conv_relu(x, filters: int, batch_norm: bool, *, name: str):
    """3x3 same-padded conv and ReLU, with BN in between when ``batch_norm``.

    Named ``{name}_conv``, ``{name}_bn``, ``{name}_relu``; without BN the conv has
    a bias, as in the paper.
    """
    if batch_norm:
        return layers.conv_bn_relu(x, filters, 3, name=name)
    x = layers.conv2d(filters, 3, name=f"{name}_conv", use_bias=True)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _up_conv(x, filters: int, *, name: str, strides: int = 2):
    """The paper's "up-convolution": a 2x2 transposed conv, stride 2, no activation."""
    return keras.layers.Conv2DTranspose(
        filters,
        2,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _decoder_step(x, skip, filters: int, batch_norm: bool, *, name: str, upsample: bool = True):
    """Up-convolution halving the width, concat with ``skip``, two 3x3 conv + ReLU.

    The up-sampled maps are resized to the skip (the identity when the input size is
    a multiple of the total stride). With ``upsample=False`` (a dilated frontend
    whose deeper maps already have the skip's resolution) a 1x1 conv replaces the
    up-convolution.
    """
    if upsample:
        x = _up_conv(x, filters, name=f"{name}_upconv")
    else:
        x = layers.conv2d(filters, 1, name=f"{name}_upconv", use_bias=True)(x)
    if skip is not None:
        x = layers.ResizeLike(name=f"{name}_resize")([x, skip])
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _conv_relu(x, filters, batch_norm, name=f"{name}_conv1")
    return _conv_relu(x, filters, batch_norm, name=f"{name}_conv2")


@register("U-Net", default_frontend=None, takes_frontend=True)
def build_unet(
    frontend: keras.Model | None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    output_stride: int = 32,
    filters: int = 64,
    batch_norm: bool | None = None,
    dropout: float = 0.5,
) -> keras.Model:
    """U-Net: a contracting path, a symmetric expanding path and skip concatenations.

    Own encoder (``frontend=None``), as in the paper (Sec. 2, Fig. 1): four steps
    of two 3x3 convs with ReLU and a 2x2 max-pool, at 64, 128, 256 and 512
    channels, then two 3x3 convs at 1024. Expanding path: four steps of a 2x2
    up-convolution (transposed conv, stride 2) halving the channels, a
    concatenation with the contracting path's maps of the same level, and two 3x3
    convs with ReLU; a final 1x1 conv maps the 64 channels to the classes: 23
    convolution layers in all. Dropout "at the end of the contracting path"
    (Sec. 3.1) after the last conv of the 512 level (so its pooled output and
    its skip both see it) and after the 1024 level, at rate 0.5: the paper gives
    no rate; place and rate follow public Caffe re-creations of the released
    model. Weights are He-normal initialised (Sec. 3, std sqrt(2/N)).

    Differences from the paper: convolutions are same-padded, so the output has
    the input's size (the paper's valid convolutions give 388x388 outputs for
    572x572 inputs and crop each skip to the up-sampled maps); max-pooling is
    same-padded (``ceil``) and the up-sampled maps are resized (bilinear) to their
    skip, which is the identity when the input size is a multiple of 16 and
    keeps odd sizes working. The paper has no batch norm (it predates it);
    ``batch_norm=True`` adds BN between every 3x3 conv and its ReLU.

    On a frontend (``build_model("U-Net", "ResNet50", ...)``, like the Unet of
    segmentation_models): the frontend's ``stride32`` maps are the bottom and its
    ``stride16``, ``stride8``, ``stride4``, ``stride2`` maps the skips of four
    decoder steps as above at 512, 256, 128 and 64 channels (``filters`` times 8
    down to 1, the paper's halving), then a fifth step (up-convolution to
    ``filters / 2`` = 32 channels, no skip, two 3x3 convs) reaches the input
    resolution before the 1x1 classifier. Batch norm is on by default there
    (frontends are batch-normalised networks, and segmentation_models' decoder
    uses it too); dropout is not applied (the contracting path is the
    frontend's). At ``output_stride`` 8 or 16 the steps between levels of equal
    resolution use a 1x1 conv instead of the up-convolution.

    Args:
        frontend: ``None`` for the paper's own encoder, or a frontend model.
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the own encoder; ``None`` dims accept any
            size, any ``C``. Unused on a frontend.
        output_stride: the frontend's output stride (8, 16 or 32; the registry
            builds frontends for U-Net at 32). Unused without a frontend.
        filters: channels of the first level (64), doubled at every level down.
        batch_norm: BN after every 3x3 conv; ``None``: off on the own encoder
            (as in the paper), on with a frontend.
        dropout: dropout rate at the end of the own contracting path (0.5).
    """
    if frontend is None:
        return _build_own_encoder(
            num_classes, input_shape, filters, bool(batch_norm), dropout
        )
    return _build_on_frontend(
        frontend, num_classes, output_stride, filters, True if batch_norm is None else batch_norm
    )


def _build_own_encoder(num_classes, input_shape, filters, batch_norm, dropout):
    inputs = keras.Input(input_shape)
    x = inputs
    skips = []
    for level in range(1, ENCODER_DEPTH + 1):
        width = filters * 2 ** (level - 1)
        x = _conv_relu(x, width, batch_norm, name=f"enc{level}_conv1")
        x = _conv_relu(x, width, batch_norm, name=f"enc{level}_conv2")
        if level == ENCODER_DEPTH:
            x = keras.layers.Dropout(dropout, name=f"enc{level}_dropout")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"enc{level}_pool")(x)
    width = filters * 2**ENCODER_DEPTH
    x = _conv_relu(x, width, batch_norm, name="bottom_conv1")
    x = _conv_relu(x, width, batch_norm, name="bottom_conv2")
    x = keras.layers.Dropout(dropout, name="bottom_dropout")(x)
    for step, skip in enumerate(reversed(skips), start=1):
        x = _decoder_step(x, skip, skip.shape[-1], batch_norm, name=f"dec{step}")
    logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="U-Net")


def _build_on_frontend(frontend, num_classes, output_stride, filters, batch_norm):
    features = frontend_features(frontend)
    x = features["stride32"]
    for step, stride in enumerate((16, 8, 4, 2), start=1):
        x = _decoder_step(
            x,
            features[f"stride{stride}"],
            filters * 2 ** (ENCODER_DEPTH - step),
            batch_norm,
            name=f"dec{step}",
            upsample=stride < output_stride,
        )
    x = _decoder_step(x, None, filters // 2, batch_norm, name="dec5")
    logits = layers.classifier(x, num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="U-Net")
