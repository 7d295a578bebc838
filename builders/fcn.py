"""FCN: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015.

Also defines ``BilinearUpsampling``, a serialisable initializer that makes a
``Conv2DTranspose`` upsample each channel bilinearly. FCN's "crop" layer is
``semseg_suite.layers.CropLike``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from builders.base import PaperParams, frontend_features, register
from semseg_suite.layers import PACKAGE, AtrousConv2D, CropLike

# Width of VGG16's fully connected layers fc6 and fc7 (Simonyan & Zisserman 2015).
VGG_FC_FILTERS = 4096
# The skip taps of FCN-16s and FCN-8s, by nominal stride, with the paper's names.
_POOL_NAMES = {16: "pool4", 8: "pool3"}


def bilinear_kernel(kernel_size: int) -> np.ndarray:
    """The 2-D bilinear interpolation kernel of a ``kernel_size`` transposed conv.

    For ``kernel_size = 2 * f`` and stride ``f`` this upsamples by ``f`` with
    half-pixel centres, as ``tf.image.resize(..., "bilinear")`` does (away from
    the border). It is the kernel of the FCN reference code's ``upsample_filt``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(kernel_size) - center) / factor
    return np.outer(taps, taps)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a ``Conv2DTranspose`` kernel to per-channel bilinear upsampling.

    The kernel, of shape ``(k, k, out_channels, in_channels)``, maps input
    channel ``c`` to output channel ``c`` with ``bilinear_kernel(k)`` and every
    other pair to zero (FCN's ``surgery.interp``). With ``k = 2 * stride`` and
    same padding the layer is bilinear interpolation by ``stride``.
    """

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, out_channels, in_channels = shape
        if kernel_h != kernel_w:
            raise ValueError(f"BilinearUpsampling needs a square kernel, got {shape}")
        kernel = np.zeros(shape, "float32")
        taps = bilinear_kernel(kernel_h)
        for channel in range(min(out_channels, in_channels)):
            kernel[:, :, channel, channel] = taps
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


def upsampling(factor: int, filters: int, *, trainable: bool = True, name: str):
    """A bias-free ``Conv2DTranspose`` by ``factor`` (kernel ``2 * factor``), bilinear."""
    return keras.layers.Conv2DTranspose(
        filters,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=trainable,
        name=name,
    )


def _fc(filters: int, kernel_size: int, *, rate: int = 1, name: str):
    # He uniform: drawing fc6's 100M+ weights from He's truncated normal takes
    # about 10 s on a CPU, the uniform about 1 s.
    cls = AtrousConv2D if rate > 1 else keras.layers.Conv2D
    return cls(
        filters,
        kernel_size,
        padding="same",
        dilation_rate=rate,
        kernel_initializer="he_uniform",
        name=name,
    )


def _score(x, num_classes: int, name: str):
    # Zero-initialised class scores (Sec. 4.2-4.3): the fused net starts out
    # predicting what the coarser net does.
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(x)


def build_fcn(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    skips: tuple[int, ...] = (16, 8),
    fc_filters: int | None = None,
    fc_kernel_size: int = 7,
    dropout: float = 0.5,
    name: str = "FCN",
) -> keras.Model:
    """FCN with skips from the given frontend strides (``()``: 32s, ``(16,)``: 16s,
    ``(16, 8)``: 8s); ``build_fcn32s``/``16s``/``8s`` are the registered models.

    Architecture (Long et al. 2015, Sec. 3-4, and the authors' ``voc-fcn*``
    nets): on the frontend's ``stride32`` features (VGG16's pool5), ``fc6`` = 7x7
    conv to 4096 + ReLU + dropout 0.5 and ``fc7`` = 1x1 conv to 4096 + ReLU +
    dropout 0.5 (VGG16's fully connected layers as convolutions), then
    ``score_fr``, a 1x1 conv to the classes. FCN-16s adds ``score_pool4`` (1x1
    on ``stride16``) to ``score_fr`` upsampled 2x (``upscore2``, 4x4 stride 2);
    FCN-8s adds ``score_pool3`` (1x1 on ``stride8``) to that sum upsampled 2x
    (``upscore_pool4``). The result is upsampled to the input by a transposed
    conv of kernel ``2f`` and stride ``f`` (``upscore32``/``16``/``8``: 64/32,
    32/16, 16/8). Class-score layers are zero-initialised and all upsampling
    layers are bias-free transposed convs initialised to bilinear interpolation
    (``BilinearUpsampling``). As the paper says (Sec. 4.3), the final upsampling
    stays fixed (``trainable=False``) and the 2x steps are learned; the authors'
    released nets freeze the 2x steps too.

    Differences from the paper:
      * The reference pads ``conv1_1`` by 100 pixels, runs ``fc6`` unpadded and
        crops every fusion at computed offsets. Here every layer is same-padded
        and each upsampled map is cropped at the bottom/right to the map it is
        fused with (``CropLike``), and the output to the input size, so any
        input size works. Transposed convs then see zero padding at the image
        border, where logits come out scaled down (by up to half at the final
        32x step; the argmax is unchanged).
      * ``fc6``/``fc7`` start from random (He uniform) initialisation: the paper
        converts VGG16's ImageNet-trained fully connected layers, which the
        headless ``keras.applications`` weights do not contain.
      * With ``output_stride < 32`` (not in the paper) ``fc6`` is dilated by
        ``32 / output_stride`` to keep its field of view, 2x steps between
        endpoints of equal resolution are left out, and the final upsampling
        factor is the stride of the last fused map.

    ``fc6``/``fc7`` are VGG16's fully connected layers, convolutionalised. The
    paper's recipe for a classification net is to keep its fully connected layers
    as convolutions and drop only its classifier; for GoogLeNet, which has none,
    it scores the last features directly. The other frontends have none either
    (a global pool and one classifier), so by default they get no ``fc6``/``fc7``
    and ``score_fr`` sits on their ``stride32`` features; ``fc_filters=4096``
    adds them anyway (``fc6`` then has ``49 * C * 4096`` weights for ``C`` input
    channels: 411M on ResNet-50's 2048).

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        skips: strides of the fused skip features, coarse to fine.
        fc_filters: width of ``fc6``/``fc7``; ``None``: 4096 on VGG16, none on
            other frontends; 0 leaves them out.
        fc_kernel_size: kernel of ``fc6`` (7: VGG16's 7x7 pool5 grid).
        dropout: dropout rate after ``fc6`` and ``fc7`` (0.5).
        name: model name.
    """
    features = frontend_features(frontend)

    def resolution(stride: int) -> int:
        return min(stride, output_stride)

    x = features["stride32"]
    if fc_filters is None:
        fc_filters = VGG_FC_FILTERS if frontend.name == "VGG16" else 0
    if fc_filters:
        x = _fc(fc_filters, fc_kernel_size, rate=32 // output_stride, name="fc6")(x)
        x = keras.layers.ReLU(name="fc6_relu")(x)
        x = keras.layers.Dropout(dropout, name="fc6_dropout")(x)
        x = _fc(fc_filters, 1, name="fc7")(x)
        x = keras.layers.ReLU(name="fc7_relu")(x)
        x = keras.layers.Dropout(dropout, name="fc7_dropout")(x)
    x = _score(x, num_classes, "score_fr")
    stride = resolution(32)
    upscore_names = iter(("upscore2", "upscore_pool4"))
    for skip in skips:
        pool = _POOL_NAMES[skip]
        score = _score(features[f"stride{skip}"], num_classes, f"score_{pool}")
        upscore = next(upscore_names)
        factor = stride // resolution(skip)
        if factor > 1:
            x = upsampling(factor, num_classes, name=upscore)(x)
            x = CropLike(name=f"{upscore}_crop")([x, score])
        x = keras.layers.Add(name=f"fuse_{pool}")([x, score])
        stride = resolution(skip)
    x = upsampling(stride, num_classes, trainable=False, name=f"upscore{stride}")(x)
    logits = CropLike(name="logits", dtype="float32")([x, frontend.input])
    return keras.Model(frontend.input, logits, name=name)


# Table 1 counts FCN-VGG16 (the 32s net) on PASCAL VOC (21 classes) without the
# upsampling layer; ours also counts its 64x64x21x21 kernel (1.8M, +1.6%).
_PAPER_FCN_VGG16 = PaperParams(
    params=134e6,
    source="Long et al. 2015, Table 1",
    num_classes=21,
    frontend="VGG16",
)


@register(
    "FCN-32s", default_frontend="VGG16", default_output_stride=32, paper_params=_PAPER_FCN_VGG16
)
def build_fcn32s(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    fc_filters: int | None = None,
    fc_kernel_size: int = 7,
    dropout: float = 0.5,
) -> keras.Model:
    """FCN-32s: the class scores of ``fc7`` upsampled 32x; see ``build_fcn``.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        fc_filters: width of ``fc6``/``fc7``; ``None``: 4096 on VGG16, none on
            other frontends; 0 leaves them out.
        fc_kernel_size: kernel of ``fc6`` (7).
        dropout: dropout rate after ``fc6`` and ``fc7`` (0.5).
    """
    return build_fcn(
        frontend,
        num_classes,
        output_stride=output_stride,
        skips=(),
        fc_filters=fc_filters,
        fc_kernel_size=fc_kernel_size,
        dropout=dropout,
        name="FCN-32s",
    )


@register("FCN-16s", default_frontend="VGG16", default_output_stride=32)
def build_fcn16s(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    fc_filters: int | None = None,
    fc_kernel_size: int = 7,
    dropout: float = 0.5,
) -> keras.Model:
    """FCN-16s: FCN-32s plus class scores of ``stride16`` (pool4); see ``build_fcn``.

    The paper reports no count for it apart from FCN-VGG16's (134M, Table 1): the
    skips add a 1x1 score layer and a 2x step each (tens of thousands of
    parameters at 21 classes) and shrink the final upsampling kernel.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        fc_filters: width of ``fc6``/``fc7``; ``None``: 4096 on VGG16, none on
            other frontends; 0 leaves them out.
        fc_kernel_size: kernel of ``fc6`` (7).
        dropout: dropout rate after ``fc6`` and ``fc7`` (0.5).
    """
    return build_fcn(
        frontend,
        num_classes,
        output_stride=output_stride,
        skips=(16,),
        fc_filters=fc_filters,
        fc_kernel_size=fc_kernel_size,
        dropout=dropout,
        name="FCN-16s",
    )


@register("FCN-8s", default_frontend="VGG16", default_output_stride=32)
def build_fcn8s(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    fc_filters: int | None = None,
    fc_kernel_size: int = 7,
    dropout: float = 0.5,
) -> keras.Model:
    """FCN-8s: FCN-16s plus class scores of ``stride8`` (pool3); see ``build_fcn``.

    The paper reports no count for it apart from FCN-VGG16's (134M, Table 1): the
    skips add a 1x1 score layer and a 2x step each (tens of thousands of
    parameters at 21 classes) and shrink the final upsampling kernel.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        fc_filters: width of ``fc6``/``fc7``; ``None``: 4096 on VGG16, none on
            other frontends; 0 leaves them out.
        fc_kernel_size: kernel of ``fc6`` (7).
        dropout: dropout rate after ``fc6`` and ``fc7`` (0.5).
    """
    return build_fcn(
        frontend,
        num_classes,
        output_stride=output_stride,
        skips=(16, 8),
        fc_filters=fc_filters,
        fc_kernel_size=fc_kernel_size,
        dropout=dropout,
        name="FCN-8s",
    )
