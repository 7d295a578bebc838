"""Inception frontends on ``keras.applications``: InceptionV3 (Szegedy et al. 2016,
*Rethinking the Inception Architecture for Computer Vision*) and InceptionResNetV2
(Szegedy et al. 2017, *Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning*).

Both are built of valid-padded convolutions and pools, which give sizes like
``(H - 3) // 2 + 1``. Every valid-padded layer is same-padded here (same weights;
TF-slim's ``align_feature_maps=True`` for Inception-ResNet-v2, which DeepLab-style
dense prediction with it uses), so every endpoint is ``ceil(H / stride)``; the
features differ from the classifier's only near the borders.

Endpoints: at strides 2 and 4 the stem tensors that enter its two max pools (Keras
names these layers ``activation_N``, so the table names them by position: the input
of the first / second ``MaxPooling2D``); then the last block at each stride:
``mixed2`` / ``mixed7`` / ``mixed10`` (InceptionV3), ``block35_10_ac`` /
``block17_20_ac`` / ``conv_7b_ac`` (InceptionResNetV2). Output stride 8 and 16 dilate
the reduction blocks (``mixed3``/``mixed8``, ``mixed_6a``/``mixed_7a``) and the blocks
after them, 1xN and Nx1 factorised convs included. TF-slim's Inception-ResNet-v2
only offers output stride 16 (8 "up to PreAuxLogits"); the dilation clone has no such
limit.

Normalisation: ``"tf"`` ([-1, 1]), as both applications' ``preprocess_input``.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import build_application_frontend, nth_input_of, same_padding_overrides

_STEM = {2: nth_input_of(keras.layers.MaxPooling2D, 0), 4: nth_input_of(keras.layers.MaxPooling2D, 1)}
ENDPOINTS = {
    "InceptionV3": {**_STEM, 8: "mixed2", 16: "mixed7", 32: "mixed10"},
    "InceptionResNetV2": {**_STEM, 8: "block35_10_ac", 16: "block17_20_ac", 32: "conv_7b_ac"},
}
VARIANTS = tuple(ENDPOINTS)


def build_inception(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds ``InceptionV3`` or ``InceptionResNetV2`` with same padding throughout."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        ENDPOINTS[variant],
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        overrides=same_padding_overrides,
    )


BUILDERS = {variant: functools.partial(build_inception, variant) for variant in VARIANTS}
