"""DFN: Yu, Wang, Peng, Gao, Yu, Sang, "Learning a Discriminative Feature Network
for Semantic Segmentation", CVPR 2018."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

STAGES = ("stride32", "stride16", "stride8", "stride4")  # res5 ... res2, the smooth network's top-down order
BORDER_WEIGHT = 0.1  # lambda of the border loss (Sec. 3.3; the authors' aux_loss_alpha)
_BORDER = {f"border{stage[6:]}": BORDER_WEIGHT for stage in STAGES}
_SMOOTH = {f"smooth{stage[6:]}": 1.0 for stage in STAGES[:-1]}  # the stride-4 one is the main output


def refinement_residual_block(x, filters, *, relu=True, name):
    """RRB (Fig. 2c): 1x1 conv to `filters`, then a residual 3x3 conv-BN-ReLU -> 3x3 conv, summed, ReLU."""
    x = layers.conv2d(filters, 1, name=f"{name}_1x1")(x)
    y = layers.conv_bn_relu(x, filters, 3, name=f"{name}_cbr")
    y = layers.conv2d(filters, 3, name=f"{name}_refine")(y)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def channel_attention_block(low, high, *, name):
    """CAB (Fig. 2b): weights from both stages rescale the low stage's channels; the high stage is added."""
    filters = low.shape[-1]
    weights = keras.layers.Concatenate(name=f"{name}_concat")([low, high])
    weights = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(weights)
    weights = keras.layers.Conv2D(filters, 1, activation="relu", name=f"{name}_fc1")(weights)
    weights = keras.layers.Conv2D(filters, 1, activation="sigmoid", name=f"{name}_fc2")(weights)
    low = keras.layers.Multiply(name=f"{name}_scale")([low, weights])
    return keras.layers.Add(name=f"{name}_add")([low, high])


def _head(x, outputs, reference, name):
    """The authors' prediction head: an RRB to 9x the outputs (no ReLU), a 1x1 conv, upsampled."""
    x = refinement_residual_block(x, 9 * outputs, relu=False, name=f"{name}_rrb")
    x = keras.layers.Conv2D(outputs, 1, name=f"{name}_conv")(x)
    return layers.ResizeLike(name=name, dtype="float32")([x, reference])


@register(
    "DFN",
    default_frontend="ResNet101",
    default_output_stride=32,
    aux_loss_weights={**_SMOOTH, **_BORDER},
)
def build_dfn(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    filters: int = 512,
    border_filters: int = 21,
) -> keras.Model:
    """DFN: the smooth network (channel attention, refinement) and the border network.

    Smooth network (Sec. 3.1, Fig. 2a), top-down from res5: global average pooling
    of res5, a 1x1 conv-BN-ReLU to 512, upsampled: the first "higher stage". At
    each stage (res5, res4, res3, res2): an RRB to 512 channels, a CAB with the
    upsampled output of the stage above, another RRB; each stage's output is
    predicted (deep supervision), the res2 one (stride 4) is the model's output.
    Border network (Sec. 3.2), bottom-up from res2: an RRB per stage, upsampled to
    stride 4 and added to the sum so far, which passes another RRB; each partial
    sum predicts a 1-channel border map. The losses (Sec. 3.3): softmax
    cross-entropy on the four smooth outputs (weight 1 each) plus lambda = 0.1
    times the focal loss of the four border outputs against the label map's
    semantic boundaries, computed inside the training step
    (`losses.border_focal_loss`).

    Where the paper is silent we follow the authors' code (TorchSeg,
    ``model/dfn``): widths 512 in the smooth network and 21 in the border network;
    each prediction head an RRB to 9x its outputs without ReLU, then a 1x1 conv;
    the CAB's two fully connected layers keep 512 channels; focal loss gamma 2,
    alpha 0.25; border targets are the label edges dilated by a 7x7 square. The
    authors train the smooth outputs with OHEM cross-entropy: here they take the
    run's ``--loss`` (cross-entropy by default; ``--loss ohem`` for theirs).

    Args:
        frontend: a frontend with stride-4 ... stride-32 endpoints, at output
            stride 32 (the paper's ResNet-101 is not dilated).
        num_classes: number of output classes.
        output_stride: the frontend's output stride.
        filters: channels of the smooth network.
        border_filters: channels of the border network.
    """
    features = frontend_features(frontend)
    top = features["stride32"]
    context = keras.layers.GlobalAveragePooling2D(keepdims=True, name="dfn_global_pool")(top)
    context = layers.conv_bn_relu(context, filters, 1, name="dfn_global")
    higher = layers.ResizeLike(name="dfn_global_resize")([context, top])
    outputs = {}
    for index, stage in enumerate(STAGES):
        name = f"smooth{stage[6:]}"
        x = refinement_residual_block(features[stage], filters, name=f"{name}_pre")
        x = channel_attention_block(x, higher, name=f"{name}_cab")
        x = refinement_residual_block(x, filters, name=f"{name}_post")
        outputs["logits" if stage == "stride4" else name] = _head(x, num_classes, frontend.input, f"{name}_head")
        if index + 1 < len(STAGES):
            higher = layers.ResizeLike(name=f"{name}_up")([x, features[STAGES[index + 1]]])

    fine = features["stride4"]
    total = None
    for stage in reversed(STAGES):
        name = f"border{stage[6:]}"
        x = refinement_residual_block(features[stage], border_filters, name=f"{name}_pre")
        if total is None:
            total = x
        else:
            x = layers.ResizeLike(name=f"{name}_up")([x, fine])
            total = keras.layers.Add(name=f"{name}_add")([total, x])
            total = refinement_residual_block(total, border_filters, name=f"{name}_post")
        outputs[name] = _head(total, 1, frontend.input, f"{name}_head")
    return keras.Model(frontend.input, outputs, name="DFN")
