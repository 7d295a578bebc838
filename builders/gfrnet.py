"""G-FRNet: Islam, Rochan, Bruce, Wang, "Gated Feedback Refinement Network for Dense
Image Labeling", CVPR 2017."""

from __future__ import annotations

import keras

from builders.base import frontend_features, register
from semseg_suite import layers

STRIDES = (2, 4, 8, 16, 32)
STAGES = 5  # gate units and gated refinement units (G1..G5, RU1..RU5 in Fig. 2)
TOP_FILTERS = 1024  # conv6 and conv7 of the authors' released model
DROPOUT = 0.5  # after conv6 and conv7 in the authors' released model
# Stage-wise supervision: every prediction's cross-entropy at the same weight, 1, as
# the authors' released model trains its six SoftmaxWithLoss layers.
_AUX = {"coarse": 1.0, **{f"refine{k}": 1.0 for k in range(1, STAGES)}}


def _producer(tensor):
    """The operation (layer or op) of the frontend's graph that outputs ``tensor``
    (Keras keeps it only in the tensor's private ``_keras_history``)."""
    return tensor._keras_history.operation


def encoder_levels(frontend: keras.Model, output_stride: int):
    """The encoder's features, fine to coarse, and its top (the paper's pool5).

    On VGG16 (every endpoint a max-pool): the features each pool takes, the last
    convolution of every stage (conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 at
    strides 1 ... 16), and pool5 (stride 32), the six levels of Fig. 2. Other
    frontends end each stage without a pool: their endpoints (strides 2 ... 32)
    and a 2x2 max-pool of the last one in pool5's place (stride 1 past
    ``output_stride``, as the VGG16 frontend's pools).
    """
    features = frontend_features(frontend)
    endpoints = [features[f"stride{stride}"] for stride in STRIDES]
    pools = [_producer(tensor) for tensor in endpoints]
    if all(isinstance(pool, keras.layers.MaxPooling2D) for pool in pools):
        return [pool.input for pool in pools], endpoints[-1]
    top = keras.layers.MaxPooling2D(2, strides=2 if output_stride == 32 else 1, padding="same",
                                    name="top_pool")(endpoints[-1])
    return endpoints, top


def gate_unit(deep, shallow, filters, *, name):
    """Gate (Fig. 3): T_f (3x3 conv-BN-ReLU) on both maps, the deeper one upsampled to the shallower, multiplied."""
    deep = layers.conv_bn_relu(deep, filters, 3, name=f"{name}_deep")
    deep = layers.ResizeLike(name=f"{name}_deep_up")([deep, shallow])
    shallow = layers.conv_bn_relu(shallow, filters, 3, name=f"{name}_shallow")
    return keras.layers.Multiply(name=f"{name}_product")([deep, shallow])


def gated_refinement_unit(gated, coarser, num_classes, *, name):
    """RU (Fig. 4): 3x3 conv-BN of the gated map to C channels, concatenated with the
    coarser label map upsampled to it, a 3x3 conv to the refined label map."""
    m = layers.conv2d(num_classes, 3, name=f"{name}_conv")(gated)
    m = layers.batch_norm(f"{name}_bn")(m)
    coarser = layers.ResizeLike(name=f"{name}_up")([coarser, gated])
    x = keras.layers.Concatenate(name=f"{name}_concat")([m, coarser])
    return keras.layers.Conv2D(num_classes, 3, padding="same", kernel_initializer="he_normal",
                               name=f"{name}_pred")(x)


