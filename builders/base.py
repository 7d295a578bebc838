"""The builder contract and the model registry.

A builder is ``build(frontend, num_classes, *, output_stride, **hyperparameters)``:
it takes a frontend ``keras.Model`` (image -> stride-named feature maps) and returns
a ``keras.Model`` from the same input to float32 logits of shape
``(batch, H, W, num_classes)``. Builders wire layers onto the frontend's own graph,
so the result is one flat functional model whose layer names read like
``conv4_block6_out`` and ``aspp_projection_conv``.

Architectures that define their own encoder (U-Net, SegNet, ENet, FC-DenseNet, ...)
register with ``default_frontend=None``. Their builder is called as
``build(None, num_classes, *, input_shape, **hyperparameters)`` and builds the
whole network on ``keras.Input(input_shape)``; it takes no ``output_stride``. If
such a builder also accepts a frontend (``takes_frontend=True``, e.g. U-Net on a
ResNet), it is called as above when the user names one.

Auxiliary heads (deep supervision, e.g. PSPNet's on the stride-16 stage): such a
builder returns a *training* model whose output is a dict
``{"logits": main, "<aux name>": aux, ...}``, every entry float32 logits at the
input's size (or, for heads trained on targets the training step derives from the
label map, (B, C) class-presence logits, EncNet's "se", or a (B, H, W, 1) border
map, DFN's; see `semseg_suite.losses.weighted_heads_loss`), and registers each
auxiliary output's loss weight from its paper
(``register(..., aux_loss_weights={"aux": 0.4})``; the main output weighs 1). The
training loop adds the weighted losses; ``build_model`` returns the inference model
(main logits only, ``semseg_suite.export.inference_model``) unless asked for
``auxiliary=True``, and saved ``best`` checkpoints, ``.h5`` files, ``test.py`` and
``predict.py`` use the main logits only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

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
    default_frontend: str | None
    default_output_stride: int | None = 32
    multi_grid: tuple[int, ...] | None = None
    takes_frontend: bool = True
    paper_params: "PaperParams | None" = None
    aux_loss_weights: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class PaperParams:
    """The parameter count a paper reports, and the configuration it counts.

    ``docs/MODELS.md`` and the tests build the model in this configuration and
    compare its parameter count with ``params``.

    Attributes:
        params: the reported count (e.g. ``29.5e6``).
        source: where it is reported, e.g. ``"Badrinarayanan et al. 2017, Table 6"``.
        num_classes: the classes of the reported configuration.
        frontend: the frontend of that configuration (``None``: the model's own).
        input_channels: image channels of that configuration.
        hyperparameters: builder arguments of that configuration.
        tolerance: allowed relative difference (5%).
        note: why ours differs, when it differs by more than ``tolerance``.
    """

    params: float
    source: str
    num_classes: int
    frontend: str | None = None
    input_channels: int = 3
    hyperparameters: tuple[tuple[str, object], ...] = ()
    tolerance: float = 0.05
    note: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def register(
    name: str,
    *,
    default_frontend: str | None,
    default_output_stride: int | None = 32,
    multi_grid=None,
    takes_frontend: bool = True,
    paper_params: PaperParams | None = None,
    aux_loss_weights: Mapping[str, float] | None = None,
):
    """Decorator registering a builder function under ``name``.

    Args:
        name: the ``--model`` name.
        default_frontend: frontend used when none is given; ``None`` when the
            architecture has its own encoder.
        default_output_stride: frontend output stride used when none is given
            (``None`` for models without a frontend).
        multi_grid: last-stage unit rates asked of frontends that support them.
        takes_frontend: whether a frontend may be given at all (``False`` for
            models whose encoder is part of the architecture, e.g. ENet).
        paper_params: the parameter count the paper reports, if it does.
        aux_loss_weights: auxiliary output name -> loss weight, for builders
            that return auxiliary logits (see the module docstring).
    """
    if default_frontend is None:
        default_output_stride = None

    def decorator(build):
        MODELS.add(
            name,
            ModelSpec(
                name,
                build,
                default_frontend,
                default_output_stride,
                multi_grid,
                takes_frontend,
                paper_params,
                tuple((aux_loss_weights or {}).items()),
            ),
        )
        return build

    return decorator


def frontend_features(frontend: keras.Model) -> dict:
    """The frontend's endpoint tensors, keyed ``stride2`` ... ``stride32``."""
    return dict(frontend.output)
