"""Papers' training recipes as presets: ``train.py --recipe paper``, ``--list-recipes``.

Each builder registers the recipe its paper gives (``builders.base.Recipe``:
optimiser, learning rate and schedule, weight decay, batch, crop, length,
augmentation, class weighting), with the section it comes from. `apply_recipe`
fills a run's settings from it, except those the user chose: a field counts as
the user's when it is in ``TrainConfig.explicit`` (train.py puts every flag given
on the command line there) or differs from its default. What the recipe does not
state keeps the suite's defaults.

Two things differ from the papers' frameworks for every recipe:

- Weight decay: Caffe, Torch and Lasagne add ``weight_decay * w`` to the gradient
  (L2); the suite decays kernels directly (`semseg_suite.optim`), with the
  paper's number. The two agree for plain SGD; with momentum ``m`` the L2 form
  decays about ``1 / (1 - m)`` times more (10x at 0.9), and with Adam or RMSProp
  it is divided by the gradient scale as well.
- Per-layer learning-rate multipliers (DeepLab's 10x for the classifier) do not
  exist here: the whole network trains at the recipe's rate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import textwrap

import builders
from builders.base import Recipe

log = logging.getLogger("semseg_suite")

PAPER = "paper"

# How --list-recipes shows each setting: the train.py flag it equals.
_FLAGS = {
    "optimizer": "--optimizer", "learning_rate": "--learning-rate", "momentum": "--momentum",
    "lr_schedule": "--lr-schedule", "lr_step_epochs": "--lr-step-epochs", "lr_step_factor": "--lr-step-factor",
    "weight_decay": "--weight-decay", "batch_size": "--batch-size", "crop_height": "--crop-height",
    "crop_width": "--crop-width", "num_epochs": "--num-epochs", "patience": "--patience", "loss": "--loss",
    "class_weights": "--class-weights", "h_flip": "--h-flip", "v_flip": "--v-flip", "rotation": "--rotation",
    "blur_prob": "--blur-prob",
}


class RecipeError(ValueError):
    """The model has no recipe of that name (the message lists those that do)."""


def model_recipes(model: str) -> dict[str, Recipe]:
    """The recipes registered with ``model``, by name."""
    return dict(builders.MODELS.get(model).recipes)


def models_with_recipe(name: str = PAPER) -> list[str]:
    """The registered models that have a recipe called ``name``."""
    return [model for model in builders.MODELS.names() if name in model_recipes(model)]


def get_recipe(model: str, name: str = PAPER) -> Recipe:
    """The recipe ``name`` of ``model``.

    Raises:
        RecipeError: the model has no such recipe; the message lists the model's
            recipes, or the models with a recipe of that name.
    """
    recipes = model_recipes(model)
    if name in recipes:
        return recipes[name]
    if recipes:
        raise RecipeError(f"{model} has no recipe {name!r}; its recipes: {', '.join(recipes)}")
    having = models_with_recipe(name)
    which = f"models with a {name!r} recipe: {', '.join(having)}" if having else f"no model has a {name!r} recipe"
    raise RecipeError(f"{model} has no training recipe {name!r} (its paper gives none we could use); {which}")


def _users(config, name: str, default) -> bool:
    """Whether the user chose field ``name`` (given explicitly, or not its default)."""
    holder = config.augment if hasattr(config.augment, name) else config
    return name in config.explicit or getattr(holder, name) != getattr(default, name)


def apply_recipe(config):
    """Fills the settings of ``config.recipe`` that the user did not choose.

    Args:
        config: a ``semseg_suite.training.TrainConfig``; ``config.recipe`` may be
            ``None`` (nothing to apply).

    Returns:
        ``(config, applied)``: the updated config and the settings taken from the
        recipe, by field name. ``iterations`` is in ``applied`` (not in the
        config) when the recipe counts updates and the user gave no epoch count:
        `epochs_for` turns it into epochs once the training split is known.

    Raises:
        RecipeError: the model has no such recipe.
    """
    if config.recipe is None:
        return config, {}
    recipe = get_recipe(config.model, config.recipe)
    train_default, augment_default = type(config)(), type(config.augment)()
    applied, kept, train_values, augment_values = {}, [], {}, {}
    for name, value in recipe.settings().items():
        owner = "num_epochs" if name == "iterations" else name
        if _users(config, owner, augment_default if hasattr(augment_default, owner) else train_default):
            kept.append(name)
            continue
        applied[name] = value
        if name == "iterations":
            continue
        (augment_values if hasattr(augment_default, name) else train_values)[name] = value
    if "num_epochs" in applied:  # an epoch count in the recipe wins over its iterations
        applied.pop("iterations", None)
    config = dataclasses.replace(
        config, augment=dataclasses.replace(config.augment, **augment_values), **train_values
    )
    log.info("Recipe %r of %s (%s): %s", config.recipe, config.model, recipe.source,
             format_settings(applied) or "nothing (every setting given on the command line)")
    if kept:
        log.info("Recipe %r: kept your %s", config.recipe, ", ".join(kept))
    if recipe.note:
        log.info("Recipe %r note: %s", config.recipe, recipe.note)
    return config, applied


def epochs_for(iterations: int, steps_per_epoch: int) -> int:
    """Epochs of ``steps_per_epoch`` updates that make at least ``iterations`` updates."""
    return max(1, math.ceil(iterations / max(steps_per_epoch, 1)))


def _setting_parts(settings: dict) -> list[str]:
    """Each setting as the train.py flag it equals; an iteration count last."""
    parts = []
    for name, value in settings.items():
        if name == "scale_range":
            parts.append(f"--scale-min {value[0]:g} --scale-max {value[1]:g}")
        elif name == "iterations":
            continue
        elif isinstance(value, bool):
            parts.append(f"{_FLAGS[name]} {'on' if value else 'off'}")
        elif isinstance(value, float):
            parts.append(f"{_FLAGS[name]} {value:g}")
        else:
            parts.append(f"{_FLAGS[name]} {value}")
    if "iterations" in settings:
        parts.append(f"({settings['iterations']} iterations, as epochs of the training split)")
    return parts


def format_settings(settings: dict) -> str:
    """Settings as the train.py flags they equal (``--optimizer sgd ...``)."""
    return " ".join(_setting_parts(settings))


def _wrap_parts(parts: list[str], width: int, indent: str) -> list[str]:
    """Greedy lines of whole parts, so that no flag is parted from its value."""
    lines, line = [], indent
    for part in parts:
        if line.strip() and len(line) + 1 + len(part) > width:
            lines.append(line)
            line = indent
        line += (" " if line.strip() else "") + part
    return lines + [line] if line.strip() else lines


def recipes_table(width: int = 100) -> str:
    """Every registered recipe: model, recipe name and source on one line, then
    its settings (as train.py flags) and its note, indented."""
    header = (
        "Training recipes (train.py --model MODEL --recipe NAME): each setting as the flag it equals; flags given "
        "on the command line win. Weight decay is the paper's number, applied decoupled (see semseg_suite.recipes)."
    )
    lines = [*textwrap.wrap(header, width), ""]
    for model in builders.MODELS.names():
        for name, recipe in model_recipes(model).items():
            lines.append(f"{model}  [{name}]  {recipe.source}")
            lines += _wrap_parts(_setting_parts(recipe.settings()), width, " " * 4)
            if recipe.note:
                lines += textwrap.wrap(recipe.note, width, initial_indent=" " * 4 + "note: ",
                                       subsequent_indent=" " * 10, break_on_hyphens=False)
    return "\n".join(lines)