@register("G-FRNet", default_frontend="VGG16", default_output_stride=32, aux_loss_weights=_AUX)
def build_gfrnet(
    frontend: keras.Model,
    num_classes: int,
    *,
    output_stride: int = 32,
    gate_filters: int | None = None,
    top_filters: int = TOP_FILTERS,
    dropout: float = DROPOUT,
) -> keras.Model:
    """G-FRNet: a coarse prediction refined by five gated refinement units.

    Encoder (Sec. 3, Fig. 2): VGG-16's 13 convolutions (the paper's main encoder;
    it also reports ResNet-101), six levels from conv1_2 (stride 1) to pool5
    (stride 32, see `encoder_levels`). On pool5, conv6 and conv7 (3x3, 1024
    channels, BN, ReLU, dropout 0.5) and a 3x3 conv to the C classes give the
    coarse label map P_m^G (``"coarse"``). Five stages then go from coarse to fine;
    stage k takes two adjacent levels, the deeper f^{i+1} and the shallower f^i:

    * gate unit: both pass the transformation T_f, a 3x3 conv-BN-ReLU to the
      channels of f^i; the deeper one is bilinearly upsampled to f^i and the two
      are multiplied element-wise, M_f = T_f(f^{i+1}) * T_f(f^i);
    * gated refinement unit: a 3x3 conv-BN of M_f to C channels (m_f),
      concatenated with the previous stage's label map bilinearly upsampled to it
      (R_f), and a 3x3 conv to the refined C-channel label map R'_f.

    The fifth stage's map (stride 1 on VGG-16) is the model's output; the coarse
    map and the first four refined maps (``"refine1"`` ... ``"refine4"``, strides
    16 ... 2) are auxiliary outputs. Every prediction is upsampled to the input and
    trained by cross-entropy at weight 1: equal weights, as in the authors'
    released model, whose six SoftmaxWithLoss layers take each prediction
    upsampled to the label size, at Caffe's default weight.

    Sources. The gate and the RU are the paper's (Sec. 3, Figs. 3 and 4); the
    widths of T_f (the shallower input's channels) and of m_f (C) are our reading
    of the paper, which we could not re-check against its text while writing
    this. The layers of P_m^G (conv6, conv7, their width and dropout) follow the
    authors' released CamVid model (``models/camvid/train_camvid_gate.prototxt``
    in ``mrochan/gfrnet``). That model differs from the paper's description,
    where we follow the paper: its gate transforms are conv-BN without ReLU and go
    straight to C channels (``gate_filters=num_classes`` gives that width), the
    deeper map's transform is shared with the previous stage's shallower one, and
    a BN after the product takes the place of the RU's conv-BN. It also puts
    dropout 0.5 after pool3, pool4 and pool5 and uses VGG-16 with BN (SegNet's),
    which the shared VGG16 frontend does not have.

    On frontends other than VGG-16 (ResNets, ...) the levels are the frontend's
    endpoints at strides 2 ... 32 and a 2x2 max-pool of the last one stands in for
    pool5 (stride 64), so the stages end at stride 2 and the output is upsampled
    2x to the input.

    Args:
        frontend: frontend model built with ``output_stride``.
        num_classes: number of output classes.
        output_stride: the frontend's output stride (32 in the paper).
        gate_filters: channels of every gate's T_f; ``None``: the paper's, the
            channels of the gate's shallower input.
        top_filters: channels of conv6 and conv7.
        dropout: dropout after conv6 and conv7.
    """
    levels, top = encoder_levels(frontend, output_stride)
    x = top
    for index in (6, 7):
        x = layers.conv_bn_relu(x, top_filters, 3, name=f"conv{index}")
        x = keras.layers.Dropout(dropout, name=f"conv{index}_dropout")(x)
    prediction = keras.layers.Conv2D(num_classes, 3, padding="same", kernel_initializer="he_normal",
                                     name="coarse_pred")(x)
    outputs = {"coarse": layers.ResizeLike(name="coarse", dtype="float32")([prediction, frontend.input])}
    deep = top
    for k, shallow in enumerate(reversed(levels), start=1):
        gated = gate_unit(deep, shallow, gate_filters or shallow.shape[-1], name=f"gate{k}")
        prediction = gated_refinement_unit(gated, prediction, num_classes, name=f"refine{k}")
        name = "logits" if k == STAGES else f"refine{k}"
        outputs[name] = layers.ResizeLike(name=name, dtype="float32")([prediction, frontend.input])
        deep = shallow
    return keras.Model(frontend.input, outputs, name="G-FRNet")
