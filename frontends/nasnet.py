"""NASNet-A frontends (Zoph et al. 2018, *Learning Transferable Architectures for
Scalable Image Recognition*) on ``keras.applications``: NASNetMobile (NASNet-A
4 @ 1056) and NASNetLarge (NASNet-A 6 @ 4032).

Any input size: ``keras.applications.NASNet*`` picks the wiring of each cell from
static sizes. ``_adjust_block`` brings the previous cell's output ``p`` to the
current one's grid with a strided two-path "factorised reduction" only when their
widths differ, so with ``None`` dims it sees ``None == None``, builds 1x1
projections instead (other layers, no match for the ImageNet weights, and an add of
mismatched sizes at run time), which is why Keras refuses ``None`` dims with
ImageNet weights. Here the application is built at its default size (224 / 331
px), where the wiring is right, and its layers (weights loaded) are called again on
an input of the requested shape; the wiring depends on the stride alone, so it
holds for every size, and ImageNet weights load for any input shape.

Padding: the stem conv is valid (``(H - 3) // 2 + 1``), and each reduction cell
pads by ``correct_pad`` for the size it was built at and runs its strided separable
convs and 3x3 pools valid, so other sizes misalign the cell's branches. Here each of
those layers is same-padded and its padding layer an identity
(``same_padding_overrides`` and ``correct_pad_overrides``; same weights), so every
endpoint is ``ceil(H / stride)`` for any size. That is TF-slim's original NASNet,
whose cells pad ``"SAME"`` (pools included, which then ignore the padded cells where
Keras' zero padding averages them in), except for the stem: its same padding adds a
last row and column on even sizes (the other outputs unchanged) and shifts its grid
by one pixel on odd ones. The one-pixel shift of the factorised reduction's second
path (``ZeroPadding2D`` + ``Cropping2D``) works at any size and stays.

Endpoints: ``stem_bn1`` at stride 2; ``reduction_concat_stem_1`` at stride 4; at
strides 8 and 16 the output of the last normal cell before the next reduction
(``normal_concat_3`` / ``normal_concat_8`` for NASNetMobile, ``normal_concat_5`` /
``normal_concat_12`` for NASNetLarge; every consumer of a cell output applies its own
ReLU first); at stride 32 the application's headless output (ReLU of the last
cell). Output stride 8 and 16 make the later reduction cells' strided separable
convs, pools and factorised reductions stride 1 and dilate the separable convs from
there on (pools are not dilated, as in DeepLab).

Normalisation: ``"tf"`` ([-1, 1]), as ``keras.applications.nasnet.preprocess_input``.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import (
    OUTPUT,
    build_application_frontend,
    correct_pad_overrides,
    same_padding_overrides,
)

ENDPOINTS = {
    "NASNetMobile": {
        2: "stem_bn1",
        4: "reduction_concat_stem_1",
        8: "normal_concat_3",
        16: "normal_concat_8",
        32: OUTPUT,
    },
    "NASNetLarge": {
        2: "stem_bn1",
        4: "reduction_concat_stem_1",
        8: "normal_concat_5",
        16: "normal_concat_12",
        32: OUTPUT,
    },
}
BUILD_SIZES = {"NASNetMobile": 224, "NASNetLarge": 331}  # the applications' default sizes
VARIANTS = tuple(ENDPOINTS)


def application_on_any_input(variant: str, *, include_top: bool, weights, input_shape) -> keras.Model:
    """``keras.applications`` NASNet built at its default size, then called on
    ``keras.Input(input_shape)`` (``None`` dims allowed).

    The returned model shares the built application's layers and weights. Its new
    input layer takes the old one's name, so the graph walks of ``frontends.applications``
    (which read each layer's first call, the one at the build size) find it.
    """
    size = BUILD_SIZES[variant]
    built = getattr(keras.applications, variant)(
        include_top=include_top, weights=weights, input_shape=(size, size, 3)
    )
    inputs = keras.Input(shape=tuple(input_shape), name=built.layers[0].name)
    return keras.models.clone_model(built, input_tensors=inputs, clone_function=lambda layer: layer)


def padding_overrides(model: keras.Model) -> dict[str, dict]:
    """Same padding for every valid-padded spatial layer, identities for the
    ``correct_pad`` padding layers in front of the strided ones."""
    return {**same_padding_overrides(model), **correct_pad_overrides(model)}


def build_nasnet(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds ``NASNetMobile`` or ``NASNetLarge`` for any input size."""
    del multi_grid  # not a ResNet: DeepLab's multi-grid does not apply
    return build_application_frontend(
        functools.partial(application_on_any_input, variant),
        variant,
        ENDPOINTS[variant],
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
        overrides=padding_overrides,
    )


BUILDERS = {variant: functools.partial(build_nasnet, variant) for variant in VARIANTS}
