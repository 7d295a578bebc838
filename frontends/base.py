"""The frontend contract and its machinery.

A frontend maps an image to a dict of feature maps named by nominal stride,
``{"stride2": ..., "stride4": ..., "stride8": ..., "stride16": ..., "stride32": ...}``.
``stride{N}`` is the output of the last layer of the stage that downsamples by N;
with ``output_stride < 32`` the stages past ``output_stride`` keep that resolution
and use dilated (atrous) convolutions instead, so ``stride32`` then has the spatial
size of ``stride{output_stride}``.

Frontends reuse ``keras.applications`` networks, so ImageNet weights load by
layer name. Turning strides into dilation is done by cloning the network with
changed layer configs; every layer name and weight shape is kept, and the weights
are copied over by name.

Every batch norm of a frontend is the suite's fused ``BatchNormalization`` (the
clone replaces Keras' own; same config and weights, faster in training) and uses
the suite's momentum (``BN_MOMENTUM``, 0.9):
``keras.applications`` ships 0.99 (0.999 for MobileNetV2), whose moving statistics
lag the weights for the first hundreds to thousands of steps, so short fine-tuning
or from-scratch runs would evaluate with statistics that do not match the weights.
The momentum is a training setting only; pretrained statistics load unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Mapping

import keras

from semseg_suite.layers import BN_MOMENTUM, AtrousConv2D, BatchNormalization

STRIDES = (2, 4, 8, 16, 32)
OUTPUT_STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class FrontendSpec:
    """A registered frontend.

    Attributes:
        name: the registered name (``--frontend``).
        build: ``build(input_shape, weights, output_stride, multi_grid) -> keras.Model``.
        preprocessing: input normalisation the weights expect, a
            ``keras.applications.imagenet_utils.preprocess_input`` mode.
        supports_multi_grid: whether ``multi_grid`` (DeepLabV3's unit rates for the
            last stage) applies to this frontend.
    """

    name: str
    build: Callable[..., keras.Model]
    preprocessing: str
    supports_multi_grid: bool = False


class FrontendWeightsError(RuntimeError):
    """ImageNet weights could not be loaded (usually: offline, nothing cached)."""


def endpoint_name(stride: int) -> str:
    return f"stride{stride}"


def check_output_stride(output_stride) -> int:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}"
        )
    return int(output_stride)


def keras_cache_dir() -> str:
    """Where ``keras.utils.get_file`` caches downloaded weights."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")


def application(app_fn: Callable[..., keras.Model], name: str, input_shape, weights):
    """Builds a headless ``keras.applications`` network with the requested weights.

    Args:
        app_fn: e.g. ``keras.applications.ResNet50``.
        name: the frontend's registered name, for messages.
        input_shape: ``(H, W, 3)``, ``None`` dims allowed.
        weights: ``None``, ``"imagenet"`` or a path to a weights file.
    """
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise FileNotFoundError(f"{weights}: frontend weights file not found")
    try:
        with warnings.catch_warnings():
            # MobileNetV2 warns that sizes other than 96-224 px get 224-px weights:
            # true and harmless for a fully convolutional frontend.
            warnings.filterwarnings("ignore", message=".*Weights for input shape")
            return app_fn(include_top=False, weights=weights, input_shape=tuple(input_shape))
    except FrontendWeightsError:  # a hand-written backbone's own message
        raise
    except Exception as error:  # keras raises a bare Exception on a failed download
        if weights != "imagenet":
            raise
        raise FrontendWeightsError(
            f"Could not load ImageNet weights for {name}: {error}. Keras caches them "
            f"in {keras_cache_dir()} (set KERAS_HOME to move it); copy the file there, "
            "or skip pretrained weights with --frontend-weights none "
            "(frontend_weights=None in Python)."
        ) from None


def handwritten_inputs(name: str, weights, input_tensor, input_shape):
    """Checks ``weights`` and returns the input of a hand-written backbone.

    For backbones written here in the ``keras.applications`` style (ResNet18/34,
    DenseNet161), for which Keras publishes no ImageNet weights: ``"imagenet"``
    raises ``FrontendWeightsError`` (so ``weights="auto"`` falls back to random
    init), a missing weights file ``FileNotFoundError``.

    Args:
        name: the network's name, e.g. ``"ResNet18"``.
    """
    if weights == "imagenet":
        raise FrontendWeightsError(
            f"Keras publishes no ImageNet weights for {name}. Use --frontend-weights "
            f"timm:{name.lower()}.tv_in1k (downloaded and converted once), or convert a local "
            f"file with `python -m semseg_suite.weights convert model.safetensors --frontend {name} "
            f"--output {name.lower()}.weights.h5` and pass its path; or skip pretrained weights "
            "with --frontend-weights none (frontend_weights=None in Python)."
        )
    if weights is not None and not os.path.isfile(str(weights)):
        raise FileNotFoundError(f"{weights}: weights file not found")
    if input_tensor is not None:
        return input_tensor
    return keras.Input(input_shape or (None, None, 3))


