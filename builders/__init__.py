"""Architectures ("builders"), one module each, and the model registry.

Importing this package registers every builder in ``MODELS``.
"""

from builders import deeplabv3, deeplabv3_plus  # noqa: F401  (registers the builders)
from builders.base import MODELS, ModelSpec, register

__all__ = ["MODELS", "ModelSpec", "register"]
