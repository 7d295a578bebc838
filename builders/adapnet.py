"""AdapNet: Valada, Vertens, Dhall, Burgard, "AdapNet: Adaptive Semantic
Segmentation in Adverse Environmental Conditions", ICRA 2017.

A ResNet-50 whose later bottlenecks are multiscale residual units (the 3x3
convolution split into two halves at two dilation rates), an extra 3x3
convolution in front of the stem, output stride 16, and an FCN-like decoder of two
transposed convolutions with one skip from the stride-8 stage.
"""

from __future__ import annotations

import keras
from keras import ops

from builders.base import register
from semseg_suite import layers
from semseg_suite.layers import PACKAGE, CropLike

# Bottlenecks per ResNet-50 stage (conv2..conv5), their widths (the 1x1 and 3x3
# convolutions; the unit's output is 4x wider) and strides. conv5 does not
# downsample: AdapNet's encoder has output stride 16.
BLOCKS = (3, 4, 6, 3)
FILTERS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 1)

# Multiscale residual units and the dilation rates (r1, r2) of the two halves of
# their 3x3 convolution: res3d, res4c-res4f and res5a-res5c of the paper's
# Fig. 2, in keras.applications' ResNet names.
MULTISCALE_RATES = {
    "conv3_block4": (1, 2),
    "conv4_block3": (1, 2),
    "conv4_block4": (1, 4),
    "conv4_block5": (1, 8),
    "conv4_block6": (1, 16),
    "conv5_block1": (2, 4),
    "conv5_block2": (2, 8),
    "conv5_block3": (2, 16),
}

# The decoder's skip: the output of res3 (stride 8).
SKIP_LAYER = "conv3_block4_out"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiscaleConv2D(keras.layers.Conv2D):
    """A 3x3 convolution whose two output halves use different dilation rates.

    AdapNet's multiscale block (Valada et al. 2017, Sec. III-A): the first
    ``filters // 2`` output channels are a convolution dilated by ``rates[0]``,
    the others one dilated by ``rates[1]``; the two are concatenated. Both halves
    live in one ``(k, k, C_in, filters)`` kernel, split along its output axis as
    in the authors' code, so the layer has the weights of the plain
    ``Conv2D(filters, k)`` it replaces (ImageNet ResNet weights load into it).
    Same padding and stride 1 only. On TensorFlow the dilated halves run through
    ``layers.dilated_conv2d`` (the native dilated kernel, with a gradient that
    exists on CPUs without oneDNN too; see ``AtrousConv2D``).

    Args:
        filters: output channels (even).
        kernel_size: kernel size.
        rates: dilation rates ``(r1, r2)`` of the first and second half.
        **kwargs: other ``Conv2D`` arguments.
    """

    def __init__(self, filters, kernel_size, rates=(1, 2), **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.filters % 2:
            raise ValueError(f"MultiscaleConv2D needs an even number of filters, got {filters}")
        if self.padding != "same" or tuple(self.strides) != (1, 1) or self.groups != 1:
            raise ValueError("MultiscaleConv2D supports same padding, stride 1, groups 1 only")
        if tuple(self.dilation_rate) != (1, 1):
            raise ValueError("MultiscaleConv2D takes its dilation from rates, not dilation_rate")
        self.rates = tuple(int(r) for r in rates)
        if len(self.rates) != 2:
            raise ValueError(f"rates must be two dilation rates, got {rates!r}")

    def _dilated(self, inputs, kernel, rate):
        if keras.backend.backend() == "tensorflow" and self.data_format == "channels_last":
            return layers.dilated_conv2d(inputs, kernel, rate, "SAME")
        return ops.conv(
            inputs,
            kernel,
            strides=1,
            padding="same",
            dilation_rate=rate,
            data_format=self.data_format,
        )

    def convolution_op(self, inputs, kernel):
        half = self.filters // 2
        axis = -1 if self.data_format == "channels_last" else 1
        return ops.concatenate(
            [
                self._dilated(inputs, kernel[..., :half], self.rates[0]),
                self._dilated(inputs, kernel[..., half:], self.rates[1]),
            ],
            axis=axis,
        )

    def get_config(self):
        return {**super().get_config(), "rates": self.rates}


def _conv(filters, kernel_size, *, strides=1, padding="valid", name):
    # keras.applications' ResNet50 convolution (with bias), so its weights load.
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer="he_normal",
        name=name,
    )


