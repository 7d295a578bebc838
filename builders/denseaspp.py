"""DenseASPP: Yang, Yu, Zhang, Li, Yang, "DenseASPP for Semantic Segmentation in
Street Scenes", CVPR 2018."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

# Atrous rates of the five densely connected layers (Sec. 3), at output stride 8.
RATES = (3, 6, 12, 18, 24)


def atrous_layer(x, *, bottleneck_filters: int, filters: int, rate: int, dropout: float,
                 normalize: bool, name: str):
    """One DenseASPP layer: [BN, ReLU,] 1x1 conv, BN, ReLU, 3x3 atrous conv, dropout.

    Args:
        x: the concatenation of the head's input (the transition's output) and all
            earlier layers' outputs.
        bottleneck_filters: channels of the 1x1 convolution (512).
        filters: channels of the atrous 3x3 convolution (128).
        rate: its dilation rate.
        dropout: channel-wise dropout rate on its output (0.1).
        normalize: start with BN and ReLU (every layer but the first, whose input,
            the transition's output, is already batch-normalised and rectified).
        name: block name, e.g. ``denseaspp2``.
    """
    if normalize:
        x = layers.batch_norm(f"{name}_0_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_0_relu")(x)
    x = layers.conv_bn_relu(x, bottleneck_filters, 1, name=f"{name}_1")
    x = layers.conv2d(filters, 3, rate=rate, use_bias=True, name=f"{name}_2_conv")(x)
    return keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)


@register("DenseASPP", default_frontend="DenseNet161", default_output_stride=8)
def build_denseaspp(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    rates=RATES,
    bottleneck_filters: int = 512,
    filters: int = 128,
    dropout: float = 0.1,
    final_dropout: float = 0.1,
    transition: bool = True,
) -> keras.Model:
    """DenseASPP: densely connected atrous convolutions on a dilated DenseNet.

    Following Yang et al. 2018 and its official code
    (DeepMotionAIResearch/DenseASPP, ``models/DenseASPP.py`` with
    ``cfgs/DenseASPP161.py``): a DenseNet-161 frontend at output stride 8 (its
    last two transition poolings removed, dense blocks 3 and 4 dilated by 2 and 4;
    see ``frontends.densenet``). Its final BN-ReLU features (2208 channels) go
    through a transition without pooling, as in every DenseNet configuration of
    the official code (``transition4`` with ``stride=1``, then ``norm5``): a 1x1
    convolution to half the channels (1104), BN, ReLU
    (``denseaspp_transition_*``). These ``c0 = 1104`` channels feed five atrous
    layers at rates 3, 6, 12, 18 and 24. Layer ``l`` takes the concatenation of
    the transition's output and the outputs of layers 1 .. l-1
    (``denseaspp{l}_input``), and applies BN, ReLU, a 1x1 convolution to 512
    channels, BN, ReLU, a 3x3 convolution at its rate to 128 channels, and dropout
    0.1. Layer 1 has no BN-ReLU of its own: its input already went through the
    transition's BN and ReLU (the official ``norm5`` and the ReLU that starts its
    first layer). The five outputs are concatenated with the transition's output
    (1104 + 5 x 128 = 1744 channels), then dropout 0.1, a 1x1 convolution to the
    classes and bilinear upsampling to the input (8x at output stride 8). Widths
    512/128 are the DenseNet-161 configuration (``cfgs/DenseASPP161.py``), not the
    256/64 of a popular TF1 port; they are about ``c0 / 2`` and ``c0 / 8`` of the
    1104 channels the transition leaves, which the paper's widths assume (of
    2208 channels they would be about a quarter and a seventeenth). The official
    DenseNet-121 configuration (``cfgs/DenseASPP121.py``, 1024 channels halved
    to 512) uses 128/64: ``bottleneck_filters=128, filters=64``.

    Other frontends work on their ``stride32`` endpoint, which the transition
    halves the same way (2048 to 1024 on ResNet-50; 320 to 160 on MobileNetV2).
    The official MobileNetV2 variant (``models/MobileNetDenseASPP.py``, 128/64)
    has no transition and feeds its 320 linear-bottleneck channels straight to
    layer 1: ``transition=False`` builds that (layer 1 then takes the endpoint as
    it is, without the ReLU the official layer 1 starts with). At output stride
    16 or 32 the transition's output is resized bilinearly to the ``stride8``
    endpoint's size, so the rates keep the meaning they have at stride 8 (the
    official code upsamples 2x after ``norm5`` at output stride 16 the same way).

    Parameters: we found no count in the paper, so none is registered. With
    DenseNet-161 and 19 classes (Cityscapes) ours holds 35,631,523 values (BN
    statistics included; 35,392,867 trainable; the frontend 26.69M, of which 26.47M
    trainable, torchvision's count). As a check of the widths: with the official
    code's 2,560 1x1-conv biases that is 142.5 MB of float32, and the official
    DenseNet-161 checkpoint is 142.7 MB (its README). Without the transition it
    would hold 36,054,355.

    Differences from the paper and its official code:
      * The transition's BN-ReLU ahead of its 1x1 convolution is the frontend's
        final ``bn``/``relu`` (DenseNet's pretrained 2208-channel ``norm5``),
        where the official code has a separate ``transition4.norm`` and reuses
        the name ``norm5`` for the 1104-channel BN after the convolution: the
        same sequence of layers (BN, ReLU, 1x1 conv, BN, ReLU).
      * Dropout is channel-wise (``SpatialDropout2D``), as the official code's
        ``Dropout2d``, rather than element-wise.
      * The 1x1 convolutions have no bias (BN follows); the atrous ones keep it, as
        in the official code. BN momentum 0.9 (``semseg_suite.layers``) instead of
        the official ASPP's 0.0003 (PyTorch's convention: decay 0.9997).
      * Concatenation order: the transition's output first, then layers 1 .. 5 (the
        official code prepends each new output); only a weight-conversion detail.
      * Upsampling resizes to the input's size (``layers.classifier``), not by a
        fixed 8x, so odd input sizes work.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper; 16 and 32
            work through the resize above).
        rates: atrous rates of the layers, in order (3, 6, 12, 18, 24).
        bottleneck_filters: channels of each layer's 1x1 convolution (512).
        filters: channels each layer adds, its atrous convolution's width (128).
        dropout: dropout rate after each atrous layer (0.1).
        final_dropout: dropout rate before the classifier (0.1).
        transition: the official code's transition before the atrous layers
            (1x1 convolution to half the channels, BN, ReLU; on by default);
            ``False`` feeds the frontend's features to layer 1 directly.
    """
    features = frontend_features(frontend)
    x = features["stride32"]
    if transition:
        channels = max(x.shape[-1] // 2, 1)
        x = layers.conv2d(channels, 1, name="denseaspp_transition_conv")(x)
        x = layers.batch_norm("denseaspp_transition_bn")(x)
        x = keras.layers.ReLU(name="denseaspp_transition_relu")(x)
    if output_stride > 8:
        x = layers.ResizeLike(name="denseaspp_resize")([x, features["stride8"]])
    stack = [x]
    for index, rate in enumerate(rates, start=1):
        name = f"denseaspp{index}"
        inputs = stack[0] if index == 1 else keras.layers.Concatenate(name=f"{name}_input")(stack)
        stack.append(
            atrous_layer(
                inputs,
                bottleneck_filters=bottleneck_filters,
                filters=filters,
                rate=rate,
                dropout=dropout,
                normalize=index > 1,
                name=name,
            )
        )
    x = keras.layers.Concatenate(name="denseaspp_concat")(stack)
    x = keras.layers.SpatialDropout2D(final_dropout, name="denseaspp_dropout")(x)
    logits = layers.classifier(x, num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="DenseASPP")
