"""Encoder-Decoder and Encoder-Decoder-Skip: the old Semantic Segmentation Suite's
own VGG-style encoder-decoder (GeorgeSeif/Semantic-Segmentation-Suite,
``models/Encoder_Decoder.py``, "inspired by SegNet with some modifications").
There is no paper; the old suite's code is the reference for the layout.

The layout (``ENCODER_WIDTHS``, ``DECODER_WIDTHS``) and ``encoder_decoder`` are
shared with ``builders.mobile_unet``, whose MobileUNet is the same network with
depthwise-separable blocks.
"""

from __future__ import annotations

import keras

from builders.base import register
from semseg_suite import layers

# Conv widths of the five encoder stages; each stage ends with a 2x2 max-pool.
ENCODER_WIDTHS = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
# Decoder stages, deepest first: (transposed-conv width, conv widths). Each stage
# doubles the resolution; the last conv width of stages 1-4 equals the channels
# of the pooled encoder output it meets (512, 256, 128, 64), so skips can add.
DECODER_WIDTHS = (
    (512, (512, 512, 512)),
    (512, (512, 512, 256)),
    (256, (256, 256, 128)),
    (128, (128, 64)),
    (64, (64, 64)),
)
# The old suite's transposed convolutions are 3x3, stride 2.
UPSAMPLE_KERNEL_SIZE = 3