def bottleneck(
    x,
    filters: int,
    *,
    stride: int = 1,
    shortcut: bool = False,
    rates=None,
    dropout: float = 0.0,
    name: str,
):
    """ResNet-50 (v1) bottleneck in keras.applications' layout and names.

    1x1 conv (carrying the stride), BN, ReLU; 3x3 conv, BN, ReLU; 1x1 conv to
    ``4 * filters``, BN; added to the shortcut (identity, or a 1x1 projection with
    BN when ``shortcut``), ReLU. With ``rates`` the 3x3 conv is a
    ``MultiscaleConv2D`` (AdapNet's multiscale residual unit). ``dropout`` drops
    the residual branch's output before the addition.
    """
    if shortcut:
        residual = _conv(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        residual = layers.batch_norm(f"{name}_0_bn")(residual)
    else:
        residual = x
    y = _conv(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = layers.batch_norm(f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)
    if rates is None:
        y = _conv(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    else:
        y = MultiscaleConv2D(
            filters, 3, rates=rates, padding="same", kernel_initializer="he_normal",
            name=f"{name}_2_conv",
        )(y)
    y = layers.batch_norm(f"{name}_2_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = _conv(4 * filters, 1, name=f"{name}_3_conv")(y)
    y = layers.batch_norm(f"{name}_3_bn")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = keras.layers.Add(name=f"{name}_add")([residual, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def _deconv(filters: int, kernel_size: int, stride: int, name: str):
    return keras.layers.Conv2DTranspose(
        filters,
        kernel_size,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


@register("AdapNet", default_frontend=None, takes_frontend=False)
def build_adapnet(
    frontend: keras.Model | None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    dropout: float = 0.7,
) -> keras.Model:
    """AdapNet: ResNet-50 with multiscale residual units and a two-step decoder.

    Encoder (Sec. III-A, Fig. 2): a 3x3 stride-1 convolution with BN and ReLU in
    front of ResNet-50's stem, so the network sees full-resolution features
    before the stride-2 7x7 convolution (3 filters, as in the authors' code:
    the ImageNet 7x7 kernel then fits unchanged); then ResNet-50 (7x7/2 conv 64,
    3x3/2 max-pool, stages of 3, 4, 6, 3 bottlenecks) whose last stage (res5)
    does not downsample, for output stride 16. Multiscale residual units split
    the 3x3 convolution of a bottleneck into two halves with dilation rates
    (r1, r2), concatenated (``MultiscaleConv2D``): res3d (1, 2); res4c, res4d,
    res4e, res4f (1, 2), (1, 4), (1, 8), (1, 16); res5a, res5b, res5c (2, 4),
    (2, 8), (2, 16) (``MULTISCALE_RATES``).
    Decoder: a 1x1 conv to the classes and BN on res5; a 4x4 stride-2
    transposed conv to twice the classes and BN, added to the skip (a 1x1 conv
    to twice the classes and BN on res3's output, stride 8); a 16x16 stride-8
    transposed conv to the classes and BN gives the logits (float32).

    The encoder is written out here rather than cloned from the ``ResNet50``
    frontend: the extra front convolution changes the graph, and the split
    convolutions are a new layer. The unchanged layers carry keras.applications'
    ResNet50 names, biases and shapes (``conv1_conv``, ``conv4_block3_1_conv``,
    ...), and each ``MultiscaleConv2D`` has the shape of the 3x3 conv it replaces,
    so ImageNet ResNet-50 weights can be loaded by name (the paper initialises
    from them); the builder itself loads nothing.

    Differences from the paper and the authors' code:
      * Dilation rates: the paper's (above). The authors' public code uses
        rate 2 for the second half of every multiscale unit (and for both
        halves in res5).
      * Dropout: the authors' code drops the residual branch of res5c with keep
        probability 0.3 during training (``dropout=0.7`` here).
      * Any input size: ResNet's padding keeps sizes at ``ceil(H / stride)``; each
        transposed conv's output is cropped at the bottom/right to the skip, and
        the logits to the input (``CropLike``).
      * BN uses the suite's settings (momentum 0.9, eps 1e-5; the authors' code
        uses decay 0.99). ResNet convolutions keep keras.applications' biases for
        weight compatibility; the added convolutions have none, as in the
        authors' code.
      * The paper fuses several AdapNets with its CMoDE mixture of experts for
        multimodal inputs; this is the single-stream (unimodal) AdapNet.
      * We found no parameter count in the paper, so none is registered. Ours
        with 12 classes (the authors' default) is 23,703,293, almost all
        ResNet-50's.

    Args:
        frontend: must be ``None``: AdapNet has its own ResNet-50 encoder.
        num_classes: number of output classes.
        input_shape: ``(H, W, C)``; ``None`` dims accept any size; any ``C`` (the
            front convolution maps it to 3 channels).
        dropout: dropout rate on res5c's residual branch (authors' code: 0.7).
    """
    inputs = keras.Input(input_shape)
    x = layers.conv_bn_relu(inputs, 3, 3, name="conv0")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = _conv(64, 7, strides=2, name="conv1_conv")(x)
    x = layers.batch_norm("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    skip = None
    for stage, (blocks, filters, stride) in enumerate(zip(BLOCKS, FILTERS, STRIDES), start=2):
        for block in range(1, blocks + 1):
            name = f"conv{stage}_block{block}"
            x = bottleneck(
                x,
                filters,
                stride=stride if block == 1 else 1,
                shortcut=block == 1,
                rates=MULTISCALE_RATES.get(name),
                dropout=dropout if (stage, block) == (5, 3) else 0.0,
                name=name,
            )
            if f"{name}_out" == SKIP_LAYER:
                skip = x

    x = layers.conv2d(num_classes, 1, name="score_conv")(x)
    x = layers.batch_norm("score_bn")(x)
    x = _deconv(2 * num_classes, 4, 2, name="up1_deconv")(x)
    x = layers.batch_norm("up1_bn")(x)
    skip = layers.conv2d(2 * num_classes, 1, name="skip_conv")(skip)
    skip = layers.batch_norm("skip_bn")(skip)
    x = CropLike(name="up1_crop")([x, skip])
    x = keras.layers.Add(name="up1_add")([x, skip])
    x = _deconv(num_classes, 16, 8, name="up2_deconv")(x)
    x = layers.batch_norm("up2_bn")(x)
    logits = CropLike(name="logits", dtype="float32")([x, inputs])
    return keras.Model(inputs, logits, name="AdapNet")
