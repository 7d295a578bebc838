"""Shared recipe for the ``keras.applications`` frontends beyond ResNet/MobileNetV2.

``frontends.base.build_frontend_model`` covers networks whose endpoint layers all
have fixed names. Several newer ``keras.applications`` networks leave the layers we
tap unnamed (MobileNetV3's activations, EfficientNet's stage outputs vary with the
depth multiplier), and some carry their input normalisation inside the graph. This
module adds, on top of the same dilation machinery (``dilation_plan``):

- endpoint tables whose entries are a layer name, ``InputOf(name)`` (the tensor
  that enters the named layer: "the last layer of the previous stage", whatever
  Keras called it) or ``OUTPUT`` (the application's own headless output);
- ``strip``: in-graph preprocessing layers (``Rescaling``/``Normalization``)
  replaced by identities of the same name, so the frontend takes the suite's
  normalised input like every other frontend (``FrontendSpec.preprocessing``);
- ``overrides``: extra per-layer config overrides computed from the built
  application (e.g. same padding for every valid-padded layer, whose names Keras
  generates).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import keras

from frontends.base import STRIDES, application, check_output_stride, endpoint_name, needs_clone, remade
from semseg_suite.layers import BN_MOMENTUM


@dataclasses.dataclass(frozen=True)
class InputOf:
    """Endpoint entry: the input tensor of layer ``name``."""

    name: str


OUTPUT = "<application output>"

PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def resolve_endpoint(net: keras.Model, entry):
    """The tensor an endpoint table entry names in ``net``."""
    if callable(entry):
        return entry(net)
    if entry == OUTPUT:
        return net.output
    if isinstance(entry, InputOf):
        return net.get_layer(entry.name).input
    return net.get_layer(entry).output


def endpoint_layer_names(model: keras.Model) -> dict[str, str]:
    """Endpoint key -> name of the layer that produces it (for docs and tests)."""
    return {key: tensor._keras_history.operation.name for key, tensor in model.output.items()}


def preprocessing_layer_names(model: keras.Model) -> list[str]:
    """Names of the in-graph input normalisation layers (``Rescaling``/``Normalization``)."""
    return [layer.name for layer in model.layers if isinstance(layer, PREPROCESSING_LAYERS)]


def correct_pad_overrides(model: keras.Model) -> dict[str, dict]:
    """Same padding for ``ZeroPadding2D(correct_pad(...))`` + valid strided conv pairs.

    ``keras.applications`` (MobileNetV3, EfficientNet) pads by ``(k//2 - 1, k//2)``
    when the input size is unknown and runs the strided conv valid, which gives
    ``floor(H / 2)`` on odd sizes. Same padding pads exactly that on even sizes (and
    ``(k//2, k//2)``, what ``correct_pad`` picks for a known odd size, on odd ones),
    so the weights see the same alignment and every endpoint is ``ceil(H / stride)``.
    """
    plan = {}
    for layer in model.layers:
        if getattr(layer, "padding", None) != "valid" or max(getattr(layer, "strides", (1, 1))) == 1:
            continue
        parents = [node.operation for node in layer._inbound_nodes[0].parent_nodes]
        if len(parents) == 1 and isinstance(parents[0], keras.layers.ZeroPadding2D):
            plan[layer.name] = {"padding": "same"}
            plan[parents[0].name] = {"identity": True}
    return plan


def same_padding_overrides(model: keras.Model) -> dict[str, dict]:
    """Makes every valid-padded spatial layer same-padded (identical weights).

    For networks built of valid convolutions and pools (InceptionV3,
    InceptionResNetV2), so every endpoint is ``ceil(H / stride)`` for any input.
    """
    plan = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel_size", getattr(layer, "pool_size", (1, 1)))
        if getattr(layer, "padding", "same") == "valid" and max(kernel) > 1:
            plan[layer.name] = {"padding": "same"}
    return plan


def dilation_plan(model: keras.Model, output_stride: int) -> dict[str, dict]:
    """``frontends.base.dilation_plan`` over every operation of the graph.

    The same rules (strides past ``output_stride`` become dilation, a strided layer
    keeps the rate it had before its own stride, ``ZeroPadding2D`` + valid conv
    pairs become same-padded convs), with three differences: it walks
    ``model.operations`` rather than ``model.layers`` (MobileNetV3's hard-sigmoid is
    plain ``keras.ops`` arithmetic, ``x + 3``, whose operations are not layers), and
    it dilates a conv whose kernel is larger than 1 in either dimension (Inception's
    1x3 / 1x7 factorised convs, which the base plan, reading ``kernel_size[0]``,
    would leave undilated), and it looks into a nested ``Sequential`` holding one
    convolution (ConvNeXt's stem and downsampling blocks), whose overrides
    ``clone_with_plan`` applies to that convolution.
    """
    state: dict[str, tuple[int, int]] = {}  # operation name -> (stride, rate) of its output
    plan: dict[str, dict] = {}
    for layer in model.operations:
        parents = [node.operation for node in layer._inbound_nodes[0].parent_nodes]
        stride = max((state[p.name][0] for p in parents), default=1)
        rate = max((state[p.name][1] for p in parents), default=1)
        inner = sequential_conv(layer) or layer
        layer_stride = getattr(inner, "strides", (1, 1))[0]
        kernel = max(getattr(inner, "kernel_size", (1, 1)))  # 1x7 convs dilate too
        overrides = {}
        if layer_stride > 1 and stride * layer_stride > output_stride:
            overrides["strides"] = (1, 1)
            conv_rate, rate = rate, rate * layer_stride
        else:
            conv_rate = rate
            stride *= layer_stride
        if hasattr(inner, "dilation_rate") and kernel > 1 and conv_rate > 1:
            overrides["dilation_rate"] = (conv_rate, conv_rate)
        if overrides and getattr(inner, "padding", "same") == "valid":
            overrides["padding"] = "same"
            for parent in parents:
                if isinstance(parent, keras.layers.ZeroPadding2D):
                    plan[parent.name] = {"identity": True}
        if overrides:
            plan[layer.name] = overrides
        state[layer.name] = (stride, rate)
    return plan


def nth_input_of(layer_type, index: int):
    """Endpoint entry: the input of the ``index``-th layer of ``layer_type`` in
    topological order (for stems whose layers Keras names, e.g. Inception's)."""

    def resolve(net):
        return [layer for layer in net.layers if isinstance(layer, layer_type)][index].input

    resolve.__name__ = f"input_of_{layer_type.__name__}_{index}"
    return resolve


def sequential_conv(layer):
    """The single convolution inside a nested ``Sequential`` block, else ``None``."""
    if not isinstance(layer, keras.Sequential):
        return None
    convs = [inner for inner in layer.layers if isinstance(inner, keras.layers.Conv2D)]
    return convs[0] if len(convs) == 1 else None


def clone_with_plan(model: keras.Model, plan: Mapping[str, dict]) -> keras.Model:
    """``frontends.base.clone_with_overrides`` that may also drop weight-bearing layers.

    An ``{"identity": True}`` entry may name a layer with weights (EfficientNet's
    ``Normalization`` holds mean and variance); its weights are not copied.
    """
    if not needs_clone(model, plan):
        return model

    def clone_layer(layer):
        overrides = dict(plan.get(layer.name, {}))
        if overrides.pop("identity", False):
            return keras.layers.Identity(name=layer.name)
        conv = sequential_conv(layer)
        if conv is not None:  # rebuilt from its layers, the overrides on its conv
            return keras.Sequential(
                [remade(inner, overrides if inner is conv else {}) for inner in layer.layers], name=layer.name
            )
        return remade(layer, overrides)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in model.layers:
        if layer.weights:
            target = clone.get_layer(layer.name)
            if target.weights:
                target.set_weights(layer.get_weights())
    return clone


def build_application_frontend(
    app_fn: Callable[..., keras.Model],
    name: str,
    endpoints: Mapping[int, object],
    *,
    input_shape=(None, None, 3),
    weights=None,
    output_stride: int = 32,
    app_kwargs: Mapping[str, object] | None = None,
    strip_preprocessing: bool = False,
    overrides: Callable[[keras.Model], Mapping[str, dict]] | None = None,
    unsupported_output_strides: Mapping[int, str] | None = None,
) -> keras.Model:
    """Application -> (strip preprocessing) -> dilation clone -> stride-named endpoints.

    Args:
        app_fn: the ``keras.applications`` constructor.
        name: the registered frontend name (also the model's name).
        endpoints: nominal stride -> layer name, ``InputOf(name)``, ``OUTPUT`` or a
            callable ``net -> tensor`` (for networks whose layers Keras names).
        input_shape: ``(H, W, 3)``; ``None`` dims for any size.
        weights: ``None``, ``"imagenet"`` or a weights file path.
        output_stride: 8, 16 or 32.
        app_kwargs: extra constructor arguments (``include_preprocessing=False``).
        strip_preprocessing: replace in-graph ``Rescaling``/``Normalization`` layers
            by identities (the suite normalises the input instead).
        overrides: ``base -> {layer name: config overrides}``, merged into the plan.
        unsupported_output_strides: output stride -> why this frontend cannot run at
            it; building at such a stride raises ``ValueError``.
    """
    output_stride = check_output_stride(output_stride)
    reason = (unsupported_output_strides or {}).get(output_stride)
    if reason:
        raise ValueError(f"{name} cannot run at output_stride={output_stride}: {reason}")
    constructor = functools.partial(app_fn, **dict(app_kwargs or {}))
    base = application(constructor, name, input_shape, weights)
    plan = dilation_plan(base, output_stride)
    if strip_preprocessing:
        for layer_name in preprocessing_layer_names(base):
            plan[layer_name] = {"identity": True}
    for layer_name, extra in (overrides(base) if overrides else {}).items():
        plan[layer_name] = {**plan.get(layer_name, {}), **extra}
    net = clone_with_plan(base, plan)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    outputs = {endpoint_name(stride): resolve_endpoint(net, endpoints[stride]) for stride in STRIDES}
    return keras.Model(net.input, outputs, name=name)
