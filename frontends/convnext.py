"""ConvNeXt frontends (Liu et al. 2022, *A ConvNet for the 2020s*) on
``keras.applications``: Tiny, Small, Base, Large, XLarge.

ConvNeXt has no stride-2 stage: its stem is a 4x4 stride-4 "patchify" conv. The
``stride2`` endpoint is therefore not a learned feature: it is the (normalised)
input average-pooled by 2 (``{name}_stride2_pool``, no weights), so decoders that
tap stride 2 get the half-resolution image rather than a made-up feature map. The
other endpoints are the stage outputs (named as the input of the next downsampling
block, because Keras writes the residual additions as unnamed ``keras.ops``) and, at
stride 32, the application's headless output (last stage plus its final layer
norm).

The stem and downsampling blocks are nested ``Sequential`` (layer norm + conv);
``frontends.applications.dilation_plan`` looks into them. Their valid-padded
strided convs (4x4/4, 2x2/2) are same-padded here (identical on sizes divisible by
the stride, ``ceil(H / stride)`` otherwise); under output stride 8/16 the 2x2
downsampling convs run at stride 1 (same padding) and the later 7x7 depthwise convs
are dilated.

Normalisation: built with ``include_preprocessing=False`` (no weights change); the
dropped in-graph ``Normalization`` (ImageNet mean and std scaled to 0..255) is the
suite's ``"torch"`` mode.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import OUTPUT, InputOf, sequential_conv, build_application_frontend

VARIANTS = ("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge")


def _prefix(variant: str) -> str:
    return "convnext_" + variant[len("ConvNeXt"):].lower()


def _stride2_pool(prefix: str):
    def resolve(net):
        return keras.layers.AveragePooling2D(2, padding="same", name=f"{prefix}_stride2_pool")(net.input)

    return resolve


def endpoints(variant: str) -> dict:
    prefix = _prefix(variant)
    return {
        2: _stride2_pool(prefix),
        4: InputOf(f"{prefix}_downsampling_block_0"),
        8: InputOf(f"{prefix}_downsampling_block_1"),
        16: InputOf(f"{prefix}_downsampling_block_2"),
        32: OUTPUT,
    }


def _same_padded_patchify(base: keras.Model) -> dict[str, dict]:
    return {
        layer.name: {"padding": "same"}
        for layer in base.layers
        if sequential_conv(layer) is not None and max(sequential_conv(layer).strides) > 1
    }


def build_convnext(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds a ConvNeXt frontend (``include_preprocessing=False``; see the module docstring)."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        endpoints(variant),
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        app_kwargs={"include_preprocessing": False},
        overrides=_same_padded_patchify,
    )


BUILDERS = {variant: functools.partial(build_convnext, variant) for variant in VARIANTS}
