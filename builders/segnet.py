"""SegNet: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional
Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017 (arXiv 1511.00561).

Two architectures from the paper, both with their own encoder: ``SegNet`` (VGG16's
13 convolutions as encoder, a mirrored 13-convolution decoder) and ``SegNet-Basic``
(the smaller network of the paper's decoder analysis, Sec. 3.1).
"""

from __future__ import annotations

import keras

from builders.base import PaperParams, Recipe, register
from semseg_suite import layers

# VGG16's convolutional stages: (filters, convolutions) per encoder stage.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def decoder_widths(stages=VGG16_STAGES) -> list[list[int]]:
    """Widths of the decoder convolutions, deepest stage first.

    Each decoder mirrors its encoder; all its convolutions keep the encoder's width
    except the last, which reduces to the width the encoder stage was fed (Sec. 3:
    "the other decoders produce feature maps with the same number of ... channels as
    their encoder inputs"), e.g. 512, 512, 256 for the fourth stage. The first
    decoder (closest to the image) keeps its 64 channels for the classifier rather
    than returning to the image's 3.
    """
    widths = []
    for index in reversed(range(len(stages))):
        filters, count = stages[index]
        last = stages[index - 1][0] if index > 0 else filters
        widths.append([filters] * (count - 1) + [last])
    return widths


# Training of Sec. 3.2 (the CamVid decoder-variant study).
PAPER_RECIPE = Recipe(
    source="Badrinarayanan et al. 2017, Sec. 3.2",
    note=(
        "Sec. 3.2 states it for the CamVid decoder variants (SegNet-Basic and its relatives); we use it "
        "for SegNet too. Trained until the training loss converges: no epoch count. No augmentation "
        "is stated: the suite's stays."
    ),
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    lr_schedule="constant",
    batch_size=12,
    class_weights="median-frequency",
)


@register(
    "SegNet",
    default_frontend=None,
    takes_frontend=False,
    paper_params=PaperParams(
        params=29.46e6,
        source="Paszke et al. 2016 (ENet), Table 3; Badrinarayanan et al. 2017, Table 6 "
        "gives the matching 117 MB model size",
        num_classes=11,
        note="11 CamVid classes, as the SegNet and ENet papers trained it.",
    ),
    recipes={"paper": PAPER_RECIPE},
)
def build_segnet(
    frontend: keras.Model | None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
) -> keras.Model:
    """SegNet: a VGG16 encoder and a decoder that unpools with the encoder's argmax.

    Encoder (Sec. 3): VGG16's 13 3x3 convolutions (64, 64 | 128, 128 | 256 x3 |
    512 x3 | 512 x3), each followed by batch norm and ReLU, and five 2x2 stride-2
    max-poolings that keep the position of every maximum; no fully connected
    layers. Decoder: for each encoder stage, deepest first, max-unpooling with that
    stage's stored indices (values go back where the maxima were, zeros elsewhere)
    followed by the mirrored convolutions with batch norm and ReLU, 13 in all; the
    last convolution of each stage reduces to the next stage's width (the
    official Caffe ``segnet_train.prototxt`` layout: 512, 512, 512 | 512, 512, 256 |
    256, 256, 128 | 128, 64 | 64, 64). A 1x1 convolution (the paper's "trainable
    soft-max classifier") gives the class logits.

    Differences from the paper and its code:
      * The official prototxt's last decoder convolution (``conv1_1_D``) is a 3x3
        convolution straight to the classes, without batch norm; we follow the
        paper's text instead (13 decoder convolutions with batch norm and ReLU,
        then a pixel-wise classifier), which adds about 31k parameters.
      * Convolutions before batch norm have no bias (BN's shift makes it
        redundant); the Caffe model has one.
      * Inputs of any size: pooling pads odd sizes (``MaxPoolingWithArgmax2D``)
        and unpooling crops back to the pooled tensor's size, where the Caffe
        model hard-codes the unpooled sizes of 360x480 inputs.
      * The encoder is trained from scratch here (no ImageNet VGG16 weights: the
        paper's VGG16 has no batch norm, so its weights do not transfer by name).

    Args:
        frontend: must be ``None`` (SegNet has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; any channel count.
    """
    del frontend
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    skips = []  # (pre-pool tensor, indices) per encoder stage
    for stage, (filters, count) in enumerate(VGG16_STAGES, start=1):
        for conv in range(1, count + 1):
            x = layers.conv_bn_relu(x, filters, 3, name=f"enc{stage}_conv{conv}")
        prepool = x
        x, indices = layers.MaxPoolingWithArgmax2D(2, name=f"enc{stage}_pool")(x)
        skips.append((prepool, indices))

    for stage, widths in zip(range(len(VGG16_STAGES), 0, -1), decoder_widths()):
        prepool, indices = skips[stage - 1]
        x = layers.MaxUnpooling2D(2, name=f"dec{stage}_unpool")([x, indices, prepool])
        for conv, filters in enumerate(widths, start=1):
            x = layers.conv_bn_relu(x, filters, 3, name=f"dec{stage}_conv{conv}")

    logits = layers.classifier(x, num_classes, reference=inputs)
    return keras.Model(inputs, logits, name="SegNet")


@register(
    "SegNet-Basic",
    default_frontend=None,
    takes_frontend=False,
    paper_params=PaperParams(
        params=1.425e6,
        source="Badrinarayanan et al. 2017, Table 1",
        num_classes=11,
        note="11 CamVid classes (the paper's decoder analysis).",
    ),
    recipes={"paper": PAPER_RECIPE},
)
def build_segnet_basic(
    frontend: keras.Model | None,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    filters: int = 64,
    kernel_size: int = 7,
    stages: int = 4,
) -> keras.Model:
    """SegNet-Basic, the smaller SegNet of the paper's decoder analysis (Sec. 3.1).

    Four encoders, each a 7x7 convolution of 64 channels, batch norm, ReLU and a
    2x2 max-pooling that keeps its argmax; four decoders, each max-unpooling with
    the matching encoder's indices and a 7x7 convolution of 64 channels with batch
    norm but no ReLU ("no ReLU non-linearity is present in the decoder network");
    then a 1x1 convolution to the classes. No biases after convolutions, as in the
    paper. The deepest decoder unpools the last pooling's output directly, as in
    the official ``segnet_basic_train.prototxt``.

    Differences from the official Caffe model: its local response normalisation
    of the input image is left out (the paper does not describe it, and the
    suite normalises inputs in the data pipeline); inputs of any size are
    supported as in ``SegNet``.

    Args:
        frontend: must be ``None`` (SegNet-Basic has its own encoder).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)`` of the input; any channel count.
        filters: channels of every convolution (64 in the paper).
        kernel_size: kernel size of every encoder and decoder convolution (7).
        stages: encoder and decoder stages (4).
    """
    del frontend
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    skips = []
    for stage in range(1, stages + 1):
        x = layers.conv_bn_relu(x, filters, kernel_size, name=f"enc{stage}")
        prepool = x
        x, indices = layers.MaxPoolingWithArgmax2D(2, name=f"enc{stage}_pool")(x)
        skips.append((prepool, indices))

    for stage in range(stages, 0, -1):
        prepool, indices = skips[stage - 1]
        x = layers.MaxUnpooling2D(2, name=f"dec{stage}_unpool")([x, indices, prepool])
        x = layers.conv2d(filters, kernel_size, name=f"dec{stage}_conv")(x)
        x = layers.batch_norm(f"dec{stage}_bn")(x)

    logits = layers.classifier(x, num_classes, reference=inputs)
    return keras.Model(inputs, logits, name="SegNet-Basic")