def upsample_bn_relu(x, filters: int, reference, *, name: str):
    """3x3 stride-2 transposed conv, BN, ReLU, resized to ``reference``'s size.

    The transposed conv doubles the size; the resize (``{name}_resize``) makes it
    match the encoder tensor of that level exactly when pooling rounded an odd size
    up (a no-op otherwise).
    """
    x = keras.layers.Conv2DTranspose(
        filters,
        UPSAMPLE_KERNEL_SIZE,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.batch_norm(f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return layers.ResizeLike(name=f"{name}_resize")([x, reference])


def encoder_decoder(
    inputs, num_classes: int, *, conv_block, first_block=None, skip: bool, name: str
):
    """The old suite's five-stage encoder-decoder, with ``conv_block`` as its unit.

    Encoder stage ``i`` (``enc{i}_conv{j}``, ``enc{i}_pool``) runs
    ``ENCODER_WIDTHS[i-1]`` blocks and a 2x2 max-pool (same padding: odd sizes
    round up). Decoder stage ``i`` (``dec{i}_upsample``, ``dec{i}_conv{j}``) runs
    ``upsample_bn_relu`` to the size of the pooled output of encoder stage
    ``5 - i`` (the input for the last stage), then ``DECODER_WIDTHS[i-1]`` blocks;
    with ``skip`` that pooled output is added to the result (``dec{i}_skip_add``).
    The classifier is a 1x1 conv to float32 logits at the input size.

    Args:
        inputs: the ``keras.Input``.
        num_classes: number of output classes.
        conv_block: ``conv_block(x, filters, name=...)`` for every conv unit.
        first_block: the same for the very first unit (default ``conv_block``).
        skip: add the encoder features to the decoder.
        name: the model's name.
    """
    first_block = first_block or conv_block
    x = inputs
    pooled = []
    for stage, widths in enumerate(ENCODER_WIDTHS, start=1):
        for j, filters in enumerate(widths, start=1):
            block = first_block if stage == j == 1 else conv_block
            x = block(x, filters, name=f"enc{stage}_conv{j}")
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"enc{stage}_pool")(x)
        pooled.append(x)
    # Decoder stage i returns to the size of encoder stage (5 - i)'s pooled output.
    references = pooled[-2::-1] + [inputs]
    for stage, ((up_filters, widths), reference) in enumerate(
        zip(DECODER_WIDTHS, references), start=1
    ):
        x = upsample_bn_relu(x, up_filters, reference, name=f"dec{stage}_upsample")
        for j, filters in enumerate(widths, start=1):
            x = conv_block(x, filters, name=f"dec{stage}_conv{j}")
        if skip and reference is not inputs:
            x = keras.layers.Add(name=f"dec{stage}_skip_add")([x, reference])
    logits = layers.classifier(x, num_classes, reference=inputs)
    return keras.Model(inputs, logits, name=name)


def _conv_bn_relu_block(kernel_size: int, dropout: float):
    def block(x, filters, *, name):
        x = layers.conv_bn_relu(x, filters, kernel_size, name=name)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
        return x

    return block


def _build(frontend, num_classes, input_shape, kernel_size, dropout, *, skip, name):
    if frontend is not None:
        raise ValueError(f"{name} has its own encoder and takes no frontend")
    return encoder_decoder(
        keras.Input(input_shape),
        num_classes,
        conv_block=_conv_bn_relu_block(kernel_size, dropout),
        skip=skip,
        name=name,
    )


@register("Encoder-Decoder", default_frontend=None, takes_frontend=False)
def build_encoder_decoder(
    frontend: None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    kernel_size: int = 3,
    dropout: float = 0.0,
) -> keras.Model:
    """Encoder-Decoder: a VGG-style encoder and a mirrored transposed-conv decoder.

    The old Semantic Segmentation Suite's own model (no paper): a VGG16-like
    encoder of 3x3 conv-BN-ReLU blocks, 2x64, pool, 2x128, pool, 3x256, pool,
    3x512, pool, 3x512, pool (output stride 32), and a mirrored decoder of five
    stages, each a 3x3 stride-2 transposed conv-BN-ReLU followed by conv-BN-ReLU
    blocks: 512 + (512, 512, 512), 512 + (512, 512, 256), 256 + (256, 256, 128),
    128 + (128, 64), 64 + (64, 64); then a 1x1 conv to the classes. No skips
    (see ``build_encoder_decoder_skip``).

    As in the old suite the blocks are post-activation (conv, BN, ReLU), not
    pre-activation. Where we differ from the old code:

    - Convolutions have no bias (BN follows each one; slim's had one), so we have
      a few thousand fewer parameters; He-normal instead of Xavier initialisation;
      BN momentum 0.9 (``semseg_suite.layers``).
    - Max-pooling uses same padding (the old ``slim.pool`` was valid, dropping the
      last row/column of odd sizes), and each upsampled tensor is resized to the
      size of the encoder tensor of its level (a no-op for sizes divisible by 32),
      so any input size works and skip additions always match.
    - Bugs of the old code not copied: its first version applied slim's default
      ReLU to the logits and before the BN of each transposed conv; its
      ``dropout_p`` argument (0.5) was never passed to the blocks, so the old model
      ran without dropout. ``dropout`` here is applied after every conv block when
      non-zero and defaults to 0, what the old model actually ran.

    Args:
        frontend: must be ``None`` (the model has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; ``None`` sizes accept any size.
        kernel_size: kernel of the non-transposed convolutions (3, as in the old
            suite); the transposed convs stay 3x3 as there.
        dropout: dropout rate after each conv block (0: none, as the old code ran).
    """
    return _build(
        frontend, num_classes, input_shape, kernel_size, dropout, skip=False, name="Encoder-Decoder"
    )


@register("Encoder-Decoder-Skip", default_frontend=None, takes_frontend=False)
def build_encoder_decoder_skip(
    frontend: None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    kernel_size: int = 3,
    dropout: float = 0.0,
) -> keras.Model:
    """Encoder-Decoder-Skip: Encoder-Decoder plus additive encoder-to-decoder skips.

    The network, hyperparameters and differences from the old suite's code are
    those of ``build_encoder_decoder``. In addition, after the convs of decoder
    stages 1-4 the pooled output of encoder stages 4, 3, 2 and 1 is added
    (``dec{i}_skip_add``); it has that decoder stage's size and width (512, 256,
    128, 64). The old suite adds the post-pool features (its ``skip_k`` is taken
    after the pool), not the pre-pool ones, which have twice the decoder's
    resolution at that point; we do the same.

    Args:
        frontend: must be ``None`` (the model has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; ``None`` sizes accept any size.
        kernel_size: kernel of the non-transposed convolutions (3).
        dropout: dropout rate after each conv block (0: none, as the old code ran).
    """
    return _build(
        frontend,
        num_classes,
        input_shape,
        kernel_size,
        dropout,
        skip=True,
        name="Encoder-Decoder-Skip",
    )
