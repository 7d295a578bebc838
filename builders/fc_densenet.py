"""FC-DenseNet ("Tiramisu"): Jégou, Drozdzal, Vazquez, Romero, Bengio, "The One
Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic Segmentation",
CVPR Workshops 2017."""

from __future__ import annotations

from typing import Sequence

import keras

from builders.base import PaperParams, Recipe, register
from semseg_suite import layers

NUM_POOLS = 5  # five transitions down and five up in every FC-DenseNet of the paper
# Dense layers per block of FC-DenseNet103: five down, the bottleneck, five up (Table 2).
FC_DENSENET103_LAYERS = (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4)


def _conv(filters: int, kernel_size: int, *, name: str):
    """Same-padded convolution with bias and He-uniform init, as the authors' code."""
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", kernel_initializer="he_uniform", name=name
    )


def _bn_relu_conv(x, filters: int, kernel_size: int, dropout: float, *, name: str):
    """BN, ReLU, convolution and dropout (the paper's dense layer, Table 1)."""
    x = layers.batch_norm(f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = _conv(filters, kernel_size, name=f"{name}_conv")(x)
    return keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)


def _concat(tensors, *, name: str):
    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=name)(tensors)


def _dense_block(
    x, num_layers: int, growth_rate: int, dropout: float, *, name: str, keep_stack: bool
):
    """A dense block: every layer sees the block input and all earlier layers' maps.

    Returns ``(stack, new)``: ``stack`` is the block input concatenated with the
    ``num_layers * growth_rate`` new feature maps (``None`` when ``keep_stack`` is
    false and nothing needs it), and ``new`` the list of each layer's new maps.
    """
    new = []
    for j in range(1, num_layers + 1):
        y = _bn_relu_conv(x, growth_rate, 3, dropout, name=f"{name}_layer{j}")
        new.append(y)
        if j < num_layers or keep_stack:
            x = keras.layers.Concatenate(name=f"{name}_layer{j}_concat")([x, y])
    return (x if keep_stack else None), new


def _transition_down(x, dropout: float, *, name: str):
    """BN, ReLU, 1x1 conv keeping the width, dropout, 2x2 max-pool (Table 1)."""
    x = _bn_relu_conv(x, x.shape[-1], 1, dropout, name=name)
    return keras.layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)


def _transition_up(new_features, skip, *, name: str):
    """3x3 transposed conv, stride 2, of the new maps only, concatenated with the skip.

    ``new_features`` is the concatenation of the previous dense block's new maps.
    """
    x = keras.layers.Conv2DTranspose(
        new_features.shape[-1],
        3,
        strides=2,
        padding="same",
        kernel_initializer="he_uniform",
        name=f"{name}_conv",
    )(new_features)
    x = layers.ResizeLike(name=f"{name}_resize")([x, skip])
    return keras.layers.Concatenate(name=f"{name}_concat")([x, skip])


