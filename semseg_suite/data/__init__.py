"""Segmentation datasets: formats on disk and in TFDS, checks, tf.data pipelines.

`open_dataset(spec)` reads any supported format into a `DatasetInfo` (see
`semseg_suite.data.formats` for the list); `load_dataset` reads the suite's own two
folder layouts. Both check the whole dataset before training starts and raise
`DatasetError` naming the offending file. `make_train_dataset` and
`make_eval_dataset` build the tf.data pipelines; ``python -m semseg_suite.data
check DATASET`` is the dataset doctor.
"""

from semseg_suite.data.augment import AugmentConfig
from semseg_suite.data.core import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    PREPROCESSING_MODES,
    SPLITS,
    VOID_NAMES,
    DatasetError,
    DatasetInfo,
    check_crop,
    decode_label_file,
    describe,
    preprocess_image,
    valid_pixels,
)
from semseg_suite.data.folders import load_dataset
from semseg_suite.data.formats import open_dataset
from semseg_suite.data.pipeline import make_eval_dataset, make_train_dataset

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "PREPROCESSING_MODES",
    "SPLITS",
    "VOID_NAMES",
    "AugmentConfig",
    "DatasetError",
    "DatasetInfo",
    "check_crop",
    "decode_label_file",
    "describe",
    "load_dataset",
    "make_eval_dataset",
    "make_train_dataset",
    "open_dataset",
    "preprocess_image",
    "valid_pixels",
]
