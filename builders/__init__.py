"""Architectures ("builders"), one module each, and the model registry.

Importing this package imports every module in it, which registers each builder in
``MODELS``.
"""

import importlib
import pkgutil

from builders.base import MODELS, ModelSpec, PaperParams, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "ModelSpec", "PaperParams", "register"]
