"""ICNet: Zhao, Qi, Shen, Shi, Jia, "ICNet for Real-Time Semantic Segmentation on
High-Resolution Images", ECCV 2018."""

from __future__ import annotations

from typing import Sequence

import keras

from builders.base import Recipe, register
from semseg_suite import layers

# Cascade label guidance: loss weights (the paper's lambdas) of the sub4 and sub24
# guidance outputs; the main (sub124) output weighs 1.
AUX_WEIGHTS = {"sub4": 0.4, "sub24": 0.4}


def shared_layer_copies(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """A fresh copy of every layer of ``model`` (same class, config and name).

    The copies are not connected to anything yet: ``apply_layers`` calls them on
    new tensors, once per branch, so the branches share weights and the result
    stays one flat functional model whose layers carry exactly the calls the
    model makes (``semseg_suite.flops`` counts every call of every layer).
    """
    return {
        layer.name: type(layer).from_config(layer.get_config())
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    }


def apply_layers(model: keras.Model, x, copies: dict[str, keras.layers.Layer]):
    """Runs ``model``'s graph on ``x`` with each layer replaced by its copy."""
    return model._run_through_graph(x, operation_fn=lambda layer: copies[layer.name])


def copy_weights(model: keras.Model, copies: dict[str, keras.layers.Layer]) -> None:
    for layer in model.layers:
        if layer.name in copies and layer.weights:
            copies[layer.name].set_weights(layer.get_weights())


def cascade_feature_fusion(
    coarse, fine, filters: int, num_classes: int, *, reference, name: str, guidance_name: str
):
    """The paper's cascade feature fusion (CFF) unit.

    ``coarse`` is upsampled (bilinear) to ``fine``'s size and refined by a 3x3
    conv with dilation 2 and BN; ``fine`` is projected by a 1x1 conv and BN; both
    have ``filters`` channels, are summed and pass a ReLU. The cascade label
    guidance classifier (a 1x1 conv to the classes) reads the upsampled coarse
    map; its logits (layer ``guidance_name``) are resized to ``reference`` (the
    input image).

    Returns:
        ``(fused features, guidance logits)``.
    """
    up = layers.ResizeLike(name=f"{name}_upsample")([coarse, fine])
    guidance = layers.classifier(up, num_classes, reference=reference, name=guidance_name)
    x = layers.conv2d(filters, 3, rate=2, name=f"{name}_dilated_conv")(up)
    x = layers.batch_norm(f"{name}_dilated_bn")(x)
    y = layers.conv2d(filters, 1, name=f"{name}_projection_conv")(fine)
    y = layers.batch_norm(f"{name}_projection_bn")(y)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x), guidance


