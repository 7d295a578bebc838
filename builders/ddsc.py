"""DDSC: Bilinski, Prisacariu, "Dense Decoder Shortcut Connections for Single-Pass
Semantic Segmentation", CVPR 2018."""

from __future__ import annotations

from typing import Sequence

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

STAGES = ("stride32", "stride16", "stride8", "stride4")  # the decoder's order, coarse to fine
WIDTHS = (1024, 512, 256, 128)  # decoder features per stage, in STAGES' order
CARDINALITY = 32  # ResNeXt's C (Xie et al. 2017, the 32x4d template)


def resnext_block(x, *, cardinality: int = CARDINALITY, bottleneck_factor: int = 2, name: str):
    """A ResNeXt residual block (Xie et al. 2017, Fig. 3c) at the width of ``x``.

    1x1 conv-BN-ReLU to ``width / bottleneck_factor``, a 3x3 grouped convolution
    (``cardinality`` groups, a real ``Conv2D(groups=...)``) with BN and ReLU, a 1x1
    conv-BN back to the width, added to ``x``, ReLU. The grouped convolution's
    output is what the last 1x1 convolution reads (the popular TF1 port dropped it).
    """
    width = x.shape[-1]
    bottleneck = width // bottleneck_factor
    if bottleneck % cardinality:
        raise ValueError(
            f"{name}: the bottleneck width {bottleneck} (= {width} / {bottleneck_factor}) "
            f"must be a multiple of the cardinality {cardinality}"
        )
    y = layers.conv_bn_relu(x, bottleneck, 1, name=f"{name}_reduce")
    y = keras.layers.Conv2D(
        bottleneck,
        3,
        padding="same",
        groups=cardinality,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_grouped_conv",
    )(y)
    y = layers.batch_norm(f"{name}_grouped_bn")(y)
    y = keras.layers.ReLU(name=f"{name}_grouped_relu")(y)
    y = layers.conv2d(width, 1, name=f"{name}_expand_conv")(y)
    y = layers.batch_norm(f"{name}_expand_bn")(y)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def encoder_adaptation(x, width: int, *, blocks: int, cardinality: int, name: str):
    """Encoder adaptation: a 3x3 conv-BN-ReLU to ``width``, ``blocks`` ResNeXt
    blocks, another 3x3 conv-BN-ReLU."""
    x = layers.conv_bn_relu(x, width, 3, name=f"{name}_in")
    for index in range(1, blocks + 1):
        x = resnext_block(x, cardinality=cardinality, name=f"{name}_block{index}")
    return layers.conv_bn_relu(x, width, 3, name=f"{name}_out")


