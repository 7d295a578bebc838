"""ExFuse: Zhang, Zhang, Peng, Xue, Sun, "ExFuse: Enhancing Feature Fusion for
Semantic Segmentation", ECCV 2018."""

from __future__ import annotations

import keras
from keras import ops

from builders import gcn
from builders.base import frontend_features, register
from builders.fcn import BilinearUpsampling
from semseg_suite import layers

# The frontend endpoints the paper takes (res-2 .. res-5), coarse to fine, as in GCN.
STAGES = (("res5", 32), ("res4", 16), ("res3", 8), ("res2", 4))
ECRE_FACTOR = 2  # sub-pixel upsampling of the res-5 score maps to res-4's resolution
DAP_KERNEL = 3  # k of densely adjacent prediction (the paper's setting)
# Semantic supervision heads on the early stages res-2 .. res-4; weight: see build_exfuse.
SS_WEIGHT = 1.0
_SS = {f"ss_{stage}": SS_WEIGHT for stage, _ in STAGES[1:]}


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class DepthToSpace(keras.layers.Layer):
    """Sub-pixel upsampling (``tf.nn.depth_to_space``, a pixel shuffle).

    ``(B, H, W, r * r * C) -> (B, r H, r W, C)``: output pixel ``(r h + i, r w + j)``,
    channel ``c`` is input pixel ``(h, w)``, channel ``(i r + j) C + c``. ExFuse's
    explicit channel resolution embedding (ECRE) upsamples with it, so the
    channels of the coarse map carry the finer map's spatial detail explicitly.

    Args:
        block_size: ``r``.
    """

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def build(self, input_shape):
        if input_shape[-1] % self.block_size**2:
            raise ValueError(f"{self.name}: {input_shape[-1]} channels are not a multiple of {self.block_size}^2")

    def call(self, x):
        return ops.depth_to_space(x, self.block_size)

    def compute_output_shape(self, input_shape):
        r = self.block_size
        batch, height, width, channels = input_shape
        return (batch, None if height is None else height * r, None if width is None else width * r, channels // r**2)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class DenselyAdjacentPrediction(keras.layers.Layer):
    """Densely adjacent prediction (DAP): each class score is the mean of k x k neighbours' votes.

    The input has ``k * k * C`` channels, ``k * k`` groups of ``C``. Group ``l k +
    m`` of the pixel at offset ``(l - k // 2, m - k // 2)`` from ``(i, j)`` is that
    neighbour's prediction for ``(i, j)``, and the output averages them::

        out[i, j, c] = 1 / k^2 * sum_{l, m < k} x[i + l - k // 2, j + m - k // 2, (l k + m) C + c]

    with zeros beyond the border (the paper's formula divides by ``k^2``
    everywhere). Computed as ``k^2`` shifted slices of the zero-padded input.

    Args:
        kernel_size: ``k`` (odd).
    """

    def __init__(self, kernel_size: int = DAP_KERNEL, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        if input_shape[-1] % self.kernel_size**2:
            raise ValueError(f"{self.name}: {input_shape[-1]} channels are not a multiple of {self.kernel_size}^2")

    def call(self, x):
        k, half = self.kernel_size, self.kernel_size // 2
        classes = x.shape[-1] // (k * k)
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        padded = ops.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])
        votes = [
            ops.slice(padded, (0, l, m, (l * k + m) * classes), (batch, height, width, classes))
            for l in range(k)
            for m in range(k)
        ]
        return ops.sum(ops.stack(votes, axis=0), axis=0) / float(k * k)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], input_shape[-1] // self.kernel_size**2)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=layers.PACKAGE)
