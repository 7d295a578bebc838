"""RefineNet: Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks
for High-Resolution Semantic Segmentation", CVPR 2017."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

# The RefineNet blocks, coarse to fine: the paper's block number and the stride of
# the frontend features each one takes.
_BLOCKS = ((4, 32), (3, 16), (2, 8), (1, 4))


def _conv(filters: int, kernel_size: int, *, use_bias: bool = False, name: str):
    """A same-padded convolution initialised as in the authors' code, N(0, 0.01).

    With nothing normalising the refinement path, He initialisation lets the
    residual sums grow by orders of magnitude over the cascade (~1000x at
    RefineNet-1's output); the small weights keep every residual branch close
    to zero at the start.
    """
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name=name,
    )


def residual_conv_unit(x, *, name: str):
    """Residual conv unit (RCU, Fig. 2(b)): ``x + conv(ReLU(conv(ReLU(x))))``.

    Two 3x3 convolutions at the width of ``x``, no batch norm. As in the authors'
    code, the first convolution has a bias and the second none.
    """
    filters = x.shape[-1]
    y = keras.layers.ReLU(name=f"{name}_relu1")(x)
    y = _conv(filters, 3, use_bias=True, name=f"{name}_conv1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(filters, 3, name=f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def multi_resolution_fusion(paths, *, name: str):
    """Multi-resolution fusion (Fig. 2(c)) of ``paths``, a list of ``(tensor, tag)``.

    One 3x3 convolution per path to the smallest width among the paths, each
    result resized (bilinear) to the path of the largest resolution, then summed.
    The first path must have the largest resolution (the frontend's path). With a
    single path the block passes it through unchanged, as the paper says.
    """
    if len(paths) == 1:
        return paths[0][0]
    filters = min(tensor.shape[-1] for tensor, _ in paths)
    reference = paths[0][0]
    fused = []
    for tensor, tag in paths:
        y = _conv(filters, 3, name=f"{name}_{tag}_conv")(tensor)
        if tensor is not reference:
            y = layers.ResizeLike(name=f"{name}_{tag}_resize")([y, reference])
        fused.append(y)
    return keras.layers.Add(name=f"{name}_add")(fused)


def chained_residual_pooling(x, *, blocks: int = 2, pool_size: int = 5, name: str):
    """Chained residual pooling (Fig. 2(d), Sec. 3.2).

    ReLU, then ``blocks`` pooling blocks in a chain: block ``i`` is a
    ``pool_size`` max-pool with stride 1 followed by a 3x3 convolution, and takes
    the output of block ``i - 1`` (the ReLU's output for the first) as its input;
    every block's output is added to the running sum, which starts at the ReLU's
    output. The blocks are chained, not parallel: the second pools the first
    one's convolution output, not the block input.
    """
    filters = x.shape[-1]
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    total, path = x, x
    for index in range(1, blocks + 1):
        path = keras.layers.MaxPooling2D(
            pool_size, strides=1, padding="same", name=f"{name}_pool{index}"
        )(path)
        path = _conv(filters, 3, name=f"{name}_conv{index}")(path)
        total = keras.layers.Add(name=f"{name}_add{index}")([total, path])
    return total


def refinenet_block(
    feature,
    previous,
    *,
    filters: int,
    adaptive_rcus: int,
    crp_blocks: int,
    output_rcus: int,
    name: str,
):
    """One RefineNet block (Fig. 2(a)) on a frontend feature and the coarser block.

    Adaptive convolutions: the frontend feature is reduced to ``filters`` channels
    by a 3x3 convolution (the authors' code; the paper states only the widths),
    then each input path (this feature and, except for RefineNet-4, the previous
    block's output at its own width) goes through ``adaptive_rcus`` RCUs.
    Then multi-resolution fusion, chained residual pooling and ``output_rcus``
    output RCUs.
    """
    x = _conv(filters, 3, name=f"{name}_dimred")(feature)
    for index in range(1, adaptive_rcus + 1):
        x = residual_conv_unit(x, name=f"{name}_stage_rcu{index}")
    paths = [(x, "stage")]
    if previous is not None:
        for index in range(1, adaptive_rcus + 1):
            previous = residual_conv_unit(previous, name=f"{name}_prev_rcu{index}")
        paths.append((previous, "prev"))
    x = multi_resolution_fusion(paths, name=f"{name}_fusion")
    x = chained_residual_pooling(x, blocks=crp_blocks, name=f"{name}_crp")
    for index in range(1, output_rcus + 1):
        x = residual_conv_unit(x, name=f"{name}_output_rcu{index}")
    return x


@register("RefineNet", default_frontend="ResNet101", default_output_stride=32)
def build_refinenet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    crp_blocks: int = 2,
    adaptive_rcus: int = 2,
    dropout: float = 0.5,
    classifier_kernel_size: int = 3,
    widths: tuple[int, int] = (512, 256),
) -> keras.Model:
    """4-cascaded RefineNet (Lin et al. 2017, Sec. 3 and Fig. 2).

    RefineNet-4 refines the frontend's ``stride32`` features alone; RefineNet-3,
    -2 and -1 each fuse the ``stride16``, ``stride8`` and ``stride4`` features
    with the output of the block before. Each block (``refinenet_block``):

      * adaptive convolutions: a 3x3 convolution reducing the frontend feature to
        the block's width (512 for RefineNet-4, 256 for the others, Sec. 3.2),
        then 2 residual conv units (RCU: ReLU, 3x3 conv, ReLU, 3x3 conv, add; no
        batch norm) on every input path. The path from the previous block keeps
        that block's width (512 in RefineNet-3);
      * multi-resolution fusion: a 3x3 convolution per path to the smallest
        width, bilinear resizing to the largest resolution, sum (skipped for
        RefineNet-4's single path);
      * chained residual pooling: ReLU, then 2 chained blocks of 5x5 stride-1
        max-pooling and a 3x3 convolution, each pooling the previous block's
        output and each added to the running sum;
      * 1 output RCU. With the next block's 2 adaptive RCUs that makes 3 RCUs
        between blocks; to match, RefineNet-1 gets 2 more before the
        classifier, 3 in all (Sec. 3.2).

    Head (the authors' code; the paper says only "dense soft-max"): dropout 0.5,
    a 3x3 convolution to the classes at stride 4, and bilinear upsampling to the
    input, in float32.

    Sources and choices where the paper leaves things open or disagrees with the
    authors' MatConvNet code (``guosheng/refinenet``):
      * Chained residual pooling follows the CVPR paper (Fig. 2(d): pool, then
        conv, two blocks); two is also the code's default ``chained_pool_num``
        (its comment offers 2 or 4). The code also ships an "improved" variant (conv before pool, 2
        or 4 blocks; its README says it may do better than the released
        models), which is not built; ``crp_blocks=4`` gives four blocks in the
        paper's pool-then-conv order.
      * The code groups the RCUs differently (no RCUs on the previous block's
        path, 3 RCUs after every pooling) but builds the same chain: 3 RCUs at the
        coarser block's width between its pooling and the next fusion. We keep
        the paper's grouping (2 per path, 1 output) and its layer names.
      * The 3x3 dimension-reducing convolutions and the head come from the code.
        Convolutions have no bias, except the first of each RCU and the
        classifier, and start from N(0, 0.01), all as in the code (see
        ``_conv``: He initialisation makes the unnormalised residual sums blow
        up over the cascade).
      * Upsampling resizes to the reference tensor, so any input size works.
      * The paper's other cascade variants (single block, 2-cascaded, two
        input scales) and multi-scale evaluation are not built. The paper
        reports no parameter count (ours: 110.0M on ResNet-101 at 21 classes).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        crp_blocks: pooling blocks in each chained residual pooling (2).
        adaptive_rcus: RCUs per input path in each block (2).
        dropout: dropout rate before the classifier (0.5, the authors' code).
        classifier_kernel_size: kernel of the class convolution (3, the code).
        widths: channels of RefineNet-4 and of the other blocks (512, 256).
    """
    features = frontend_features(frontend)
    x = None
    for index, stride in _BLOCKS:
        x = refinenet_block(
            features[f"stride{stride}"],
            x,
            filters=widths[0] if index == 4 else widths[1],
            adaptive_rcus=adaptive_rcus,
            crp_blocks=crp_blocks,
            output_rcus=3 if index == 1 else 1,
            name=f"refinenet{index}",
        )
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    x = _conv(num_classes, classifier_kernel_size, use_bias=True, name="logits_conv")(x)
    logits = layers.ResizeLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name="RefineNet")
