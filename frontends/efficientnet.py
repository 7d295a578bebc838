"""EfficientNet B0-B7 frontends (Tan & Le 2019, *EfficientNet: Rethinking Model
Scaling for Convolutional Neural Networks*) on ``keras.applications``.

Endpoints: at each stride the output of the last MBConv block of the last stage at
that stride (stages 1, 2, 3, 5), named as the input of the next stage's first
layer (``block{N}a_expand_conv``) because the last block's letter depends on the
depth multiplier; at stride 32 ``top_activation`` (the 1x1 conv to 1280 x width,
as the application's headless output).

Normalisation: ``keras.applications.EfficientNet*`` starts with ``Rescaling(1/255)``,
``Normalization`` (ImageNet mean, and a variance that with the ImageNet weights
needs a further ``Rescaling(1/sqrt(std))``, keras issue 49930) and expects raw
0..255 pixels. With ImageNet weights those layers compute exactly
``(x / 255 - mean) / std``, the suite's ``"torch"`` mode. They are replaced here by
identities of the same name (the ``Normalization`` layer's mean and variance are
not copied) and the frontend is registered with ``"torch"``, so it takes the same
normalised input as every other frontend and the ImageNet convolution weights see
what they were trained on.

``keras.applications`` pads each strided depthwise conv with ``correct_pad`` and
runs it valid, which gives ``floor(H / 2)`` on odd sizes of an unknown-size input.
Here those padding layers are identities and the convs same-padded
(``frontends.applications.correct_pad_overrides``): the same padding on even sizes,
``ceil(H / stride)`` endpoints on odd ones.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import InputOf, correct_pad_overrides, build_application_frontend

ENDPOINTS = {
    2: InputOf("block2a_expand_conv"),
    4: InputOf("block3a_expand_conv"),
    8: InputOf("block4a_expand_conv"),
    16: InputOf("block6a_expand_conv"),
    32: "top_activation",
}
VARIANTS = tuple(f"EfficientNetB{i}" for i in range(8))


def build_efficientnet(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds an EfficientNet B0-B7 frontend (input normalisation stripped: ``"torch"``)."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        overrides=correct_pad_overrides,
        strip_preprocessing=True,
    )


BUILDERS = {variant: functools.partial(build_efficientnet, variant) for variant in VARIANTS}
