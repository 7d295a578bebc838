"""MobileNetV2 frontend (Sandler et al. 2018) on ``keras.applications``.

Endpoints are the expansion outputs right before each stride-2 depthwise conv
(where DeepLab and U-Net style decoders tap MobileNetV2) and, at stride 32, the
last inverted residual's projection (320 channels). Like DeepLab's MobileNetV2
feature extractor, the final 1x1 conv to 1280 channels is not used.
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model

ENDPOINTS = {
    2: "block_1_expand_relu",
    4: "block_3_expand_relu",
    8: "block_6_expand_relu",
    16: "block_13_expand_relu",
    32: "block_16_project_BN",
}
_SAME_PADDED = {
    **{f"block_{b}_pad": {"identity": True} for b in (1, 3, 6, 13)},
    **{f"block_{b}_depthwise": {"padding": "same"} for b in (1, 3, 6, 13)},
}


def build_mobilenet_v2(input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds the MobileNetV2 (width 1.0) frontend.

    ``keras.applications`` pads each strided depthwise conv by (0, 1) and runs it
    valid-padded, which gives ``floor`` sizes on odd inputs. Here the padding layers
    are identities and those convs same-padded: identical on even sizes (TensorFlow
    pads the same (0, 1)), ``ceil(H / stride)`` on odd ones.
    """
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_frontend_model(
        keras.applications.MobileNetV2,
        "MobileNetV2",
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        extra_overrides=_SAME_PADDED,
    )