class GroupedBilinearUpsampling(BilinearUpsampling):
    """``BilinearUpsampling`` for a ``Conv2DTranspose`` with ``g * C`` outputs from ``C``
    inputs: output channel ``g C + c`` upsamples input channel ``c``, for every group
    ``g``. Before training, every DAP group then predicts the same upsampled scores."""

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, out_channels, in_channels = shape
        if out_channels % in_channels:
            raise ValueError(f"GroupedBilinearUpsampling needs a multiple of the input channels, got {shape}")
        square = super().__call__((kernel_h, kernel_w, in_channels, in_channels), dtype)
        return ops.tile(square, (1, 1, out_channels // in_channels, 1))


def semantic_embedding(low, highs, *, name: str):
    """Semantic embedding branch (SEB): ``low * prod_i upsample(conv3x3(high_i))``.

    Every higher-level map passes a 3x3 convolution to ``low``'s width, is resized
    (bilinear) to ``low`` and multiplied element-wise into it.

    Args:
        low: the stage's features.
        highs: ``{stage name: features}`` of every higher stage.
    """
    factors = [low]
    for stage, high in highs.items():
        y = keras.layers.Conv2D(
            low.shape[-1], 3, padding="same", kernel_initializer="he_normal", name=f"{name}_from_{stage}_conv"
        )(high)
        factors.append(layers.ResizeLike(name=f"{name}_from_{stage}_resize")([y, low]))
    return keras.layers.Multiply(name=f"{name}_mul")(factors)


def semantic_supervision(x, num_classes: int, *, downsamplings: int, filters: int, name: str):
    """Semantic supervision (SS) branch: strided 3x3 conv-BN-ReLUs to the stride of
    res-5, global average pooling and a fully connected classifier, float32 (B, C)."""
    for step in range(1, downsamplings + 1):
        x = layers.conv_bn_relu(x, filters, 3, strides=2, name=f"{name}_down{step}")
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, name=name, dtype="float32")(x)


@register("ExFuse", default_frontend="ResNet101", default_output_stride=32, aux_loss_weights=_SS)
def build_exfuse(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    kernel_size: int = 15,
    dap_kernel: int = DAP_KERNEL,
    ss_filters: int = 256,
) -> keras.Model:
    """ExFuse: the GCN framework with semantics embedded into low-level features and
    resolution embedded into high-level ones (Zhang et al. 2018).

    The baseline is GCN (Peng et al. 2017, ``builders.gcn``, whose global
    convolution, boundary refinement (BR) and deconvolution blocks are reused):
    per stage res-2 .. res-5 a global convolution module to class score maps and
    a BR, fused top-down (upsample, add, BR), then two deconv-BR steps to the
    input resolution. ExFuse's components, on top of it:

      * **SEB**, semantic embedding branch: before its GCN module, each
        of res-4, res-3, res-2 is multiplied element-wise by every higher stage's
        features, each passed through a 3x3 convolution to the lower stage's width
        and bilinearly upsampled to it (``semantic_embedding``; res-2 takes res-3,
        res-4 and res-5).
      * **ECRE**, explicit channel resolution embedding: res-5's GCN
        module and BR are ``4 C`` wide and are upsampled to res-4 by sub-pixel
        upsampling (``DepthToSpace``, ``tf.nn.depth_to_space`` with block 2)
        instead of a deconvolution. The other upsampling steps keep GCN's
        deconvolutions (our reading of where the paper applies ECRE).
      * **DAP**, densely adjacent prediction, k = 3: the last deconvolution
        and BR are ``k^2 C`` wide, and every output pixel averages the votes of its
        k x k neighbours, one channel group each (``DenselyAdjacentPrediction``).
        That last deconvolution starts as bilinear upsampling copied into every
        group (``GroupedBilinearUpsampling``).
      * **SS**, semantic supervision: the paper attaches auxiliary
        classification branches to the early stages res-2, res-3, res-4 during
        ImageNet pretraining of the backbone (as we read it: convolutions that
        downsample the stage, global pooling, a classifier). There is no ImageNet
        pretraining here, so the branches are attached during segmentation
        training instead: training outputs ``"ss_res2"``, ``"ss_res3"``,
        ``"ss_res4"``, (B, C) class-presence logits (1, 2 or 3 strided 3x3
        conv-BN-ReLU of ``ss_filters`` channels to stride 32, global average
        pooling, a dense layer), trained with the binary cross-entropy against the
        classes present in the label map (`semseg_suite.losses.presence_loss`),
        the segmentation label's image-level counterpart of the ImageNet label.
        Weight 1.0 each, like the main loss: we could not check the paper's
        auxiliary loss weights (its text was not reachable here), so the weight
        is an assumption. The inference model drops the branches, as the paper
        does after pretraining.
      * **LR**, layer rearrangement, is a frontend of its own:
        ``--frontend ResNet101LR`` (``frontends.resnet_lr``) is ResNet-101 with the
        paper's {8, 8, 9, 8} blocks per stage instead of {3, 4, 23, 3} (the paper
        rearranges its ResNeXt-101). Random initialisation only: the paper
        retrains the rearranged network on ImageNet, which is not done here, and
        a registry frontend's pretrained blocks cannot be re-wired into it (a
        moved block would have another stage's width). The default frontend stays
        the pretrained ResNet-101, so ExFuse's default is the paper's model
        without LR (the paper's final results include LR).

    Other choices: the paper's backbone is ResNeXt-101 (not in the registry;
    ResNet-101 is the default here, any frontend works). GCN's k = 15 (the GCN
    paper's best setting, as in ``builders.gcn``; we could not check the k of the
    ExFuse baseline). Which layers DAP widens (the last deconvolution and BR)
    is our reading. SEB convolutions have biases and no BN or nonlinearity (the
    products make the initial logits large on a randomly initialised frontend:
    about 2e3 on ResNet-18; training copes, see the tests); the SS widths (256)
    and single dense classifier are ours. All maps are resized to the map they are fused with
    (``layers.ResizeLike``), so odd input sizes work; with ``output_stride < 32``
    (not in the paper) a fusion at equal resolution has no upsampling, and ECRE
    applies only when res-5 is coarser than res-4. No paper parameter count is
    registered: we could not check whether the paper reports one.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes ``C``.
        output_stride: the frontend's output stride (32 in the paper).
        kernel_size: ``k`` of the global convolution modules (15).
        dap_kernel: ``k`` of densely adjacent prediction (3).
        ss_filters: channels of the semantic supervision branches.
    """
    features = frontend_features(frontend)
    inputs = {stage: features[f"stride{stride}"] for stage, stride in STAGES}

    def resolution(stride: int) -> int:
        return min(stride, output_stride)

    ecre = resolution(32) > resolution(16)
    embedded = {}
    for index, (stage, _) in enumerate(STAGES):
        highs = {high: inputs[high] for high, _ in STAGES[:index]}
        embedded[stage] = semantic_embedding(inputs[stage], highs, name=f"seb_{stage}") if highs else inputs[stage]

    scores = {}
    for stage, _ in STAGES:
        width = num_classes * ECRE_FACTOR**2 if stage == "res5" and ecre else num_classes
        y = gcn.global_convolution(embedded[stage], width, kernel_size, name=f"gcn_{stage}")
        scores[stage] = gcn.boundary_refinement(y, name=f"br_{stage}")

    x = scores["res5"]
    previous_stride = 32
    for stage, stride in STAGES[1:]:
        skip = scores[stage]
        if resolution(previous_stride) > resolution(stride):
            if stage == "res4":
                x = DepthToSpace(ECRE_FACTOR, name="ecre_res5")(x)
            else:
                x = gcn.deconvolution(x, name=f"fuse_{stage}_deconv")
            x = layers.ResizeLike(name=f"fuse_{stage}_resize")([x, skip])
        x = keras.layers.Add(name=f"fuse_{stage}_add")([x, skip])
        x = gcn.boundary_refinement(x, name=f"fuse_{stage}_br")
        previous_stride = stride

    x = gcn.deconvolution(x, name="up1_deconv")
    x = gcn.boundary_refinement(x, name="up1_br")
    x = keras.layers.Conv2DTranspose(
        num_classes * dap_kernel**2,
        4,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=GroupedBilinearUpsampling(),
        name="up2_deconv",
    )(x)
    x = layers.ResizeLike(name="up2_resize")([x, frontend.input])
    x = gcn.boundary_refinement(x, name="up2_br")
    outputs = {"logits": DenselyAdjacentPrediction(dap_kernel, name="logits", dtype="float32")(x)}

    for stage, stride in STAGES[1:]:
        outputs[f"ss_{stage}"] = semantic_supervision(
            inputs[stage], num_classes, downsamplings=(32 // stride).bit_length() - 1, filters=ss_filters,
            name=f"ss_{stage}",
        )
    return keras.Model(frontend.input, outputs, name="ExFuse")