def build_fc_densenet(
    frontend,
    num_classes: int,
    *,
    input_shape=(None, None, 3),
    layers_per_block: int | Sequence[int],
    growth_rate: int,
    initial_filters: int = 48,
    dropout: float = 0.2,
    name: str = "FC-DenseNet",
) -> keras.Model:
    """A fully convolutional DenseNet (Jégou et al. 2017, Sec. 3 and Tables 1-2).

    First a 3x3 conv to ``initial_filters`` (48) maps. Downsampling path: five
    times a dense block followed by a transition down; the block's output (its
    input concatenated with its new maps) is kept as skip connection. A dense
    layer is BN, ReLU, 3x3 conv with ``growth_rate`` filters, dropout 0.2; each
    layer's maps are concatenated to its input, so a block of ``n`` layers adds
    ``n * growth_rate`` maps. A transition down is BN, ReLU, 1x1 conv keeping the
    width, dropout 0.2, 2x2 max-pool. Then the bottleneck dense block. Upsampling
    path: five times a transition up, a 3x3 transposed conv with stride 2 applied
    only to the new maps of the previous dense block (not to its input, which
    would grow the width linearly, Sec. 3.2), with as many filters as those new
    maps, concatenated with the skip of the same resolution, then a dense block.
    Finally the last block's full output (skip, up-sampled maps and new maps) goes
    through a 1x1 conv to the classes. Softmax is left to the loss; logits are
    float32.

    Widths (FC-DenseNet103, k=16): 48; 112, 192, 304, 464, 656 after the
    downsampling blocks; 656 + 15 x 16 = 896 at the end of the bottleneck (which
    is never materialised: only its 240 new maps go on); 1088, 816, 576, 384 and
    256 at the end of the up blocks. The authors' README notes that Table 2's
    values from the bottleneck on (880, 1072, 800, ...) are 16 short; we built
    the architecture of their code, whose counts these are.
    The network has 103 convolution layers: 1 first conv, 38 + 15 + 38 dense
    layers, 5 transitions down, 5 transitions up and the classifier (Sec. 4).
    With 11 classes (CamVid) the registered variants have 9.43M (103), 3.50M
    (67) and 1.40M (56) parameters; Table 3 reports 9.4M, 3.5M and 1.5M. The
    construction that matches the first two gives 1.40M for k=12 and 4 layers
    per block, so we keep it rather than fit the third number.

    Convolutions have the paper's HeUniform init and, as in the authors' code,
    biases; the transposed conv is linear. Differences: the authors' code pools
    with ``floor`` sizes and center-crops the up-sampled maps to the skip; here
    pooling is same-padded (``ceil``) and the up-sampled maps are resized
    (bilinear) to the skip's size, which is the identity when the input size is
    a multiple of 32 and keeps odd sizes working. BN momentum 0.9 (see
    ``semseg_suite.layers``); the paper's weight decay 1e-4 is a training
    setting, not part of the model.

    Args:
        frontend: must be ``None``: FC-DenseNet has its own encoder.
        num_classes: number of output classes.
        input_shape: ``(H, W, C)``; ``None`` dims accept any size, any ``C``.
        layers_per_block: layers per dense block: one int for all eleven blocks,
            or eleven ints (five down, bottleneck, five up).
        growth_rate: new maps per dense layer (``k``: 12 or 16 in the paper).
        initial_filters: maps of the first convolution (48).
        dropout: dropout rate after every dense layer and transition down (0.2).
        name: the model's name.
    """
    if frontend is not None:
        raise ValueError(f"{name} has its own encoder and takes no frontend")
    if isinstance(layers_per_block, int):
        layers_per_block = [layers_per_block] * (2 * NUM_POOLS + 1)
    layers_per_block = [int(n) for n in layers_per_block]
    if len(layers_per_block) != 2 * NUM_POOLS + 1 or min(layers_per_block) < 1:
        raise ValueError(
            f"layers_per_block must be a positive int or {2 * NUM_POOLS + 1} positive ints, "
            f"got {layers_per_block}"
        )
    down_layers = layers_per_block[:NUM_POOLS]
    bottleneck_layers = layers_per_block[NUM_POOLS]
    up_layers = layers_per_block[NUM_POOLS + 1 :]

    inputs = keras.Input(input_shape)
    x = _conv(initial_filters, 3, name="stem_conv")(inputs)

    skips = []
    for i, num_layers in enumerate(down_layers, start=1):
        x, _ = _dense_block(x, num_layers, growth_rate, dropout, name=f"down{i}", keep_stack=True)
        skips.append(x)
        x = _transition_down(x, dropout, name=f"down{i}_td")

    block = "bottleneck"
    _, new = _dense_block(x, bottleneck_layers, growth_rate, dropout, name=block, keep_stack=False)

    for i, (num_layers, skip) in enumerate(zip(up_layers, reversed(skips)), start=1):
        new_features = _concat(new, name=f"{block}_new_features")
        x = _transition_up(new_features, skip, name=f"up{i}_tu")
        block = f"up{i}"
        last = i == NUM_POOLS
        x, new = _dense_block(x, num_layers, growth_rate, dropout, name=block, keep_stack=last)

    logits = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer="he_uniform", dtype="float32", name="logits"
    )(x)
    return keras.Model(inputs, logits, name=name)


