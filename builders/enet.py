"""ENet: Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network
Architecture for Real-Time Semantic Segmentation", arXiv 1606.02147, 2016."""

from __future__ import annotations

import keras
from keras import ops

from builders.base import PaperParams, Recipe, register
from semseg_suite import layers

# The paper's Table 1, stages 2 and 3 after the downsampling bottleneck 2.0: the
# main convolution of each bottleneck as (kind, size): a regular 3x3, a 3x3
# dilated by ``size``, or an asymmetric ``size x 1`` then ``1 x size`` pair.
STAGE_LAYOUT = (
    ("regular", 3),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 3),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)

INITIAL_CHANNELS = 16


@keras.saving.register_keras_serializable(package="semseg_suite")
class ChannelZeroPadding(keras.layers.Layer):
    """Appends zero channels so the output has ``channels`` channels.

    ENet's downsampling shortcut (Paszke et al. 2016, Sec. 3): the max-pooled input
    is zero-padded along the channel axis to the width of the bottleneck's output.

    Args:
        channels: channels of the output (at least the input's).
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, x):
        extra = self.channels - x.shape[-1]
        if extra < 0:
            raise ValueError(f"cannot pad {x.shape[-1]} channels down to {self.channels}")
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def _activation(name: str, decoder: bool):
    """PReLU with one slope per channel in the encoder, ReLU in the decoder (Sec. 4)."""
    if decoder:
        return keras.layers.ReLU(name=name)
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
    )


def _bn_act(x, name: str, decoder: bool):
    x = layers.batch_norm(f"{name}_bn")(x)
    return _activation(f"{name}_act", decoder)(x)


def initial_block(x, *, name: str = "initial"):
    """A 3x3 stride-2 convolution concatenated with a 2x2 max-pool of the input.

    Together 16 channels: 13 filters for RGB, ``16 - C`` for ``C`` input channels.
    With 16 or more input channels the pooled input alone would fill or overflow
    the 16, so the block is then the convolution alone, with 16 filters.
    """
    channels = x.shape[-1]
    filters = INITIAL_CHANNELS - channels if channels < INITIAL_CHANNELS else INITIAL_CHANNELS
    conv = keras.layers.Conv2D(
        filters, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)
    if channels < INITIAL_CHANNELS:
        pool = keras.layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)
        conv = keras.layers.Concatenate(name=f"{name}_concat")([conv, pool])
    return _bn_act(conv, name, decoder=False)


def bottleneck(
    x,
    filters: int,
    *,
    kind: str = "regular",
    size: int = 3,
    downsample: bool = False,
    dropout: float,
    name: str,
):
    """ENet's encoder bottleneck (Fig. 2b): projection, main convolution, expansion.

    Extension branch: a 1x1 projection to ``filters // 4`` (a 2x2 stride-2
    convolution when downsampling), BN, PReLU; the main convolution (``kind``:
    ``regular`` 3x3, ``dilated`` 3x3 at rate ``size``, or ``asymmetric`` ``size x 1``
    then ``1 x size``), BN, PReLU; a 1x1 expansion to ``filters``, BN; spatial
    dropout. Main branch: identity, or when downsampling a 2x2 max-pooling that
    keeps its indices followed by zero channel padding. The branches are added and
    passed through a PReLU.

    Returns:
        ``(output, indices, pre-pool tensor)``; the last two are ``None`` unless
        downsampling.
    """
    internal = filters // 4
    if downsample:
        y = keras.layers.Conv2D(
            internal, 2, strides=2, padding="same", use_bias=False,
            kernel_initializer="he_normal", name=f"{name}_reduce_conv",
        )(x)
    else:
        y = layers.conv2d(internal, 1, name=f"{name}_reduce_conv")(x)
    y = _bn_act(y, f"{name}_reduce", decoder=False)

    if kind == "regular":
        y = layers.conv2d(internal, 3, name=f"{name}_conv")(y)
    elif kind == "dilated":
        y = layers.conv2d(internal, 3, rate=size, name=f"{name}_conv")(y)
    elif kind == "asymmetric":
        y = keras.layers.Conv2D(
            internal, (size, 1), padding="same", use_bias=False,
            kernel_initializer="he_normal", name=f"{name}_conv_a",
        )(y)
        y = keras.layers.Conv2D(
            internal, (1, size), padding="same", use_bias=False,
            kernel_initializer="he_normal", name=f"{name}_conv",
        )(y)
    else:
        raise ValueError(f"unknown bottleneck kind {kind!r}")
    y = _bn_act(y, f"{name}_conv", decoder=False)

    y = layers.conv2d(filters, 1, name=f"{name}_expand_conv")(y)
    y = layers.batch_norm(f"{name}_expand_bn")(y)
    y = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)

    indices = prepool = None
    if downsample:
        prepool = x
        x, indices = layers.MaxPoolingWithArgmax2D(2, name=f"{name}_pool")(x)
        x = ChannelZeroPadding(filters, name=f"{name}_pad")(x)
    out = keras.layers.Add(name=f"{name}_add")([x, y])
    return _activation(f"{name}_act", decoder=False)(out), indices, prepool


def decoder_bottleneck(x, filters: int, *, dropout: float, name: str):
    """A regular bottleneck of the decoder: as ``bottleneck``, with ReLU."""
    internal = filters // 4
    y = layers.conv2d(internal, 1, name=f"{name}_reduce_conv")(x)
    y = _bn_act(y, f"{name}_reduce", decoder=True)
    y = layers.conv2d(internal, 3, name=f"{name}_conv")(y)
    y = _bn_act(y, f"{name}_conv", decoder=True)
    y = layers.conv2d(filters, 1, name=f"{name}_expand_conv")(y)
    y = layers.batch_norm(f"{name}_expand_bn")(y)
    y = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    out = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_act")(out)


def upsampling_bottleneck(x, filters: int, indices, prepool, *, dropout: float, name: str):
    """The decoder's upsampling bottleneck (Sec. 3).

    Main branch: a 1x1 convolution to ``filters`` and BN, then max-unpooling with
    the indices of the matching downsampling bottleneck. Extension branch: a 1x1
    projection to ``filters // 4``, a 3x3 stride-2 transposed convolution, a 1x1
    expansion to ``filters`` (BN after each, ReLU after the first two), spatial
    dropout. Added, then ReLU. On odd sizes the transposed convolution's output
    (twice its input) is one row or column larger than the unpooled main branch,
    and is resized to it.
    """
    main = layers.conv2d(filters, 1, name=f"{name}_main_conv")(x)
    main = layers.batch_norm(f"{name}_main_bn")(main)
    main = layers.MaxUnpooling2D(2, name=f"{name}_unpool")([main, indices, prepool])

    internal = filters // 4
    y = layers.conv2d(internal, 1, name=f"{name}_reduce_conv")(x)
    y = _bn_act(y, f"{name}_reduce", decoder=True)
    y = keras.layers.Conv2DTranspose(
        internal, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(y)
    y = _bn_act(y, f"{name}_conv", decoder=True)
    y = layers.conv2d(filters, 1, name=f"{name}_expand_conv")(y)
    y = layers.batch_norm(f"{name}_expand_bn")(y)
    y = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
    y = layers.ResizeLike(name=f"{name}_resize")([y, main])
    out = keras.layers.Add(name=f"{name}_add")([main, y])
    return keras.layers.ReLU(name=f"{name}_act")(out)


@register(
    "ENet",
    default_frontend=None,
    takes_frontend=False,
    paper_params=PaperParams(
        params=0.37e6,
        source="Paszke et al. 2016, Table 3",
        num_classes=11,
        note="The paper does not say for which class count; each class adds 65 "
        "parameters (11 = CamVid).",
    ),
    recipes={
        "paper": Recipe(
            source="Paszke et al. 2016, Sec. 5",
            note=(
                "No schedule, epoch count, crop or augmentation is stated: the suite's stay. Not done: "
                "the first of the paper's two stages, training the encoder alone on downsampled labels "
                "before appending the decoder."
            ),
            optimizer="adam",
            learning_rate=5e-4,
            weight_decay=2e-4,
            batch_size=10,
            class_weights="enet",
        )
    },
)
def build_enet(
    frontend: keras.Model | None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    stage1_dropout: float = 0.01,
    dropout: float = 0.1,
) -> keras.Model:
    """ENet, an efficient encoder-decoder for real-time segmentation.

    Architecture of the paper's Table 1: initial block (a 3x3 stride-2
    convolution with 13 filters for RGB, concatenated with a 2x2 max-pool of the
    input: 16 channels, BN, PReLU); stage 1: a downsampling bottleneck to 64 and
    four regular bottlenecks; stage 2: a downsampling bottleneck to 128 then
    regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5,
    dilated 16; stage 3: stage 2 without its downsampling bottleneck; stage 4: an
    upsampling bottleneck to 64 (max-unpooling with the indices of bottleneck 2.0)
    and two bottlenecks; stage 5: an upsampling bottleneck to 16 (indices of
    bottleneck 1.0) and one bottleneck; a 2x2 stride-2 transposed convolution to
    the classes. Bottlenecks project to a quarter of their output width. Spatial
    dropout 0.01 before bottleneck 2.0 and 0.1 after it (Sec. 4), the decoder
    included; PReLU with one slope per channel in the encoder, ReLU in the
    decoder (Sec. 4: the decoder did not benefit from PReLU).

    Differences from the paper: convolutions before BN have no bias (the paper
    drops the projections' biases; BN's shift makes the others' redundant);
    PReLU slopes start at 0.25 (as in the authors' Torch code; Keras' default
    would be 0); inputs of any size: downsampling pads odd sizes, and the
    transposed convolutions' outputs are resized to the unpooled tensor and, for
    the logits, to the input where they differ by a row or column. With 16 or
    more input channels the initial block is the convolution alone (see
    ``initial_block``). The upsampling bottleneck's internal width is a quarter of
    its output (16 for stage 4), which the paper does not state; some ports use
    a quarter of its input.

    Args:
        frontend: must be ``None`` (ENet has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; any channel count.
        stage1_dropout: spatial dropout rate of stage 1 (0.01 in the paper).
        dropout: spatial dropout rate from bottleneck 2.0 on (0.1 in the paper).
    """
    del frontend
    inputs = keras.Input(input_shape, name="image")
    x = initial_block(inputs)

    x, indices1, prepool1 = bottleneck(
        x, 64, downsample=True, dropout=stage1_dropout, name="bottleneck1_0"
    )
    for i in range(1, 5):
        x, _, _ = bottleneck(x, 64, dropout=stage1_dropout, name=f"bottleneck1_{i}")

    x, indices2, prepool2 = bottleneck(
        x, 128, downsample=True, dropout=dropout, name="bottleneck2_0"
    )
    for stage in (2, 3):
        for i, (kind, size) in enumerate(STAGE_LAYOUT, start=1):
            x, _, _ = bottleneck(
                x, 128, kind=kind, size=size, dropout=dropout, name=f"bottleneck{stage}_{i}"
            )

    x = upsampling_bottleneck(x, 64, indices2, prepool2, dropout=dropout, name="bottleneck4_0")
    for i in (1, 2):
        x = decoder_bottleneck(x, 64, dropout=dropout, name=f"bottleneck4_{i}")
    x = upsampling_bottleneck(x, 16, indices1, prepool1, dropout=dropout, name="bottleneck5_0")
    x = decoder_bottleneck(x, 16, dropout=dropout, name="bottleneck5_1")

    x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, padding="same", name="fullconv")(x)
    logits = layers.ResizeLike(name="logits", dtype="float32")([x, inputs])
    return keras.Model(inputs, logits, name="ENet")
