"""The builder contract and the model registry.

A builder is ``build(frontend, num_classes, *, output_stride, **hyperparameters)``:
it takes a frontend ``keras.Model`` (image -> stride-named feature maps) and returns
a ``keras.Model`` from the same input to float32 logits of shape
``(batch, H, W, num_classes)``. Builders wire layers onto the frontend's own graph,
so the result is one flat functional model whose layer names read like
``conv4_block6_out`` and ``aspp_projection_conv``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from semseg_suite.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Attributes:
        name: the registered name (``--model``).
        build: the builder function.
        default_frontend: frontend used when none is given.
        default_output_stride: output stride used when none is given.
        multi_grid: last-stage unit rates asked of frontends that support them.
    """

    name: str
    build: Callable[..., keras.Model]
    default_frontend: str
    default_output_stride: int = 32
    multi_grid: tuple[int, ...] | None = None


MODELS: Registry[ModelSpec] = Registry("model")


def register(name: str, *, default_frontend: str, default_output_stride: int = 32, multi_grid=None):
    """Decorator registering a builder function under ``name``."""

    def decorator(build):
        MODELS.add(
            name,
            ModelSpec(name, build, default_frontend, default_output_stride, multi_grid),
        )
        return build

    return decorator


def frontend_features(frontend: keras.Model) -> dict:
    """The frontend's endpoint tensors, keyed ``stride2`` ... ``stride32``."""
    return dict(frontend.output)
