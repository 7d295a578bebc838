"""Shared, serialisable building blocks for the builders.

Every custom layer here is registered with Keras under the package name
``semseg_suite``, so ``keras.models.load_model`` restores saved models once
``semseg_suite`` is imported. Blocks (conv-BN-ReLU, separable conv, ASPP) are plain
functions over the functional API that name their layers ``{block}_{op}``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import Sequence

import keras
from keras import ops

PACKAGE = "semseg_suite"
log = logging.getLogger("semseg_suite")

# Batch-norm settings shared by heads and frontends. Momentum 0.9 (PyTorch's 0.1,
# as in torchvision and mmsegmentation) rather than the 0.9997 decay of the DeepLab
# code: that value assumes schedules of 30k+ steps, and with it the moving
# statistics of short runs barely leave their initial values, so inference-mode
# predictions would not match training.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN in this process.

    TensorFlow 2.21 turns oneDNN on by default on x86 CPUs with AVX-512 and off
    elsewhere; ``TF_ENABLE_ONEDNN_OPTS=0|1`` overrides it before TensorFlow starts.
    The answer is TensorFlow's own (``IsMklEnabled``, what its kernels consult);
    if that private function ever moves, only an explicit ``TF_ENABLE_ONEDNN_OPTS=1``
    counts as on, so the portable gradient is taken whenever in doubt.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").lower() in ("1", "true")


def atrous_gradient_path(device: str = "") -> str:
    """Which gradient ``AtrousConv2D`` uses for a tensor placed on ``device``.

    ``"native"``: TensorFlow's own gradient of ``tf.nn.conv2d(dilations=r)``, whose
    ``Conv2DBackpropInput/Filter`` kernels accept rates above 1 on GPUs, TPUs and
    on CPUs with oneDNN. ``"portable"``: on a CPU without oneDNN those two kernels
    refuse any rate above 1 ("Current CPU implementations do not yet support
    dilation rates larger than 1"), so the gradient is computed from ops that
    exist there (``_dilated_conv2d_portable_gradient``). ``device`` is the tensor's
    device string; an unplaced tensor (``""``) lands on a GPU when one is visible.
    """
    import tensorflow as tf

    device_type = tf.DeviceSpec.from_string(device).device_type if device else None
    if device_type is None:
        device_type = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    if device_type == "CPU" and not onednn_enabled():
        return "portable"
    return "native"


_logged_paths: set[str] = set()


def _log_path_once(path: str) -> None:
    if path in _logged_paths:
        return
    _logged_paths.add(path)
    if path == "native":
        log.info("AtrousConv2D: native dilated convolution and gradient (GPU/TPU or oneDNN CPU kernels)")
    else:
        log.info(
            "AtrousConv2D: CPU without oneDNN, which has no dilated-convolution gradient kernel: "
            "native forward, gradients through a dilated convolution and one matmul per kernel tap"
        )


def _same_padding(kernel_size: int, rate: int) -> tuple[int, int]:
    """TensorFlow's SAME padding at stride 1: ``(before, after)``, the odd pixel after."""
    total = (kernel_size - 1) * rate
    return total // 2, total - total // 2


def _dilated_conv2d_portable_gradient(inputs, kernel, rates, padding):
    """``tf.nn.conv2d(inputs, kernel, dilations=rates)`` at stride 1, with a gradient
    built only from ops that every CPU kernel set has.

    With ``y[p] = sum_i xpad[p + i r] w[i]`` (per axis; ``xpad`` is the padded input):

    * the input gradient is a dilated convolution (a forward op, which exists) of
      ``dy`` with the spatially flipped, in/out-transposed kernel, padded by
      ``(k - 1) r - before`` above and ``(k - 1) r - after`` below;
    * the kernel gradient ``dw[i] = sum_p xpad[p + i r] dy[p]`` is one matrix
      product per tap: the window of ``xpad`` that tap ``i`` sees, flattened to
      ``(pixels, C_in)``, times ``dy`` as ``(pixels, C_out)``. The space-to-batch
      formulation of ``tf.nn.convolution`` (a dense ``Conv2DBackpropFilter`` on
      ``r*r`` phases) gives the same numbers but is up to 20x slower on TensorFlow's
      Eigen kernels when the map is small against the rate (ASPP's case).

    Args:
        rates: ``(rate_h, rate_w)``.
        padding: ``"SAME"`` or ``"VALID"``.
    """
    import tensorflow as tf

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    rh, rw = rates
    if padding == "SAME":
        (top, bottom), (left, right) = _same_padding(kh, rh), _same_padding(kw, rw)
    else:
        top = bottom = left = right = 0

    @tf.custom_gradient
    def conv(x, w):
        y = tf.nn.conv2d(x, w, strides=1, padding=padding, dilations=[rh, rw])

        def grad(dy):
            span_h, span_w = (kh - 1) * rh, (kw - 1) * rw
            flipped = tf.transpose(tf.reverse(w, axis=[0, 1]), [0, 1, 3, 2])
            dx = tf.nn.conv2d(
                dy,
                flipped,
                strides=1,
                padding=[[0, 0], [span_h - top, span_h - bottom], [span_w - left, span_w - right], [0, 0]],
                dilations=[rh, rw],
            )
            x_padded = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            out_h, out_w = tf.shape(dy)[1], tf.shape(dy)[2]
            dy_flat = tf.reshape(dy, [-1, w.shape[3]])
            taps = [
                tf.matmul(
                    tf.reshape(x_padded[:, i * rh : i * rh + out_h, j * rw : j * rw + out_w, :], [-1, w.shape[2]]),
                    dy_flat,
                    transpose_a=True,
                )
                for i in range(kh)
                for j in range(kw)
            ]
            dw = tf.reshape(tf.stack(taps), tf.shape(w))
            return dx, dw

        return y, grad

    # a tensor, not the variable: read outside, the kernel is an input of the op
    return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


_EXPLICIT_PADDING = contextvars.ContextVar("semseg_suite_explicit_padding", default=False)


@contextlib.contextmanager
def explicit_same_padding():
    """Within it, dilated SAME convolutions are traced with explicit padding.

    For export to ONNX: tf2onnx turns a dilated SAME convolution of unknown input
    size into ``auto_pad=SAME_UPPER``, which ONNX Runtime refuses with dilation.
    Explicit pads (the same numbers at stride 1) convert to a plain ``pads``
    attribute. Forward only: TensorFlow's CPU kernels have no gradient for
    explicitly padded dilated convolutions, so training never uses it.
    """
    token = _EXPLICIT_PADDING.set(True)
    try:
        yield
    finally:
        _EXPLICIT_PADDING.reset(token)


def dilated_conv2d(inputs, kernel, rates, padding: str = "SAME"):
    """``tf.nn.conv2d(inputs, kernel, dilations=rates)`` at stride 1 (NHWC), with a
    gradient that exists on the device it runs on (``atrous_gradient_path``).

    The one place the suite calls TensorFlow's native dilated convolution; layers
    that dilate (``AtrousConv2D``, AdapNet's ``MultiscaleConv2D``) go through it.

    Args:
        rates: an int or ``(rate_h, rate_w)``.
        padding: ``"SAME"`` or ``"VALID"``.
    """
    import tensorflow as tf

    rates = (rates, rates) if isinstance(rates, int) else tuple(rates)
    if padding == "SAME" and max(rates) > 1 and _EXPLICIT_PADDING.get():
        (top, bottom), (left, right) = (_same_padding(int(kernel.shape[i]), rates[i]) for i in (0, 1))
        return tf.nn.conv2d(inputs, kernel, strides=1, padding=[[0, 0], [top, bottom], [left, right], [0, 0]],
                            dilations=list(rates))
    if max(rates) > 1:  # rate 1 has gradient kernels everywhere
        path = atrous_gradient_path(inputs.device)
        _log_path_once(path)
        if path == "portable":
            return _dilated_conv2d_portable_gradient(inputs, kernel, rates, padding)
    return tf.nn.conv2d(inputs, kernel, strides=1, padding=padding, dilations=list(rates))


@keras.saving.register_keras_serializable(package=PACKAGE)
class AtrousConv2D(keras.layers.Conv2D):
    """``Conv2D`` that runs dilated convolutions through the native dilated kernel.

    On the TensorFlow backend, ``keras.layers.Conv2D(dilation_rate=r)`` goes through
    ``tf.nn.convolution``, which wraps a dense convolution in space-to-batch and
    batch-to-space for any ``r > 1`` and is 10-100x slower on CPU than
    ``tf.nn.conv2d(..., dilations=r)``. This layer calls the latter; weights, config
    and results are those of ``Conv2D``, and other backends use the parent's op, as
    do float16 inputs (TensorFlow's CPU kernels have no float16 dilated gradient).

    The forward op exists on every device, its gradient kernels do not: a CPU
    without oneDNN (TensorFlow's default on CPUs without AVX-512) has none for
    rates above 1. There the layer keeps the native forward pass and computes the
    gradient from a dilated convolution and one matrix product per kernel tap
    (``atrous_gradient_path`` decides when the op is traced, and the suite's
    logger says once which path runs).
    """

    def convolution_op(self, inputs, kernel):
        if (
            keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and self.groups == 1
            and tuple(self.strides) == (1, 1)
            and max(self.dilation_rate) > 1
            # TensorFlow has no float16 gradient of the dilated kernel on CPU
            and inputs.dtype != "float16"
        ):
            return dilated_conv2d(inputs, kernel, tuple(self.dilation_rate), self.padding.upper())
        return super().convolution_op(inputs, kernel)


# Input dtypes of TensorFlow's FusedBatchNormV3 (its scale, offset and statistics are float32).
_FUSED_BATCH_NORM_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that trains through TensorFlow's fused kernel.

    Keras 3's TensorFlow batch norm is unfused: ``tf.nn.moments`` then
    ``tf.nn.batch_normalization``, several passes over the input forwards and more
    backwards. In training, on 4-D channels-last inputs, this layer runs one
    ``FusedBatchNormV3`` op instead (and ``FusedBatchNormGradV3`` backwards: Eigen's
    or oneDNN's kernel on CPU, cuDNN's on GPU). Weights, their names, the config
    and saved files are the parent's, so files saved with either class load into
    the other. That is why the class keeps the parent's name: Keras files key each
    layer's weights by its class name (``layers/batch_normalization_3``), so a
    differently named subclass could not ``load_weights`` from today's ``.keras``
    and ``.weights.h5`` files, nor they from its. Saved configs tell the two apart
    by the registered name, ``semseg_suite>BatchNormalization``.

    The results are the parent's up to float rounding. In training the op
    normalises with the biased batch variance but returns the unbiased one
    (``n / (n - 1)`` times it, ``n`` values per channel); it is scaled back before
    the moving variance takes Keras' update (``moving * momentum + batch * (1 -
    momentum)``). Half-precision inputs enter the op as they are: it computes the
    statistics in float32, as Keras does after casting them up, and rounds once
    on output. The exact ``epsilon`` is passed (``tf.compat.v1.nn.fused_batch_norm``
    would raise it to 1.001e-5).

    Everything the op cannot express runs the parent's code: inference (the
    moving statistics, no batch statistics to fuse), backends other than
    TensorFlow, other ranks or axes, masks, ``synchronized`` (statistics over all
    replicas), ``renorm`` and float64 inputs.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        return bool(
            keras.backend.backend() == "tensorflow"
            and training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_BATCH_NORM_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = ops.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        offset = ops.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        no_statistics = tf.constant([], tf.float32)  # training: the op computes its own
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=scale,
            offset=offset,
            mean=no_statistics,
            variance=no_statistics,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.reduce_prod(tf.shape(inputs, out_type=tf.int64)[:-1]), tf.float32)
        # Keras' biased variance; for n = 1 the op divides by 1 and returns 0, as Keras has
        variance = unbiased_variance * ((count - 1.0) / count)
        self.moving_mean.assign(
            ops.cast(self.moving_mean, "float32") * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * self.momentum + variance * (1.0 - self.momentum)
        )
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeLike(keras.layers.Layer):
    """Resizes ``inputs[0]`` to the height and width of ``inputs[1]``.

    Fusing by a reference tensor's shape, not by a fixed factor, keeps odd input
    sizes and valid-padding frontends working. On TensorFlow it calls
    ``tf.image.resize`` (the op behind ``keras.ops.image.resize``) directly, because
    the Keras wrapper checks sizes in Python and fails when they are only known
    at run time (a ``tf.function`` traced for any image size).

    Args:
        interpolation: any method ``keras.ops.image.resize`` accepts.
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        size = ops.shape(reference)[1:3]
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            resized = tf.image.resize(x, tf.stack(size), method=self.interpolation)
            return tf.cast(resized, x.dtype)
        return ops.image.resize(x, size, interpolation=self.interpolation)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Non-overlapping ``k x k`` max-pooling that also returns where each max was.

    Returns ``(pooled, indices)``: ``indices`` (int32, same shape as ``pooled``) is
    the row-major position, in ``[0, k*k)``, of the maximum inside its window (the
    first one on ties), per sample and channel: what SegNet and ENet keep to
    unpool later. Inputs whose size is not a multiple of ``k`` are padded at the
    bottom/right, so ``pooled`` is ``ceil(H/k) x ceil(W/k)`` (same padding):
    ``indices`` come from the input shifted by its minimum (so >= 0) and
    zero-padded, where a padded value never exceeds a real one and every window's
    first (top-left) element is real, so ``indices`` always point at a real
    position, and ``pooled`` is the value there. (No padding constant such as
    -3e38: int8 calibration would take it into the tensor's range, and since
    TFLite's pad and max keep their input's scale, every value would quantise to
    zero.) Window-relative indices, unlike ``tf.nn.max_pool_with_argmax``'s flat
    ones, need no scatter to unpool and work on every Keras backend.

    Args:
        pool_size: window size and stride ``k`` (2 in SegNet and ENet).
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)

    def call(self, x):
        k = self.pool_size
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        channels = x.shape[-1]
        pad_h, pad_w = (k - height % k) % k, (k - width % k) % k  # not (-h) % k: ONNX Mod of negatives differs
        padding = [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]
        rows, cols = (height + pad_h) // k, (width + pad_w) // k

        def windows(t):  # (batch, rows, cols, channels, k * k), row-major within each window
            t = ops.reshape(t, (batch, rows, k, cols, k, channels))
            t = ops.transpose(t, (0, 1, 3, 5, 2, 4))
            return ops.reshape(t, (batch, rows, cols, channels, k * k))

        # Where the maximum is: on the input shifted to >= 0 (in float32, so that
        # bfloat16 rounding adds no ties) and zero-padded (a constant pad, which every
        # converter takes), where a padded value never beats a real one.
        lowest = ops.cast(ops.min(x), "float32")
        ranks = windows(ops.pad(ops.cast(x, "float32") - lowest, padding))
        if keras.backend.backend() == "tensorflow":
            # tf.argmax, not ops.argmax: Keras' TensorFlow argmax of floats adds a
            # sign-bit test of zeros (Bitcast, BitwiseAnd) that TFLite and ONNX Runtime
            # cannot run; tf.argmax converts to their ArgMax, in float and in int8.
            import tensorflow as tf

            indices = tf.math.argmax(ranks, axis=-1, output_type=tf.int32)
        else:
            indices = ops.cast(ops.argmax(ranks, axis=-1), "int32")
        # The maximum itself, selected from the input's own values (exact; its gradient
        # goes to that position only).
        found = ops.equal(ops.expand_dims(indices, -1), ops.arange(k * k, dtype="int32"))
        pooled = ops.sum(ops.where(found, windows(ops.pad(x, padding)), ops.zeros((), x.dtype)), axis=-1)
        return pooled, indices

    def compute_output_shape(self, input_shape):
        def pooled(size):
            return None if size is None else -(-size // self.pool_size)

        shape = (input_shape[0], pooled(input_shape[1]), pooled(input_shape[2]), input_shape[3])
        return shape, shape

    def compute_output_spec(self, x):
        shape, _ = self.compute_output_shape(x.shape)
        return (
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="int32"),
        )

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxUnpooling2D(keras.layers.Layer):
    """Puts each value back where ``MaxPoolingWithArgmax2D`` found its maximum.

    Called on ``[x, indices, reference]``: ``x`` at the pooled resolution,
    ``indices`` from the matching pooling layer, and ``reference``, the tensor that
    was pooled (only its height and width are used, so odd sizes round-trip).
    Every other position of the output is zero (Badrinarayanan et al. 2017,
    Fig. 3).

    Args:
        pool_size: the pooling layer's ``k``.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)

    def call(self, inputs):
        x, indices, reference = inputs
        k = self.pool_size
        batch, rows, cols = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        channels = x.shape[-1]
        # A select, not a one-hot mask times x: TFLite's int8 ONE_HOT keeps its on/off
        # values' own quantisation, so under the output's scale the zeros of the mask
        # read as a small positive number and every position got a share of x.
        found = ops.equal(ops.expand_dims(indices, -1), ops.arange(k * k, dtype="int32"))
        windows = ops.where(found, ops.expand_dims(x, -1), ops.zeros((), x.dtype))
        windows = ops.reshape(windows, (batch, rows, cols, channels, k, k))
        windows = ops.transpose(windows, (0, 1, 4, 2, 5, 3))
        full = ops.reshape(windows, (batch, rows * k, cols * k, channels))
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        return full[:, :height, :width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, _, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CropLike(keras.layers.Layer):
    """Crops ``inputs[0]`` to the height and width of ``inputs[1]`` (top left).

    A same-padded transposed convolution by ``f`` gives ``f * ceil(H / (f * s))``
    rows from a map at stride ``f * s``: at least the ``ceil(H / s)`` rows of the
    stride-``s`` map it is fused with, and row-aligned with it from the top, so
    the extra rows are at the bottom and right. Cropping them keeps every
    pixel where it belongs; resizing would stretch the map by a fraction of a
    pixel. ``inputs[0]`` must be at least as large as ``inputs[1]``.
    """

    def call(self, inputs):
        x, reference = inputs
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        return x[:, :height, :width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed ``bins x bins`` grid, for any input size.

    Bin ``i`` of an axis of length ``n`` averages positions
    ``[floor(i * n / bins), ceil((i + 1) * n / bins))``, PyTorch's
    ``AdaptiveAvgPool2d`` rule: bins tile the map exactly when ``bins`` divides
    ``n``, overlap by at most one position otherwise, and are never empty (also
    when ``n < bins``). Computed from a summed-area table in float32, so every
    bin costs four lookups.

    Args:
        bins: output height and width.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        self.bins = int(bins)

    def _edges(self, length):
        index = ops.arange(self.bins, dtype="int32")
        starts = (index * length) // self.bins
        ends = ((index + 1) * length + self.bins - 1) // self.bins
        return starts, ends

    def call(self, x):
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        table = ops.cast(x, "float32")
        table = ops.pad(table, [[0, 0], [1, 0], [1, 0], [0, 0]])
        table = ops.cumsum(ops.cumsum(table, axis=1), axis=2)
        row_start, row_end = self._edges(height)
        col_start, col_end = self._edges(width)

        def corner(rows, cols):
            return ops.take(ops.take(table, rows, axis=1), cols, axis=2)

        sums = (
            corner(row_end, col_end)
            - corner(row_start, col_end)
            - corner(row_end, col_start)
            + corner(row_start, col_start)
        )
        areas = ops.cast(row_end - row_start, "float32")[:, None] * ops.cast(col_end - col_start, "float32")[None, :]
        return ops.cast(sums / areas[None, :, :, None], x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaptiveMaxPooling2D(AdaptiveAveragePooling2D):
    """Max pooling to a fixed ``bins x bins`` grid, for any input size.

    The bins are `AdaptiveAveragePooling2D`'s (PyTorch's ``AdaptiveMaxPool2d``
    rule). A rectangle's maximum is the maximum of its rows' maxima, so each axis is
    reduced once per bin: ``2 * bins`` reductions. (``keras.layers.AdaptiveMaxPooling2D``
    is not used: on TensorFlow 2.21 it crashes the process with a floating point
    exception for some sizes, e.g. a 6x8 map into 4x4 bins.)
    """

    def call(self, x):
        row_start, row_end = self._edges(ops.shape(x)[1])
        col_start, col_end = self._edges(ops.shape(x)[2])
        rows = ops.stack([ops.max(x[:, row_start[i]:row_end[i]], axis=1) for i in range(self.bins)], axis=1)
        return ops.stack([ops.max(rows[:, :, col_start[j]:col_end[j]], axis=2) for j in range(self.bins)], axis=2)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Encoding(keras.layers.Layer):
    """EncNet's encoding layer (Zhang et al. 2018, Sec. 3.1): K codewords with learned smoothing.

    For features ``x_i`` (the N = H x W positions of ``(B, H, W, D)``), codewords
    ``c_k`` and smoothing factors ``s_k``: residuals ``r_ik = x_i - c_k``, soft
    assignments ``a_ik = softmax_k(-s_k ||r_ik||^2)`` and ``e_k = sum_i a_ik r_ik``.
    Returns ``(B, K, D)``. Computed as ``A^T X - (sum_i a_ik) c_k`` with the squared
    distances expanded (``||x||^2 - 2 x.c + ||c||^2``), so no ``(N, K, D)`` tensor is
    formed. Initialised as the authors' code does: codewords uniform in
    ``+-1/sqrt(K D)``, smoothing factors uniform in (0, 1) (their code stores -s).

    Args:
        codewords: K (32 in the paper).
    """

    def __init__(self, codewords: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.codewords = int(codewords)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        limit = 1.0 / (self.codewords * channels) ** 0.5
        self.centers = self.add_weight(
            name="codewords", shape=(self.codewords, channels),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )
        self.smoothing = self.add_weight(
            name="smoothing", shape=(self.codewords,), initializer=keras.initializers.RandomUniform(0.0, 1.0)
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        batch, channels = ops.shape(x)[0], ops.shape(x)[-1]
        flat = ops.reshape(x, (batch, -1, channels))  # (B, N, D)
        centers = ops.cast(self.centers, "float32")
        distances = (
            ops.sum(ops.square(flat), axis=-1, keepdims=True)
            - 2.0 * ops.einsum("bnd,kd->bnk", flat, centers)
            + ops.sum(ops.square(centers), axis=-1)[None, None, :]
        )
        assignment = ops.softmax(-ops.cast(self.smoothing, "float32") * distances, axis=-1)  # (B, N, K)
        weighted = ops.einsum("bnk,bnd->bkd", assignment, flat)
        return weighted - ops.sum(assignment, axis=1)[:, :, None] * centers[None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.codewords, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "codewords": self.codewords}


def conv2d(filters: int, kernel_size: int, *, rate: int = 1, strides: int = 1, name: str, use_bias=False):
    """A same-padded convolution, dilated through ``AtrousConv2D`` when ``rate > 1``."""
    cls = AtrousConv2D if rate > 1 else keras.layers.Conv2D
    return cls(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=rate,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )


def batch_norm(name: str) -> BatchNormalization:
    """The suite's batch norm: ``BN_MOMENTUM``, ``BN_EPSILON``, fused in training."""
    return BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv_bn_relu(x, filters: int, kernel_size: int = 1, *, rate: int = 1, strides: int = 1, name: str):
    """Convolution, batch norm and ReLU, named ``{name}_conv/_bn/_relu``."""
    x = conv2d(filters, kernel_size, rate=rate, strides=strides, name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def separable_conv_bn_relu(x, filters: int, kernel_size: int = 3, *, rate: int = 1, name: str):
    """Depthwise conv, BN, ReLU, then pointwise conv, BN, ReLU.

    This is DeepLab's ``split_separable_conv2d`` (BN and ReLU after both the
    depthwise and the pointwise step), not ``keras.layers.SeparableConv2D``, which
    has no normalisation between the two.
    """
    x = keras.layers.DepthwiseConv2D(
        kernel_size,
        padding="same",
        dilation_rate=rate,
        use_bias=False,
        name=f"{name}_depthwise",
    )(x)
    x = batch_norm(f"{name}_depthwise_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_depthwise_relu")(x)
    return conv_bn_relu(x, filters, 1, name=f"{name}_pointwise")


def image_pooling(x, filters: int, *, name: str):
    """Global average pool, 1x1 conv-BN-ReLU, then bilinear upsampling back to ``x``."""
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    y = conv_bn_relu(y, filters, 1, name=name)
    return ResizeLike(name=f"{name}_resize")([y, x])


def aspp(
    x,
    *,
    filters: int = 256,
    rates: Sequence[int] = (6, 12, 18),
    separable: bool = False,
    dropout: float = 0.1,
    name: str = "aspp",
):
    """Atrous spatial pyramid pooling (Chen et al. 2017, Sec. 3.3).

    A 1x1 branch, one 3x3 branch per atrous rate, and an image-pooling branch, each
    with ``filters`` channels, BN and ReLU; concatenated, projected by a 1x1
    conv-BN-ReLU and followed by dropout.

    Args:
        filters: channels of every branch and of the projection (256 in the paper).
        rates: atrous rates of the 3x3 branches (6, 12, 18 at output stride 16).
        separable: depthwise-separable 3x3 branches, as DeepLabV3+ uses.
        dropout: dropout rate after the projection (keep probability 0.9 in the
            official code).
    """
    branches = [conv_bn_relu(x, filters, 1, name=f"{name}_1x1")]
    for i, rate in enumerate(rates, start=1):
        branch_name = f"{name}_3x3_{i}"
        if separable:
            branches.append(separable_conv_bn_relu(x, filters, 3, rate=rate, name=branch_name))
        else:
            branches.append(conv_bn_relu(x, filters, 3, rate=rate, name=branch_name))
    branches.append(image_pooling(x, filters, name=f"{name}_image_pool"))
    y = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    y = conv_bn_relu(y, filters, 1, name=f"{name}_projection")
    return keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)


def pyramid_pooling(x, *, bins: Sequence[int] = (1, 2, 3, 6), filters: int | None = None, name: str = "ppm"):
    """PSPNet's pyramid pooling module (Zhao et al. 2017, Sec. 3.2, Fig. 3).

    For each bin count ``b``: adaptive average pooling to ``b x b``, a 1x1
    conv-BN-ReLU to ``filters`` channels (default a quarter of the input's, 1/N
    for the paper's N = 4 levels), and bilinear upsampling back to ``x``; the
    levels are concatenated with ``x`` itself.
    """
    filters = filters or x.shape[-1] // len(bins)
    levels = [x]
    for b in bins:
        y = AdaptiveAveragePooling2D(b, name=f"{name}_pool{b}")(x)
        y = conv_bn_relu(y, filters, 1, name=f"{name}_bin{b}")
        levels.append(ResizeLike(name=f"{name}_bin{b}_resize")([y, x]))
    return keras.layers.Concatenate(name=f"{name}_concat")(levels)


def classifier(x, num_classes: int, *, reference, name: str = "logits"):
    """1x1 class scores resized to ``reference`` (the input image), in float32.

    The resize layer's float32 dtype policy keeps logits in float32 under a mixed
    precision policy, so losses and softmax never run in half precision.
    """
    x = keras.layers.Conv2D(num_classes, 1, name=f"{name}_conv")(x)
    return ResizeLike(name=name, dtype="float32")([x, reference])
