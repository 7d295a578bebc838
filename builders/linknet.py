"""LinkNet: Chaurasia, Culurciello, "LinkNet: Exploiting Encoder Representations
for Efficient Semantic Segmentation", VCIP 2017."""

from __future__ import annotations

import keras

from builders.base import PaperParams, frontend_features, register
from semseg_suite import layers
from semseg_suite.layers import CropLike

# The stem's max-pool, the input of encoder block 1, in the ResNet naming of
# keras.applications and frontends.resnet_basic; decoder 1's output is added to it.
ENCODER1_INPUT = "pool1_pool"


def decoder_block(x, filters: int, *, stride: int, name: str):
    """LinkNet decoder block (Sec. III): ``m`` channels in, ``filters`` (``n``) out.

    1x1 conv to ``m / 4``, BN, ReLU; 3x3 transposed conv ("full convolution")
    ``m / 4`` to ``m / 4`` with ``stride``, BN, ReLU; 1x1 conv to ``n``, BN, ReLU.
    """
    bottleneck = max(x.shape[-1] // 4, 1)
    x = layers.conv_bn_relu(x, bottleneck, 1, name=f"{name}_conv1")
    x = keras.layers.Conv2DTranspose(
        bottleneck,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_fullconv",
    )(x)
    x = layers.batch_norm(f"{name}_fullconv_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_fullconv_relu")(x)
    return layers.conv_bn_relu(x, filters, 1, name=f"{name}_conv2")


@register(
    "LinkNet",
    default_frontend="ResNet18",
    default_output_stride=32,
    paper_params=PaperParams(
        params=11.5e6,
        source="Chaurasia & Culurciello 2017, abstract",
        num_classes=11,
        # The paper gives no class count for it: CamVid's 11 taken; each class
        # adds 129 parameters.
        frontend="ResNet18",
    ),
)
def build_linknet(
    frontend: keras.Model, num_classes: int, *, output_stride: int = 32
) -> keras.Model:
    """LinkNet: a ResNet-18 encoder whose features are added into a light decoder.

    Encoder (Sec. III): the paper's initial block (7x7/2 conv, 3x3/2 max-pool) is
    ResNet-18's stem, and its encoder blocks 1-4 are ResNet-18's stages, whose
    outputs are the frontend's ``stride4`` .. ``stride32`` endpoints. Decoder
    (Sec. III and its table of block widths): decoder block ``i``
    (``decoder_block``: 1x1 conv to ``m / 4``, 3x3 transposed conv, 1x1 conv to
    ``n``, each with BN and ReLU) takes the output of the block below; the
    outputs of decoders 4, 3 and 2 (512 to 256, 256 to 128, 128 to 64 on
    ResNet-18), upsampled 2x by their transposed convs, are added to the
    ``stride16``, ``stride8`` and ``stride4`` features, the inputs of encoder
    blocks 4, 3 and 2. Decoder 1 (64 to 64) keeps the stride-4 resolution:
    ResNet-18's first stage does not downsample, and the authors' code gives it
    stride 1. Its output is added to the input of encoder block 1, the stem's
    max-pool output (``pool1_pool``, 64 channels at stride 4), as in the paper's
    Fig. 1 and the authors' ``models/model.lua`` (``bypass2dec`` at layer 1). The
    head: 3x3 transposed conv stride 2 to 32 channels, BN, ReLU; 3x3 conv 32, BN,
    ReLU; 2x2 transposed conv stride 2 to the classes, float32 logits.

    On another frontend the decoder widths follow its endpoints: decoder ``i``
    maps the channels it receives (``m``) to those of the encoder features it is
    added to (``n``). Decoder 1 gets the bypass wherever the frontend has a
    layer named ``pool1_pool`` (ResNet18/34 and the ``keras.applications``
    ResNets), and then maps to its channels (e.g. 256 to 64 on ResNet-50);
    frontends without it (MobileNetV2, Xception, VGG16, DenseNet) have no
    encoder-block-1 input as a tensor of their own, so there decoder 1 keeps its
    width and has no bypass.

    Differences from the paper and the authors' code:
      * Their code applies a ReLU after each addition; it is the identity on
        ResNet endpoints (both terms are ReLU or max-pool-of-ReLU outputs) and
        is left out.
      * Same padding: each upsampled map is cropped at the bottom/right to the
        features it is added to (``CropLike``) and the logits to the input, so
        any input size works. The decoder's 1x1 and 3x3 convs have no bias (BN
        follows); BN uses the suite's settings (eps 1e-5, not 1e-3).
      * With ``output_stride < 32`` (not in the paper) decoders whose skip has
        the resolution of their input do not upsample (stride 1).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
    """
    features = frontend_features(frontend)

    def resolution(stride: int) -> int:
        return min(stride, output_stride)

    x = features["stride32"]
    stride = 32
    for index, skip_stride in ((4, 16), (3, 8), (2, 4)):
        skip = features[f"stride{skip_stride}"]
        factor = resolution(stride) // resolution(skip_stride)
        x = decoder_block(x, skip.shape[-1], stride=factor, name=f"decoder{index}")
        if factor > 1:
            x = CropLike(name=f"decoder{index}_crop")([x, skip])
        x = keras.layers.Add(name=f"decoder{index}_add")([x, skip])
        stride = skip_stride
    try:
        bypass = frontend.get_layer(ENCODER1_INPUT).output
    except ValueError:  # not a ResNet: no max-pool ahead of the first stage
        bypass = None
    x = decoder_block(x, x.shape[-1] if bypass is None else bypass.shape[-1], stride=1, name="decoder1")
    if bypass is not None:
        x = keras.layers.Add(name="decoder1_add")([x, bypass])

    x = keras.layers.Conv2DTranspose(
        32, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
        name="head_fullconv1",
    )(x)
    x = layers.batch_norm("head_fullconv1_bn")(x)
    x = keras.layers.ReLU(name="head_fullconv1_relu")(x)
    x = layers.conv_bn_relu(x, 32, 3, name="head_conv")
    x = keras.layers.Conv2DTranspose(
        num_classes, 2, strides=2, padding="same", name="head_fullconv2"
    )(x)
    logits = CropLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name="LinkNet")