def _paper_params(params: float, note: str = "") -> PaperParams:
    """Table 3's count, for CamVid's 11 classes and the paper's own encoder."""
    return PaperParams(
        params=params, source="Jégou et al. 2017, Table 3", num_classes=11, note=note
    )


# Sec. 4 (training) and 4.1 (CamVid crops and batch), the same for the three depths.
PAPER_RECIPE = Recipe(
    source="Jégou et al. 2017, Sec. 4 and 4.1",
    note=(
        "Random crops without rescaling; the paper's 'vertical flips' are read as mirror images "
        "(--h-flip). No epoch count: training stops early (patience 100 on val mIoU), else after "
        "--num-epochs. Not done: the second stage, fine-tuning on full-size images at 1e-4 with "
        "patience 50. Keras's RMSProp epsilon is 1e-7 (Lasagne's 1e-6)."
    ),
    optimizer="rmsprop",
    learning_rate=1e-3,
    lr_schedule="step",
    lr_step_epochs=1,
    lr_step_factor=0.995,
    weight_decay=1e-4,
    batch_size=3,
    crop_height=224,
    crop_width=224,
    patience=100,
    scale_range=(1.0, 1.0),
    h_flip=True,
)


@register(
    "FC-DenseNet56",
    default_frontend=None,
    takes_frontend=False,
    paper_params=_paper_params(
        1.5e6,
        "Table 3 gives 1.5M, but the architecture of Table 2 and of the authors' code "
        "with k=12 and 4 layers per block has 1.40M parameters (BN statistics "
        "included), 7% fewer; the same construction matches Table 3 for FC-DenseNet67 "
        "and FC-DenseNet103 within 0.3%, so we keep the paper's architecture.",
    ),
    recipes={"paper": PAPER_RECIPE},
)
def build_fc_densenet56(
    frontend, num_classes: int, *, input_shape=(None, None, 3), dropout: float = 0.2
):
    """FC-DenseNet56: growth rate 12, 4 layers in each of the 11 dense blocks.

    See ``build_fc_densenet``; ``dropout`` is the paper's 0.2.
    """
    return build_fc_densenet(
        frontend,
        num_classes,
        input_shape=input_shape,
        layers_per_block=4,
        growth_rate=12,
        dropout=dropout,
        name="FC-DenseNet56",
    )


@register(
    "FC-DenseNet67",
    default_frontend=None,
    takes_frontend=False,
    paper_params=_paper_params(3.5e6),
    recipes={"paper": PAPER_RECIPE},
)
def build_fc_densenet67(
    frontend, num_classes: int, *, input_shape=(None, None, 3), dropout: float = 0.2
):
    """FC-DenseNet67: growth rate 16, 5 layers in each of the 11 dense blocks.

    See ``build_fc_densenet``; ``dropout`` is the paper's 0.2.
    """
    return build_fc_densenet(
        frontend,
        num_classes,
        input_shape=input_shape,
        layers_per_block=5,
        growth_rate=16,
        dropout=dropout,
        name="FC-DenseNet67",
    )



@register(
    "FC-DenseNet103",
    default_frontend=None,
    takes_frontend=False,
    paper_params=_paper_params(9.4e6),
    recipes={"paper": PAPER_RECIPE},
)
def build_fc_densenet103(
    frontend, num_classes: int, *, input_shape=(None, None, 3), dropout: float = 0.2
):
    """FC-DenseNet103: growth rate 16, dense blocks of 4, 5, 7, 10, 12 layers down,
    15 in the bottleneck and 12, 10, 7, 5, 4 up (Table 2).

    See ``build_fc_densenet``; ``dropout`` is the paper's 0.2.
    """
    return build_fc_densenet(
        frontend,
        num_classes,
        input_shape=input_shape,
        layers_per_block=FC_DENSENET103_LAYERS,
        growth_rate=16,
        dropout=dropout,
        name="FC-DenseNet103",
    )
