"""EfficientNetV2 frontends (Tan & Le 2021, *EfficientNetV2: Smaller Models and
Faster Training*) on ``keras.applications``: B0-B3, S, M, L.

Endpoints: at each stride the last block of the last stage at that stride (Fused-
MBConv stages 1-3, MBConv stage 5), named as the input of the next stage's first
layer (``block{N}a_expand_conv``), since the last block's letter varies by variant;
at stride 32 ``top_activation`` (the application's headless output, 1280 ch).

Normalisation: built with ``include_preprocessing=False`` (no weights change).
The in-graph preprocessing it replaces is, for B0-B3, ``Rescaling(1/255)`` +
``Normalization(ImageNet mean, std**2)``, which is the suite's ``"torch"`` mode;
for S/M/L ``Rescaling(1/128, offset=-1)``, registered as ``"tf"`` (``x/127.5 - 1``,
the nearest mode the suite has: the two differ by the factor 128/127.5 on ``x``, at
most 0.008 at ``x = 255``).

Strided convs are same-padded in Keras, so endpoints are ``ceil(H / stride)``.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import InputOf, build_application_frontend

ENDPOINTS = {
    2: InputOf("block2a_expand_conv"),
    4: InputOf("block3a_expand_conv"),
    8: InputOf("block4a_expand_conv"),
    16: InputOf("block6a_expand_conv"),
    32: "top_activation",
}
PREPROCESSING = {
    **{f"EfficientNetV2B{i}": "torch" for i in range(4)},
    **{f"EfficientNetV2{size}": "tf" for size in "SML"},
}
VARIANTS = tuple(PREPROCESSING)


def build_efficientnet_v2(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds an EfficientNetV2 frontend (``include_preprocessing=False``)."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        app_kwargs={"include_preprocessing": False},
    )


BUILDERS = {variant: functools.partial(build_efficientnet_v2, variant) for variant in VARIANTS}
