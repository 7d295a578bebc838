"""The library entry point: build any registered model on any registered frontend."""

from __future__ import annotations

import keras

import builders
import frontends
from semseg_suite import export


def list_models() -> list[str]:
    """Registered architecture names (``--model`` choices)."""
    return builders.MODELS.names()


def list_frontends() -> list[str]:
    """Registered frontend names (``--frontend`` choices)."""
    return frontends.FRONTENDS.names()


def default_frontend(model: str) -> str | None:
    """The model's default frontend; ``None`` when it has its own encoder."""
    return builders.MODELS.get(model).default_frontend


def loss_weights(model: str) -> dict[str, float]:
    """Loss weight of each output of the model's training graph: ``{"logits": 1.0}``
    plus its auxiliary heads' weights from the paper."""
    return {export.MAIN_OUTPUT: 1.0, **dict(builders.MODELS.get(model).aux_loss_weights)}


def default_output_stride(model: str, frontend: str | None = None) -> int | None:
    """The model's frontend output stride, ``None`` when it runs without a frontend.

    A model whose default is its own encoder but which takes a frontend (U-Net)
    runs that frontend at output stride 32.
    """
    spec = builders.MODELS.get(model)
    if frontend is None and spec.default_frontend is None:
        return None
    return spec.default_output_stride or 32


# Models with their own encoder are trained from scratch on inputs scaled to [-1, 1].
OWN_ENCODER_PREPROCESSING = "tf"


def preprocessing_mode(frontend: str | None) -> str:
    """The input normalisation a frontend expects (a ``preprocess_input`` mode).

    ``None`` (a model with its own encoder) gets ``OWN_ENCODER_PREPROCESSING``.
    """
    if frontend is None:
        return OWN_ENCODER_PREPROCESSING
    return frontends.FRONTENDS.get(frontend).preprocessing


def build_model(
    model: str,
    frontend: str | None = None,
    *,
    num_classes: int,
    input_shape=(None, None, 3),
    output_stride: int | None = None,
    frontend_weights=None,
    auxiliary: bool = False,
    **hyperparameters,
) -> keras.Model:
    """Builds a segmentation model.

    Args:
        model: a registered architecture, e.g. ``"DeepLabV3_plus"``.
        frontend: a registered frontend, or ``None`` for the model's default
            (which is the model's own encoder for U-Net, SegNet, ENet, ...).
        num_classes: number of output classes.
        input_shape: ``(H, W, C)``; ``None`` dims accept any size. Frontends take
            ``C == 3``; models with their own encoder take any ``C``.
        output_stride: 8, 16 or 32, or ``None`` for the model's default; only for
            models on a frontend.
        frontend_weights: ``None``, ``"imagenet"``, ``"auto"``, a weights path, or
            ``"timm:NAME"`` / ``"keras-hub:PRESET"`` (converted once; see
            ``semseg_suite.weights``); ignored (except ``"imagenet"``, a path or a
            hub name, an error) without a frontend.
        auxiliary: for models with auxiliary heads (see ``loss_weights``), return
            the training model whose output is a dict ``{"logits": main,
            "<aux name>": ...}``; by default only the main logits.
        **hyperparameters: forwarded to the builder (see its docstring).

    Returns:
        A ``keras.Model`` from normalised images (see ``preprocessing_mode``) to
        float32 logits of shape ``(batch, H, W, num_classes)`` (or the dict above).
    """
    spec = builders.MODELS.get(model)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if frontend is not None and not spec.takes_frontend:
        raise ValueError(f"{model} has its own encoder and takes no frontend (got {frontend!r})")
    frontend = frontend or spec.default_frontend
    if frontend is None:
        if output_stride is not None:
            raise ValueError(f"{model} has its own encoder: output_stride applies only to frontends")
        if frontend_weights not in (None, "none", "auto"):
            raise ValueError(
                f"{model} has its own encoder, which has no pretrained weights "
                f"(got frontend_weights={frontend_weights!r}); use none or auto"
            )
        net = spec.build(None, num_classes, input_shape=tuple(input_shape), **hyperparameters)
        net.name = model
        return _select_outputs(net, spec, auxiliary)
    output_stride = output_stride or default_output_stride(model, frontend)
    backbone = frontends.build_frontend(
        frontend,
        input_shape=input_shape,
        weights=frontend_weights,
        output_stride=output_stride,
        multi_grid=spec.multi_grid,
    )
    net = spec.build(backbone, num_classes, output_stride=output_stride, **hyperparameters)
    net.name = f"{model}_{frontend}"
    return _select_outputs(net, spec, auxiliary)


def _select_outputs(net: keras.Model, spec, auxiliary: bool) -> keras.Model:
    """Checks the builder's outputs against the registry; drops auxiliary heads
    unless ``auxiliary``."""
    expected = {export.MAIN_OUTPUT, *dict(spec.aux_loss_weights)}
    names = set(net.output) if isinstance(net.output, dict) else {export.MAIN_OUTPUT}
    if names != expected:
        raise RuntimeError(
            f"{spec.name}: builder outputs {sorted(names)} but the registry declares {sorted(expected)}"
        )
    return net if auxiliary else export.inference_model(net)
