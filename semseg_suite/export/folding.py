"""Batch-norm folding: an inference model with each conv+BN pair merged into the conv.

At inference a ``BatchNormalization`` is a per-channel affine map with frozen
statistics, ``y = (x - mean) * scale + beta`` with ``scale = gamma / sqrt(var +
eps)``. When it directly follows a convolution whose output nothing else reads,
the map can be moved into the convolution's kernel and bias, which removes one
memory pass over the feature map per pair (the BN becomes a weightless
``Identity``). Training keeps its BNs: the folded model is for inference only.
"""

from __future__ import annotations

import collections

import keras
import numpy as np

# Convolutions whose output channels a BN after them can be folded into. Subclasses
# (``layers.AtrousConv2D``, AdapNet's ``MultiscaleConv2D``) only change the
# convolution op and add the bias after it, so the same folding holds for them.
FOLDABLE = (
    keras.layers.Conv2D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2DTranspose,
)


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An equal inference model with every foldable conv+BN pair folded into the conv.

    A ``BatchNormalization`` over the last (channels) axis is folded when its single
    input is the output of a ``Conv2D``, ``SeparableConv2D``, ``DepthwiseConv2D`` or
    ``Conv2DTranspose`` (or a subclass, which keeps its class) that has a linear
    activation, channels-last data, is called once in the model, and whose output
    feeds only that BN and is not a model output. The conv is re-made with a bias
    holding the BN's shift and its kernel scaled per output channel; the BN becomes
    an ``Identity`` of the same name. Any other BN (after an add, a concatenation,
    an activation, or a conv that something else also reads) stays as it is. Every
    other layer keeps its name, class and weights (copied, not shared). The folding
    is computed in float64 and stored in the variables' dtype, so outputs agree with
    the original model's to float32 rounding (the tests hold registry models with
    random BN statistics to 1e-4). Input layers of nested sub-models are renamed
    by ``clone_model`` after their tensors; every other name is kept.

    The result is for inference only: its BNs no longer update statistics, and
    training it would train the folded weights, not the original ones.

    Args:
        model: a functional model; one with auxiliary heads (dict output) is first
            restricted to its main logits (``export.inference_model``). Nested
            functional sub-models are folded inside too.

    Returns:
        The folded model, or ``export.inference_model(model)`` itself (``model``
        for a single-output model) when no pair folds.
    """
    from semseg_suite import export  # the package imports this module

    model = export.inference_model(model)
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    folded = {id(conv) for conv, _ in pairs.values()}
    clones, identities = {}, set()

    def clone(layer):
        if id(layer) in pairs:
            new = keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)
            identities.add(id(new))
        elif id(layer) in folded:
            new = type(layer).from_config({**layer.get_config(), "use_bias": True})
        else:
            new = type(layer).from_config(layer.get_config())
        clones[id(layer)] = (layer, new)
        return new

    def call(layer, *args, **kwargs):
        if id(layer) in identities:  # the BN's call arguments (mask, training) do not apply
            return layer(args[0])
        return layer(*args, **kwargs)

    # Inputs named as the original's input layers (clone_model would name them after their tensors).
    inputs = keras.tree.map_structure(
        lambda tensor: keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                   name=tensor._keras_history.operation.name),
        model.input,
    )
    result = keras.models.clone_model(model, inputs, clone_function=clone, call_function=call, recursive=True)
    batch_norms = {id(conv): bn for conv, bn in pairs.values()}
    for layer, new in clones.values():
        if id(layer) in folded:
            _assign_folded(layer, batch_norms[id(layer)], new)
        elif id(layer) not in pairs:
            new.set_weights(layer.get_weights())
    return result


def foldable_pairs(model: keras.Model) -> dict[int, tuple[keras.layers.Layer, keras.layers.BatchNormalization]]:
    """``{id(bn): (conv, bn)}`` for each BN of ``model`` (and of its nested
    functional sub-models) that `fold_batch_norm` folds, as that docstring says."""
    pairs = {}
    nodes = [node for depth in model._nodes_by_depth.values() for node in depth]
    calls = collections.Counter(id(node.operation) for node in nodes)
    readers = collections.Counter(id(tensor) for node in nodes for tensor in node.arguments.keras_tensors)
    outputs = {id(tensor) for tensor in model.outputs}
    for node in nodes:
        layer = node.operation
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            pairs.update(foldable_pairs(layer))
        if not isinstance(layer, keras.layers.BatchNormalization) or calls[id(layer)] != 1:
            continue
        inputs = node.arguments.keras_tensors
        if len(inputs) != 1 or node.arguments.kwargs.get("training") is True:
            continue
        tensor = inputs[0]
        conv = tensor._keras_history.operation
        if (
            isinstance(conv, FOLDABLE)
            and calls[id(conv)] == 1
            and readers[id(tensor)] == 1
            and id(tensor) not in outputs
            and conv.activation is keras.activations.linear
            and conv.data_format == "channels_last"
            and layer.axis % len(tensor.shape) == len(tensor.shape) - 1
        ):
            pairs[id(layer)] = (conv, layer)
    return pairs


def _assign_folded(conv, bn: keras.layers.BatchNormalization, new) -> None:
    """Writes ``conv`` followed by ``bn`` into ``new`` (``conv``'s class, with a bias)."""
    ones = np.ones(bn.moving_mean.shape, np.float64)
    gamma = _float64(bn.gamma) if bn.scale else ones
    beta = _float64(bn.beta) if bn.center else 0 * ones
    scale = gamma / np.sqrt(_float64(bn.moving_variance) + bn.epsilon)
    bias = _float64(conv.bias) if conv.use_bias else 0 * ones
    new.bias.assign(((bias - _float64(bn.moving_mean)) * scale + beta).astype(new.bias.dtype))
    if isinstance(conv, keras.layers.SeparableConv2D):
        new.depthwise_kernel.assign(conv.depthwise_kernel.numpy())
        kernel, target, shape = conv.pointwise_kernel, new.pointwise_kernel, scale.shape  # (1, 1, in, filters)
    elif isinstance(conv, keras.layers.DepthwiseConv2D):
        # (kh, kw, in, multiplier): output channel c = i * multiplier + m
        kernel, target, shape = conv.kernel, new.kernel, conv.kernel.shape[2:]
    elif isinstance(conv, keras.layers.Conv2DTranspose):
        kernel, target, shape = conv.kernel, new.kernel, (scale.size, 1)  # (kh, kw, filters, in)
    else:
        kernel, target, shape = conv.kernel, new.kernel, scale.shape  # (kh, kw, in / groups, filters)
    target.assign((_float64(kernel) * scale.reshape(shape)).astype(target.dtype))


def _float64(variable) -> np.ndarray:
    return np.asarray(variable.numpy(), np.float64)