def handwritten_model(
    name: str, inputs, x, *, weights, include_top, pooling, classes, classifier_activation
) -> keras.Model:
    """The ``keras.applications`` tail (classifier or pooling) and weight loading."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name.lower())
    if weights is not None:
        model.load_weights(weights)
    return model


def dilation_plan(
    model: keras.Model,
    output_stride: int,
    rate_multipliers: Mapping[str, int] | None = None,
) -> dict[str, dict]:
    """Config overrides that turn strides past ``output_stride`` into dilation.

    Walks the graph in topological order, tracking each layer's output stride and
    atrous rate. A strided layer that would take the stride past ``output_stride``
    gets stride 1 and multiplies the rate of everything after it; every later
    spatial convolution gets the current rate (times its ``rate_multipliers``
    entry: DeepLab's multi-grid). A strided layer keeps the rate it had before its
    own stride, as in the DeepLab code. Asymmetric ``ZeroPadding2D`` + valid conv
    pairs become same-padded convolutions (the padding layer an ``Identity`` of the
    same name) so sizes stay ``ceil(H / stride)``.

    Returns:
        layer name -> dict of config overrides; ``{"identity": True}`` marks a
        padding layer to replace.
    """
    rate_multipliers = dict(rate_multipliers or {})
    state: dict[str, tuple[int, int]] = {}  # layer name -> (stride, rate) of its output
    plan: dict[str, dict] = {}
    for layer in model.layers:
        parents = [node.operation for node in layer._inbound_nodes[0].parent_nodes]
        stride = max((state[p.name][0] for p in parents), default=1)
        rate = max((state[p.name][1] for p in parents), default=1)
        layer_stride = getattr(layer, "strides", (1, 1))[0]
        kernel = getattr(layer, "kernel_size", (1, 1))[0]
        overrides = {}
        if layer_stride > 1 and stride * layer_stride > output_stride:
            overrides["strides"] = (1, 1)
            conv_rate, rate = rate, rate * layer_stride
        else:
            conv_rate = rate
            stride *= layer_stride
        conv_rate *= rate_multipliers.get(layer.name, 1)
        if hasattr(layer, "dilation_rate") and kernel > 1 and conv_rate > 1:
            overrides["dilation_rate"] = (conv_rate, conv_rate)
        if overrides and getattr(layer, "padding", "same") == "valid":
            overrides["padding"] = "same"
            for parent in parents:
                if isinstance(parent, keras.layers.ZeroPadding2D):
                    plan[parent.name] = {"identity": True}
        if overrides:
            plan[layer.name] = overrides
        state[layer.name] = (stride, rate)
    return plan


def remade(layer: keras.layers.Layer, overrides: Mapping[str, object]) -> keras.layers.Layer:
    """A new ``layer`` from its config with ``overrides``, without its weights.

    Dense convolutions that end up dilated become ``AtrousConv2D`` (fast native
    dilated kernel on TensorFlow), Keras' own batch norms the suite's fused
    ``BatchNormalization``; both keep the config and the weights' names and shapes.
    """
    config = {**layer.get_config(), **overrides}
    cls = type(layer)
    if cls is keras.layers.Conv2D and max(config["dilation_rate"]) > 1:
        cls = AtrousConv2D
    elif cls is keras.layers.BatchNormalization:
        cls = BatchNormalization
    return cls.from_config(config)


def needs_clone(model: keras.Model, plan: Mapping[str, dict]) -> bool:
    """Whether cloning ``model`` changes it: a plan, or a Keras batch norm to replace."""
    return bool(plan) or any(type(layer) is keras.layers.BatchNormalization for layer in model.layers)


def clone_with_overrides(model: keras.Model, plan: Mapping[str, dict]) -> keras.Model:
    """Clones ``model`` with per-layer config overrides (``remade``) and copies its
    weights, so ImageNet weights loaded into ``model`` land in the clone."""
    if not needs_clone(model, plan):
        return model

    def clone_layer(layer):
        overrides = dict(plan.get(layer.name, {}))
        if overrides.pop("identity", False):
            return keras.layers.Identity(name=layer.name)
        return remade(layer, overrides)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in model.layers:
        if layer.weights:
            clone.get_layer(layer.name).set_weights(layer.get_weights())
    return clone


def build_frontend_model(
    app_fn: Callable[..., keras.Model],
    name: str,
    endpoints: Mapping[int, str],
    *,
    input_shape=(None, None, 3),
    weights=None,
    output_stride: int = 32,
    rate_multipliers: Mapping[str, int] | None = None,
    extra_overrides: Mapping[str, dict] | None = None,
) -> keras.Model:
    """The shared recipe: application -> dilation clone -> stride-named endpoints.

    Args:
        app_fn: the ``keras.applications`` constructor.
        name: the registered frontend name (also the model's name).
        endpoints: nominal stride -> layer name, one entry per stride in ``STRIDES``.
        input_shape: ``(H, W, 3)``; ``None`` dims for any size.
        weights: ``None``, ``"imagenet"`` or a weights file path.
        output_stride: 8, 16 or 32.
        rate_multipliers: layer name -> multi-grid factor on its atrous rate.
        extra_overrides: layer name -> config overrides applied in the same clone.
    """
    output_stride = check_output_stride(output_stride)
    base = application(app_fn, name, input_shape, weights)
    plan = dilation_plan(base, output_stride, rate_multipliers)
    for layer_name, overrides in (extra_overrides or {}).items():
        plan[layer_name] = {**plan.get(layer_name, {}), **overrides}
    net = clone_with_overrides(base, plan)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    outputs = {
        endpoint_name(stride): net.get_layer(endpoints[stride]).output for stride in STRIDES
    }
    return keras.Model(net.input, outputs, name=name)
