"""Floating-point operation counts of a model, read from its layers.

``count_flops(model)`` adds up the multiply-accumulates (MACs) of every
convolution and dense layer at the shapes the model was built for, and reports
FLOPs = 2 x MACs, per image. Covered: ``Conv2D`` (grouped and dilated, including
``AtrousConv2D``), ``DepthwiseConv2D``, ``SeparableConv2D``, ``Conv2DTranspose``
and ``Dense``. Elementwise and memory-bound layers (batch norm, activations,
pooling, resizing, additions, concatenations) are not counted, the usual
convention of the papers' GFLOPs columns; they are a few percent of the total for
convolutional networks.

The model needs static spatial shapes: build it with e.g.
``input_shape=(512, 512, 3)``.
"""

from __future__ import annotations

import math

import keras


def _spatial(shape) -> int:
    """Height x width of an NHWC shape."""
    if shape[1] is None or shape[2] is None:
        raise ValueError(
            f"FLOPs need static shapes; got {tuple(shape)}. Build the model with a "
            "fixed input_shape, e.g. (512, 512, 3)."
        )
    return int(shape[1]) * int(shape[2])


def layer_macs(layer: keras.layers.Layer, input_shape, output_shape) -> int:
    """Multiply-accumulates of one call of ``layer`` on one image."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Every input pixel scatters a kh x kw x C_out patch.
        kh, kw = layer.kernel_size
        return _spatial(input_shape) * input_shape[-1] * kh * kw * layer.filters
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        depthwise_channels = input_shape[-1] * layer.depth_multiplier
        return _spatial(output_shape) * depthwise_channels * (kh * kw + layer.filters)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _spatial(output_shape) * input_shape[-1] * layer.depth_multiplier * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return _spatial(output_shape) * layer.filters * kh * kw * input_shape[-1] // layer.groups
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(int(d) for d in input_shape[1:-1])
        return positions * input_shape[-1] * layer.units
    return 0


def count_flops(model: keras.Model) -> int:
    """FLOPs (2 x MACs) of one forward pass of one image through ``model``.

    Walks the model's own graph nodes, so a layer called several times in the model
    (shared weights) counts once per call, and calls of its layers in other models
    do not count. Nested models are counted through their own layers.
    """
    graph = getattr(model, "_functional", None) or model  # a Sequential's graph
    if not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(f"{model.name}: FLOPs need a functional or Sequential model with a known input")
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            layer = node.operation
            if isinstance(layer, keras.Model):
                total += count_flops(layer)
            elif node.input_tensors and node.output_tensors:
                total += 2 * layer_macs(layer, node.input_tensors[0].shape, node.output_tensors[0].shape)
    return total
