"""ResNet-V2 frontends (He et al. 2016, *Identity Mappings in Deep Residual
Networks*: pre-activation ResNets) on ``keras.applications``: ResNet50V2,
ResNet101V2, ResNet152V2.

Keras (like TF-slim's ``resnet_v2``) puts each stage's stride in its last unit, so
a stage's first units run at the previous stride. Endpoints: ``conv1_conv`` at
stride 2 (v2 has no batch norm after the stem conv); at strides 4, 8 and 16 the
pre-activation (batch norm + ReLU) of the strided last unit of stages 2-4, the
last full-width tensor at that stride; at stride 32 ``post_relu``, the final
batch norm + ReLU.

Normalisation: ``"tf"`` ([-1, 1]), as ``keras.applications.resnet_v2.preprocess_input``.
"""

from __future__ import annotations

import functools

import keras

from frontends.applications import build_application_frontend

BLOCKS = {"ResNet50V2": (3, 4, 6, 3), "ResNet101V2": (3, 4, 23, 3), "ResNet152V2": (3, 8, 36, 3)}
VARIANTS = tuple(BLOCKS)


def endpoints(variant: str) -> dict[int, str]:
    blocks = BLOCKS[variant]
    return {
        2: "conv1_conv",
        4: f"conv2_block{blocks[0]}_preact_relu",
        8: f"conv3_block{blocks[1]}_preact_relu",
        16: f"conv4_block{blocks[2]}_preact_relu",
        32: "post_relu",
    }


def build_resnet_v2(variant, input_shape=(None, None, 3), weights=None, output_stride=32, multi_grid=None):
    """Builds a ResNet-V2 frontend."""
    del multi_grid  # the last stage's units are not given multi-grid rates here
    return build_application_frontend(
        getattr(keras.applications, variant),
        variant,
        endpoints(variant),
        input_shape=input_shape,
        weights=weights,
        output_stride=output_stride,
    )


BUILDERS = {variant: functools.partial(build_resnet_v2, variant) for variant in VARIANTS}
