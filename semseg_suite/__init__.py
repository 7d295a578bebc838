"""semseg-suite: semantic segmentation models, training and evaluation for Keras 3.

Importing the package registers its custom layers and schedules with Keras, so saved
``.keras`` and ``.h5`` models load with ``keras.models.load_model``.
"""

from semseg_suite import layers  # noqa: F401  (registers the custom layers first)
from semseg_suite import optim  # noqa: F401  (registers the learning-rate schedules)
from semseg_suite.models import (
    build_model,
    default_frontend,
    list_frontends,
    list_models,
    preprocessing_mode,
)

__version__ = "0.1.0"

__all__ = [
    "build_model",
    "default_frontend",
    "list_frontends",
    "list_models",
    "preprocessing_mode",
]