def semantic_feature_generation(x, width: int, *, pools: int, pool_size: int, blocks: int, cardinality: int,
                                name: str):
    """Context aggregation, then semantic feature generation, at ``width``.

    Context: ``pools`` steps in a chain, each a 3x3 conv-BN-ReLU to ``width`` and
    a ``pool_size`` max-pool with stride 1 (the next step reads the pooled map);
    each pooled map also goes through a 3x3 conv-BN-ReLU to ``width / pools``,
    and these are concatenated (``width`` channels). Then a 3x3 conv-BN-ReLU,
    ``blocks`` ResNeXt blocks and a 3x3 conv-BN-ReLU: the stage's output.
    """
    branches = []
    for index in range(1, pools + 1):
        x = layers.conv_bn_relu(x, width, 3, name=f"{name}_context{index}")
        x = keras.layers.MaxPooling2D(pool_size, strides=1, padding="same", name=f"{name}_context{index}_pool")(x)
        branches.append(layers.conv_bn_relu(x, width // pools, 3, name=f"{name}_context{index}_branch"))
    x = keras.layers.Concatenate(name=f"{name}_context_concat")(branches)
    x = layers.conv_bn_relu(x, width, 3, name=f"{name}_semantic_in")
    for index in range(1, blocks + 1):
        x = resnext_block(x, cardinality=cardinality, name=f"{name}_semantic_block{index}")
    return layers.conv_bn_relu(x, width, 3, name=f"{name}_out")


@register("DDSC", default_frontend="ResNet101", default_output_stride=32)
def build_ddsc(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    widths: Sequence[int] = WIDTHS,
    cardinality: int = CARDINALITY,
    adaptation_blocks: int = 3,
    semantic_blocks: int = 4,
    pools: int = 4,
    pool_size: int = 5,
) -> keras.Model:
    """DDSC: encoder adaptation, decoder blocks and dense decoder shortcut connections.

    Four decoder stages, coarse to fine, on the frontend's stride-32, 16, 8 and 4
    features, at ``widths`` (1024, 512, 256, 128) channels. Every stage:

    * encoder adaptation of the frontend features at its stride
      (`encoder_adaptation`: 3x3 conv, 3 ResNeXt blocks, 3x3 conv);
    * fusion, below the coarsest stage: the adapted features and the output of
      *every* coarser decoder stage (the dense decoder shortcut connections), each
      through its own 3x3 conv-BN-ReLU to this stage's width, resized to this
      stage's resolution (bilinear, to the adapted features' size, so odd input
      sizes work) and summed. Each shortcut reads a coarser stage's output itself,
      not a projection made for another stage;
    * context aggregation and semantic feature generation
      (`semantic_feature_generation`: four chained 3x3 conv + 5x5 stride-1
      max-pool steps whose pooled maps, each reduced to a quarter of the width,
      are concatenated; a 3x3 conv, 4 ResNeXt blocks, a 3x3 conv).

    The stride-4 stage's output goes through a 1x1 classifier and bilinear
    upsampling to the input. Every ResNeXt block (`resnext_block`) has cardinality
    32 and a bottleneck of half its width, as ResNeXt's 32x4d template, with a real
    grouped convolution. Every convolution is followed by batch norm. No
    auxiliary losses: the paper's abstract and the port describe none.

    Sources and assumptions: the overall design (ResNeXt-style encoder and
    decoder blocks, adaptation of every encoder stage, dense shortcuts from all
    coarser decoder stages, single-pass inference) is the paper's (its
    abstract). The paper's own text beyond its abstract was not reachable when this
    was written, and we found no code of the authors', so the block compositions and
    numbers above (widths 1024/512/256/128, 3 and 4 ResNeXt blocks, four 5x5
    pooling steps at a quarter width each, fusion by a 3x3 conv per path and a sum)
    are those of the Semantic Segmentation Suite's TF1 port, written from the
    paper; they are unverified against the paper's text. We differ from that
    port where it is wrong or unusual: its grouped convolution's output was
    discarded and its later shortcuts re-project (and re-upsample by wrong
    factors) the tensors made for the previous stage instead of reading each
    stage's output; it uses pre-activation BN-ReLU-conv units (here conv-BN-ReLU,
    ResNeXt's order); and its last stage emits ``num_classes`` ReLU features that
    it upsamples 4x before a 1x1 classifier (here the classifier reads the
    128-channel stride-4 output, then bilinear upsampling).

    Frontend: the paper's encoder is ResNeXt-101 (32x4d), which the registry does
    not have; the default is ResNet-101 (same stage layout and strides).

    Args:
        frontend: a frontend with stride-4 ... stride-32 endpoints, at output
            stride 32 (the paper's encoder is not dilated).
        num_classes: number of output classes.
        output_stride: the frontend's output stride.
        widths: decoder channels of the stride-32, 16, 8 and 4 stages; each must be
            a multiple of ``2 * cardinality`` and of ``pools``.
        cardinality: groups of every ResNeXt block's grouped convolution.
        adaptation_blocks: ResNeXt blocks of each encoder adaptation.
        semantic_blocks: ResNeXt blocks of each semantic feature generation.
        pools: chained pooling steps of the context aggregation.
        pool_size: their max-pool window.
    """
    if len(widths) != len(STAGES):
        raise ValueError(f"widths needs one width per stage {STAGES}, got {tuple(widths)}")
    features = frontend_features(frontend)
    outputs = {}  # stage -> decoder output
    for stage, width in zip(STAGES, widths):
        tag = stage[6:]
        x = encoder_adaptation(features[stage], width, blocks=adaptation_blocks, cardinality=cardinality,
                               name=f"adapt{tag}")
        if outputs:
            paths = [layers.conv_bn_relu(x, width, 3, name=f"dec{tag}_skip")]
            for coarser, decoded in outputs.items():
                name = f"dec{tag}_from{coarser[6:]}"
                y = layers.conv_bn_relu(decoded, width, 3, name=name)
                paths.append(layers.ResizeLike(name=f"{name}_resize")([y, x]))
            x = keras.layers.Add(name=f"dec{tag}_fusion")(paths)
        outputs[stage] = semantic_feature_generation(
            x, width, pools=pools, pool_size=pool_size, blocks=semantic_blocks, cardinality=cardinality,
            name=f"dec{tag}",
        )
    logits = layers.classifier(outputs[STAGES[-1]], num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="DDSC")
