"""GCN: Peng, Zhang, Yu, Luo, Sun, "Large Kernel Matters -- Improve Semantic
Segmentation by Global Convolutional Network", CVPR 2017."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from builders.fcn import BilinearUpsampling
from semseg_suite import layers

# The frontend endpoints the paper takes (ResNet's res-2 .. res-5), coarse to fine.
_STAGES = (("res5", 32), ("res4", 16), ("res3", 8), ("res2", 4))


def global_convolution(x, filters: int, kernel_size: int, *, name: str):
    """Global convolutional network module (Fig. 2(B)).

    Two branches summed: a ``k x 1`` then a ``1 x k`` convolution, and a ``1 x k``
    then a ``k x 1`` convolution, all ``filters`` wide; no batch norm and no
    nonlinearity anywhere inside. It connects every output pixel to a ``k x k``
    window at ``2 k`` weights per channel pair instead of ``k * k``.
    """

    def conv(y, kernel, suffix):
        return keras.layers.Conv2D(
            filters, kernel, padding="same", kernel_initializer="he_normal", name=f"{name}_{suffix}"
        )(y)

    k = kernel_size
    left = conv(conv(x, (k, 1), "left_kx1"), (1, k), "left_1xk")
    right = conv(conv(x, (1, k), "right_1xk"), (k, 1), "right_kx1")
    return keras.layers.Add(name=f"{name}_add")([left, right])


def boundary_refinement(x, *, name: str):
    """Boundary refinement block (Fig. 2(C)): ``x + conv3x3(ReLU(conv3x3(x)))``."""
    filters = x.shape[-1]
    y = keras.layers.Conv2D(
        filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv1"
    )(x)
    y = keras.layers.ReLU(name=f"{name}_relu")(y)
    y = keras.layers.Conv2D(
        filters, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv2"
    )(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def deconvolution(x, *, name: str):
    """2x transposed convolution of the score maps (kernel 4, FCN's 2x step),
    bias-free and initialised to bilinear upsampling, trainable."""
    return keras.layers.Conv2DTranspose(
        x.shape[-1],
        4,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        name=name,
    )(x)


@register("GCN", default_frontend="ResNet152", default_output_stride=32)
def build_gcn(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    kernel_size: int = 15,
) -> keras.Model:
    """Global Convolutional Network with boundary refinement (Peng et al. 2017).

    Pipeline of Fig. 2(A) and Sec. 3.3, on the frontend's ``stride4`` ..
    ``stride32`` endpoints (ResNet's res-2 .. res-5; ResNet-152 in the paper):

      1. every stage: a global convolution module (``global_convolution``: ``k x
         1`` then ``1 x k`` plus ``1 x k`` then ``k x 1``, no BN, no ReLU) to
         ``num_classes`` score maps, then a boundary refinement block (BR: ``x +
         conv3x3(ReLU(conv3x3(x)))``);
      2. top-down fusion, coarse to fine: res-5's score map is upsampled 2x by a
         deconvolution and added to res-4's (GCN, BR) output, and the sum goes
         through a BR; that result is upsampled and added to res-3's, BR; then
         the same with res-2. Each fusion is thus deconv -> add -> BR;
      3. two more steps of deconv (2x) -> BR bring the stride-4 map to the input
         resolution; its output are the logits, with no 1x1 classifier after it
         (the score maps already have one channel per class).

    Every convolution of the decoder is ``num_classes`` wide: the GCN modules
    produce per-class score maps. ``k = 15`` is the best setting of the paper's
    ablation over k (3 to 15; 15 is about the size of the 16x16 res-5 map of its
    512x512 crops). Same padding keeps it usable at any size; at 64-pixel inputs the
    2x2 res-5 map just sees zeros beyond its border.

    Differences from the paper and choices where it is silent:
      * The deconvolutions are 4x4 stride-2 transposed convs (FCN's 2x step,
        which the paper says its fusion follows) without bias, initialised to
        bilinear upsampling and learned; the paper gives no kernel size.
      * Convolutions have biases (no BN follows any of them); the paper does not
        say. He-normal initialisation.
      * Each upsampled map is resized (bilinear) to the map it is added to, and
        the output to the input, so odd input sizes work.
      * With ``output_stride < 32`` (not in the paper) a fusion of two maps at
        the same resolution has no deconvolution.
      * The paper's ResNet-GCN backbone (ResNet-50 with GCN-style bottleneck
        blocks) is not built; any registered frontend can be used.
      * The paper reports parameter counts only for the GCN module against
        ``k x k`` convolutions, none for the whole network.
      * A popular TF port used ``k = 3``, 21 hard-coded channels followed by an
        extra 1x1 classifier, and 3x3 deconvolutions; here ``k = 15``, the maps
        are ``num_classes`` wide and the last BR gives the logits.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes (the width of every score map).
        output_stride: the frontend's output stride (32 in the paper).
        kernel_size: ``k`` of the global convolution modules (15).
    """
    features = frontend_features(frontend)

    def resolution(stride: int) -> int:
        return min(stride, output_stride)

    scores = {}
    for stage, stride in _STAGES:
        y = global_convolution(
            features[f"stride{stride}"], num_classes, kernel_size, name=f"gcn_{stage}"
        )
        scores[stage] = boundary_refinement(y, name=f"br_{stage}")

    x = scores["res5"]
    previous_stride = 32
    for stage, stride in _STAGES[1:]:
        skip = scores[stage]
        if resolution(previous_stride) > resolution(stride):
            x = deconvolution(x, name=f"fuse_{stage}_deconv")
            x = layers.ResizeLike(name=f"fuse_{stage}_resize")([x, skip])
        x = keras.layers.Add(name=f"fuse_{stage}_add")([x, skip])
        x = boundary_refinement(x, name=f"fuse_{stage}_br")
        previous_stride = stride
    for index in (1, 2):
        x = deconvolution(x, name=f"up{index}_deconv")
        x = boundary_refinement(x, name=f"up{index}_br")
    logits = layers.ResizeLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name="GCN")
