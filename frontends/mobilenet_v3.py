"""MobileNetV3 frontends (Howard et al. 2019, *Searching for MobileNetV3*) on
``keras.applications``.

Endpoints follow this suite's MobileNetV2 frontend (and the DeepLab/LR-ASPP
feature taps of the paper's segmentation section): at each stride the expansion
output right before the next stride-2 depthwise conv, i.e. the widest and last
tensor at that stride; at stride 32 the application's headless output (the 1x1
conv to 576 / 960 channels, batch norm, hard-swish). Keras leaves those
activations unnamed, so the table names them as the input of the (named) padding
layer of the next strided block.

Normalisation: ``keras.applications.MobileNetV3*`` normally starts with
``Rescaling(1 / 127.5, offset=-1)`` and expects raw 0..255 pixels. It is built
here with ``include_preprocessing=False`` (no weights change) and registered with
the suite's ``"tf"`` mode, which is the same map to [-1, 1].

``keras.applications`` pads each strided depthwise conv with ``correct_pad`` and
runs it valid, which gives ``floor(H / 2)`` on odd sizes of an unknown-size input.
Here those padding layers are identities and the convs same-padded
(``frontends.applications.correct_pad_overrides``): the same padding on even sizes,
``ceil(H / stride)`` endpoints on odd ones.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import OUTPUT, InputOf, correct_pad_overrides, build_application_frontend

ENDPOINTS = {
    "MobileNetV3Small": {
        2: InputOf("expanded_conv_depthwise_pad"),
        4: InputOf("expanded_conv_1_depthwise_pad"),
        8: InputOf("expanded_conv_3_depthwise_pad"),
        16: InputOf("expanded_conv_8_depthwise_pad"),
        32: OUTPUT,
    },
    "MobileNetV3Large": {
        2: InputOf("expanded_conv_1_depthwise_pad"),
        4: InputOf("expanded_conv_3_depthwise_pad"),
        8: InputOf("expanded_conv_6_depthwise_pad"),
        16: InputOf("expanded_conv_12_depthwise_pad"),
        32: OUTPUT,
    },
}
VARIANTS = tuple(ENDPOINTS)


def build_mobilenet_v3(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds ``MobileNetV3Small`` or ``MobileNetV3Large`` (width 1.0, not minimalistic)."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        ENDPOINTS[variant],
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        overrides=correct_pad_overrides,
        app_kwargs={"include_preprocessing": False},
    )


BUILDERS = {variant: functools.partial(build_mobilenet_v3, variant) for variant in VARIANTS}
