"""The library entry point: build any registered model on any registered frontend."""

from __future__ import annotations

import keras

import builders
import frontends


def list_models() -> list[str]:
    """Registered architecture names (``--model`` choices)."""
    return builders.MODELS.names()


def list_frontends() -> list[str]:
    """Registered frontend names (``--frontend`` choices)."""
    return frontends.FRONTENDS.names()


def default_frontend(model: str) -> str:
    return builders.MODELS.get(model).default_frontend


def default_output_stride(model: str) -> int:
    return builders.MODELS.get(model).default_output_stride


def preprocessing_mode(frontend: str) -> str:
    """The input normalisation a frontend expects (a ``preprocess_input`` mode)."""
    return frontends.FRONTENDS.get(frontend).preprocessing


def build_model(
    model: str,
    frontend: str | None = None,
    *,
    num_classes: int,
    input_shape=(None, None, 3),
    output_stride: int | None = None,
    frontend_weights=None,
    **hyperparameters,
) -> keras.Model:
    """Builds a segmentation model.

    Args:
        model: a registered architecture, e.g. ``"DeepLabV3_plus"``.
        frontend: a registered frontend, or ``None`` for the model's default.
        num_classes: number of output classes.
        input_shape: ``(H, W, 3)``; ``None`` dims accept any size.
        output_stride: 8, 16 or 32, or ``None`` for the model's default.
        frontend_weights: ``None``, ``"imagenet"``, ``"auto"`` or a weights path.
        **hyperparameters: forwarded to the builder (see its docstring).

    Returns:
        A ``keras.Model`` from normalised images (see ``preprocessing_mode``) to
        float32 logits of shape ``(batch, H, W, num_classes)``.
    """
    spec = builders.MODELS.get(model)
    frontend = frontend or spec.default_frontend
    output_stride = output_stride or spec.default_output_stride
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    backbone = frontends.build_frontend(
        frontend,
        input_shape=input_shape,
        weights=frontend_weights,
        output_stride=output_stride,
        multi_grid=spec.multi_grid,
    )
    net = spec.build(backbone, num_classes, output_stride=output_stride, **hyperparameters)
    net.name = f"{model}_{frontend}"
    return net
