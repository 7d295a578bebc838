"""SPP head: He, Zhang, Ren, Sun, "Spatial Pyramid Pooling in Deep Convolutional
Networks for Visual Recognition", TPAMI 2015 (ECCV 2014), adapted to dense prediction."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

BINS = (1, 2, 4)


@register("SPPNet", default_frontend="ResNet50", default_output_stride=16)
def build_sppnet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 16,
    bins=BINS,
    filters: int | None = None,
    fuse_filters: int = 512,
    dropout: float = 0.1,
) -> keras.Model:
    """Spatial pyramid pooling over the last frontend features, for segmentation.

    The SPP layer of He et al. max-pools the last convolutional features into fixed
    ``b x b`` grids (their Fig. 3 uses 1, 2 and 4 bins; 4x4 + 2x2 + 1x1) and
    concatenates the bins for a classifier. This is the segmentation adaptation the
    suite's seed survey describes (and PSPNet later made with average pooling):
    each level is adaptive **max** pooling to ``b x b`` (the paper's pooling),
    projected by a 1x1 conv-BN-ReLU, bilinearly upsampled back to the features and
    concatenated with them; a 3x3 conv-BN-ReLU fuses the pyramid, then dropout, a
    1x1 classifier and bilinear upsampling to the input.

    The paper defines no dense head; every choice after the pooling (projection
    width, fusion conv, dropout) follows PSPNet's head and is stated here as an
    assumption.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride.
        bins: pooling grid sizes (1, 2, 4 as in the paper's figure).
        filters: channels of each level's projection (default: the features'
            channels over the number of levels, as PSPNet).
        fuse_filters: channels of the 3x3 fusion conv.
        dropout: dropout before the classifier.
    """
    x = frontend_features(frontend)["stride32"]
    filters = filters or x.shape[-1] // len(bins)
    levels = [x]
    for b in bins:
        y = layers.AdaptiveMaxPooling2D(b, name=f"spp_pool{b}")(x)
        y = layers.conv_bn_relu(y, filters, 1, name=f"spp_bin{b}")
        levels.append(layers.ResizeLike(name=f"spp_bin{b}_resize")([y, x]))
    x = keras.layers.Concatenate(name="spp_concat")(levels)
    x = layers.conv_bn_relu(x, fuse_filters, 3, name="spp_fuse")
    x = keras.layers.Dropout(dropout, name="spp_dropout")(x)
    logits = layers.classifier(x, num_classes, reference=frontend.input)
    return keras.Model(frontend.input, logits, name="SPPNet")
