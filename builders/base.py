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

Training recipes: a builder registers what its paper says about training as
``Recipe`` entries (``register(..., recipes={"paper": Recipe(...)})``);
``train.py --recipe paper`` applies them (`semseg_suite.recipes`).
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
        takes_frontend: whether a frontend may be given at all.
        paper_params: the parameter count the paper reports, if it does.
        aux_loss_weights: auxiliary output name -> loss weight.
        recipes: recipe name (``--recipe``) -> the training recipe.
    """

    name: str
    build: Callable[..., keras.Model]
    default_frontend: str | None
    default_output_stride: int | None = 32
    multi_grid: tuple[int, ...] | None = None
    takes_frontend: bool = True
    paper_params: "PaperParams | None" = None
    aux_loss_weights: tuple[tuple[str, float], ...] = ()
    recipes: tuple[tuple[str, "Recipe"], ...] = ()


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


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published training recipe: only the settings its paper states.

    Every setting is named as the ``TrainConfig`` (``semseg_suite.training``) or
    ``AugmentConfig`` (``semseg_suite.data``) field it sets, and ``None`` means
    "the paper does not say": the run keeps its own value for it. A learning rate
    is for the suite's loss, the mean over valid pixels.

    Attributes:
        source: where the paper states it, e.g. ``"Jégou et al. 2017, Sec. 4"``.
        note: what the paper does that the suite cannot, and what we interpreted.
        optimizer: ``sgd``, ``adam``, ``adamw`` or ``rmsprop``.
        learning_rate: the initial (peak) rate.
        momentum: SGD's momentum.
        lr_schedule: ``poly`` (power 0.9), ``cosine``, ``step`` or ``constant``.
        lr_step_epochs: ``step``: epochs between decays (1: a decay per epoch).
        lr_step_factor: ``step``: the factor of each decay.
        weight_decay: the paper's weight decay (the suite applies it decoupled,
            see `semseg_suite.recipes`).
        batch_size: images per update.
        crop_height: training crop height.
        crop_width: training crop width.
        num_epochs: epochs of the run.
        iterations: updates of the run, when the paper counts those: converted to
            epochs of the user's training split once its size is known.
        patience: early-stopping patience in epochs.
        loss: the loss (``semseg_suite.losses`` names).
        class_weights: ``median-frequency`` or ``enet``.
        scale_range: (min, max) of the random rescale.
        h_flip: random left-right flips.
        v_flip: random up-down flips.
        rotation: maximum random rotation in degrees.
        blur_prob: probability of a random Gaussian blur.
    """

    source: str
    note: str = ""
    optimizer: str | None = None
    learning_rate: float | None = None
    momentum: float | None = None
    lr_schedule: str | None = None
    lr_step_epochs: float | None = None
    lr_step_factor: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    crop_height: int | None = None
    crop_width: int | None = None
    num_epochs: int | None = None
    iterations: int | None = None
    patience: int | None = None
    loss: str | None = None
    class_weights: str | None = None
    scale_range: tuple[float, float] | None = None
    h_flip: bool | None = None
    v_flip: bool | None = None
    rotation: float | None = None
    blur_prob: float | None = None

    def settings(self) -> dict:
        """The settings the paper states, by field name, in declaration order."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("source", "note") and getattr(self, field.name) is not None
        }


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
    recipes: Mapping[str, Recipe] | None = None,
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
        recipes: recipe name -> the training recipe its paper gives
            (``"paper"``), for ``train.py --recipe``.
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
                tuple((recipes or {}).items()),
            ),
        )
        return build

    return decorator


def frontend_features(frontend: keras.Model) -> dict:
    """The frontend's endpoint tensors, keyed ``stride2`` ... ``stride32``."""
    return dict(frontend.output)
