"""VGG16 frontend (Simonyan & Zisserman 2015) on ``keras.applications``.

The 13 convolutions of VGG16 (configuration D), without its fully connected
layers; FCN adds those back as convolutions (``builders.fcn``). ImageNet weights
expect ``caffe`` preprocessing (BGR, mean subtracted).

Endpoints are the five max-pool outputs. ``keras.applications`` pools with valid
padding, which gives ``floor(H / 2)`` on odd sizes; here every pool is same-padded
(identical on even sizes), so each endpoint is ``ceil(H / stride)``. Past
``output_stride`` a pool keeps its 2x2 window with stride 1 (same padding, so the
size is kept: its window covers the pixel and the ones right and below it) and
the convolutions after it are dilated by the stride it gave up, as in DeepLab's
VGG16. DeepLab also enlarges those pools to 3x3 windows; we keep VGG's 2x2.
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model

ENDPOINTS = {
    2: "block1_pool",
    4: "block2_pool",
    8: "block3_pool",
    16: "block4_pool",
    32: "block5_pool",
}
_SAME_PADDED_POOLS = {f"block{b}_pool": {"padding": "same"} for b in range(1, 6)}


def build_vgg16(input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds the VGG16 frontend.

    Args:
        input_shape: ``(H, W, 3)``, ``None`` dims for any size.
        weights: ``None``, ``"imagenet"`` or a path to a weights file.
        output_stride: 8, 16 or 32.
        multi_grid: ignored (DeepLab's multi-grid is for ResNets).
    """
    del multi_grid
    return build_frontend_model(
        keras.applications.VGG16,
        "VGG16",
        ENDPOINTS,
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        extra_overrides=_SAME_PADDED_POOLS,
    )
