"""ResNet-50/101/152 frontends (He et al. 2016) on ``keras.applications``.

These are the original (v1) ResNets of ``keras.applications``: the stride of each
stage sits on the first 1x1 convolution of its first block, and ImageNet weights
expect ``caffe`` preprocessing (BGR, mean subtracted).
"""

from __future__ import annotations

import keras

from frontends.base import build_frontend_model

# Last block of each stage (conv2..conv5) per depth.
_BLOCKS = {"ResNet50": (3, 4, 6, 3), "ResNet101": (3, 4, 23, 3), "ResNet152": (3, 8, 36, 3)}
_APPLICATIONS = {
    "ResNet50": keras.applications.ResNet50,
    "ResNet101": keras.applications.ResNet101,
    "ResNet152": keras.applications.ResNet152,
}


def endpoints(name: str) -> dict[int, str]:
    """Endpoint layer names by nominal stride for one ResNet depth."""
    c2, c3, c4, c5 = _BLOCKS[name]
    return {
        2: "conv1_relu",
        4: f"conv2_block{c2}_out",
        8: f"conv3_block{c3}_out",
        16: f"conv4_block{c4}_out",
        32: f"conv5_block{c5}_out",
    }


def build_resnet(name, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds a ResNet frontend.

    Args:
        name: "ResNet50", "ResNet101" or "ResNet152".
        input_shape: ``(H, W, 3)``, ``None`` dims for any size.
        weights: ``None``, ``"imagenet"`` or a path to a weights file.
        output_stride: 8, 16 or 32.
        multi_grid: unit rates of the three blocks of the last stage (block4 in
            DeepLab's numbering, ``conv5`` here), multiplied by that stage's atrous
            rate; DeepLabV3 uses (1, 2, 4).
    """
    multipliers = {}
    if multi_grid is not None:
        blocks = _BLOCKS[name][3]
        if len(multi_grid) != blocks:
            raise ValueError(f"multi_grid needs {blocks} rates for {name}, got {multi_grid}")
        multipliers = {f"conv5_block{i}_2_conv": int(r) for i, r in enumerate(multi_grid, 1)}
    return build_frontend_model(
        _APPLICATIONS[name],
        name,
        endpoints(name),
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        rate_multipliers=multipliers,
    )