@register(
    "ICNet",
    default_frontend="ResNet50",
    default_output_stride=8,
    aux_loss_weights=AUX_WEIGHTS,
    recipes={
        "paper": Recipe(
            source="Zhao et al. 2018 (ICNet), implementation details of the experiments",
            note=(
                "30K iterations are the Cityscapes (and COCO-Stuff) schedule, CamVid's is 10K (set "
                "--num-epochs). No crop size is stated. Not done: the paper's model compression (kernel "
                "pruning) of the trained network."
            ),
            optimizer="sgd",
            learning_rate=0.01,
            momentum=0.9,
            lr_schedule="poly",
            weight_decay=1e-4,
            batch_size=16,
            iterations=30_000,
            scale_range=(0.5, 2.0),
            h_flip=True,
        )
    },
)
def build_icnet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    psp_filters: int = 256,
    cff_filters: int = 128,
    light_filters: Sequence[int] = (32, 32, 64),
) -> keras.Model:
    """ICNet: an image cascade of three resolutions fused coarse to fine.

    Branches (the paper's architecture figure):
      * sub4, low resolution: the input downsampled to 1/4 goes through the whole
        frontend (ResNet-50 at output stride 8, the paper's PSPNet50) and
        PSPNet's pyramid pooling module (``layers.pyramid_pooling``, bins 1, 2,
        3, 6), then a 1x1 conv-BN-ReLU to ``psp_filters`` (256, ``conv5_4_k1`` of
        the authors' model): 1/32 of the input.
      * sub2, medium resolution: the input downsampled to 1/2 goes through the
        frontend's shallow layers, up to its stride-8 endpoint, with the weights
        of the sub4 branch (the paper shares them): 1/16 of the input.
      * sub1, high resolution: three 3x3 stride-2 conv-BN-ReLU layers of 32, 32
        and 64 channels on the full image (the authors' ``conv{1,2,3}_sub1``):
        1/8 of the input.

    Two cascade feature fusion units (``cascade_feature_fusion``, 128 channels
    as in the authors' model) fuse sub4 into sub2 (sub24, 1/16) and sub24 into
    sub1 (sub124, 1/8). The main output upsamples sub124 2x (to 1/4), applies a
    1x1 conv to the classes and upsamples 4x to the input.

    Cascade label guidance: the guidance classifiers of the two CFF units are the
    auxiliary outputs ``sub4`` and ``sub24``, each with loss weight 0.4 (the
    paper's lambdas; the main ``logits``, sub124, weigh 1; mmsegmentation's ICNet
    uses the same); ``build_model`` drops them unless ``auxiliary=True``. An
    unofficial TensorFlow port uses 0.16 for sub4.

    The input is downsampled by 2x2 average pooling (once for 1/2, twice for
    1/4): for even sizes this is exactly bilinear resizing by 1/2 with
    half-pixel centres, and 1/4 is then area (anti-aliased) resizing. Every
    upsampling resizes to a reference tensor (the fine branch, the 1/4 image,
    the input), so any input size works; odd sizes round up (``ceil``).

    Differences from the paper and the authors' code:
      * The paper trains each branch against labels downsampled to that
        branch's resolution (1/16, 1/8, 1/4); here every output is resized to
        the input and the loss is taken at full resolution (the suite's
        auxiliary-head contract).
      * The frontend is the uncompressed ResNet-50 of ``keras.applications``
        (7x7 stem). The authors' released model is PSPNet50 (3x3 deep stem)
        pruned to half of its kernels (the paper's model compression), with a
        pyramid pooling module that sums the pooled levels without
        convolutions; we use PSPNet's module (concatenation, 1x1 conv-BN-ReLU
        per level, 512 channels on ResNet-50).
      * The authors' code computes the shallow layers once, on the 1/2 image,
        and feeds their first-block output (``conv3_1``), downsampled 2x, to the
        deep layers; we follow the paper's figure: the 1/4 image through the
        whole frontend, the 1/2 image through its shallow layers, shared
        weights.
      * BN after every convolution of the light branch and the CFF units, as in
        the authors' un-merged model (``icnet_cityscapes_bnnomerge``); BN
        momentum 0.9 (see ``semseg_suite.layers``).

    The paper reports no parameter count.

    Args:
        frontend: frontend model built with ``output_stride``; its layers are
            copied (with their weights) into the model, so that the 1/4 and
            1/2 branches can share them.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (8 in the paper).
        bins: pyramid pooling bins.
        psp_filters: channels of the 1x1 conv after the pyramid pooling.
        cff_filters: channels of the cascade feature fusion units.
        light_filters: widths of the high-resolution branch's three layers.
    """
    inputs = frontend.input
    half = keras.layers.AveragePooling2D(2, padding="same", name="input_half")(inputs)
    quarter = keras.layers.AveragePooling2D(2, padding="same", name="input_quarter")(half)

    copies = shared_layer_copies(frontend)
    deep = apply_layers(frontend, quarter, copies)
    shallow = keras.Model(frontend.input, frontend.output["stride8"], name="shallow_template")
    sub2 = apply_layers(shallow, half, copies)
    copy_weights(frontend, copies)

    sub4 = layers.pyramid_pooling(deep["stride32"], bins=bins, name="sub4_ppm")
    sub4 = layers.conv_bn_relu(sub4, psp_filters, 1, name="sub4_projection")

    sub1 = inputs
    for i, width in enumerate(light_filters, start=1):
        sub1 = layers.conv_bn_relu(sub1, width, 3, strides=2, name=f"sub1_conv{i}")

    sub24, guidance4 = cascade_feature_fusion(
        sub4, sub2, cff_filters, num_classes, reference=inputs, name="cff_sub24", guidance_name="sub4"
    )
    sub124, guidance24 = cascade_feature_fusion(
        sub24, sub1, cff_filters, num_classes, reference=inputs, name="cff_sub124", guidance_name="sub24"
    )
    x = layers.ResizeLike(name="sub124_upsample")([sub124, quarter])
    outputs = {
        "logits": layers.classifier(x, num_classes, reference=inputs),
        "sub4": guidance4,
        "sub24": guidance24,
    }
    return keras.Model(inputs, outputs, name="ICNet")
