"""Xception frontend (Chollet 2017) on ``keras.applications``.

This is the original Xception of ``keras.applications`` (max-pool downsampling, 8
middle-flow blocks), not the "aligned" Xception-65 of the DeepLabV3+ paper (strided
separable convs, 16 middle-flow blocks), whose ImageNet weights Keras does not ship.

The two stem convolutions are valid-padded in ``keras.applications``; they are
same-padded here (same weights) so every endpoint is ``ceil(H / stride)`` for any
input size and decoders can fuse features without cropping.
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model

ENDPOINTS = {
    2: "block1_conv2_act",
    4: "block3_sepconv2_bn",
    8: "block4_sepconv2_bn",
    16: "block13_sepconv2_bn",
    32: "block14_sepconv2_act",
}
_SAME_PADDED_STEM = {"block1_conv1": {"padding": "same"}, "block1_conv2": {"padding": "same"}}


def build_xception(input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds the Xception frontend; see the module docstring for the stem."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_frontend_model(
        keras.applications.Xception,
        "Xception",
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        extra_overrides=_SAME_PADDED_STEM,
    )
