"""Checkpoints: a Keras model plus the metadata needed to reuse it.

A checkpoint is one self-contained file: ``.keras`` (weights, architecture and
optimizer state: what training resumes from) or ``.h5`` (architecture and weights,
for reuse anywhere Keras runs; a legacy ``.h5`` cannot restore Keras 3 optimizer
state). Both carry a JSON metadata record (model, frontend, classes, colours, input
normalisation, training progress): inside the ``.keras`` zip as
``semseg_suite.json``, and as a root attribute of the ``.h5`` file. Keras ignores
both, so ``keras.models.load_model`` reads the files as usual after
``import semseg_suite``.

Files are written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash never leaves a half-written checkpoint. Since files are
only ever replaced, never changed in place, ``copy_checkpoint`` can hard-link a
just-written ``latest`` as ``best`` instead of serialising the model again.

``fold_batch_norm`` (from ``folding``, imported here) turns a checkpoint's model into
an equal inference model with each conv+BN pair folded into the conv; `Segmenter`
(so test.py and predict.py) and the serving graph of every exporter run that model.

Deployment lives in the submodules, imported on demand (they need more of
TensorFlow, and ONNX needs ``requirements-export.txt``): ``serving`` (the uint8-in,
class-ids-out serving graph, with tiling and test-time augmentation inside),
``formats`` (SavedModel, TFLite float/fp16/int8 and ONNX writers), ``runtime``
(``runtime.load(path).predict(image)``) and ``python -m semseg_suite.export`` (the CLI).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import zipfile

import h5py
import keras

import semseg_suite  # noqa: F401  (registers custom layers for loading)
from semseg_suite.export.folding import fold_batch_norm  # noqa: F401  (re-exported)

METADATA_NAME = "semseg_suite.json"
METADATA_ATTR = "semseg_suite"
FORMATS = (".keras", ".h5")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or carries no metadata."""


MAIN_OUTPUT = "logits"


def inference_model(model: keras.Model) -> keras.Model:
    """The model restricted to its main logits.

    A model built for training with auxiliary heads (see ``builders.base``) outputs
    a dict ``{"logits": main, "<aux name>": ...}``; this returns a model over the
    same layers (no copy) whose only output is the main logits, which is what
    ``best`` checkpoints, ``.h5`` files, ``test.py`` and ``predict.py`` use. Other
    models are returned unchanged.
    """
    if not isinstance(model.output, dict):
        return model
    return keras.Model(model.input, model.output[MAIN_OUTPUT], name=model.name)


def save_checkpoint(model: keras.Model, path, metadata: dict) -> pathlib.Path:
    """Atomically writes ``model`` with ``metadata`` to ``path`` (.keras or .h5)."""
    path = pathlib.Path(path)
    if path.suffix not in FORMATS:
        raise CheckpointError(f"{path}: checkpoint must end in .keras or .h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    text = json.dumps(metadata, sort_keys=True)
    try:
        if path.suffix == ".keras":
            model.save(partial)
            with zipfile.ZipFile(partial, "a") as archive:
                archive.writestr(METADATA_NAME, text)
        else:
            with _quiet_legacy_h5_warning():
                model.save(partial, include_optimizer=False)
            with h5py.File(partial, "a") as file:
                file.attrs[METADATA_ATTR] = text
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def copy_checkpoint(source, destination) -> pathlib.Path:
    """Atomically makes ``destination`` a copy of ``source`` (a hard link where possible)."""
    source, destination = pathlib.Path(source), pathlib.Path(destination)
    partial = destination.with_name(f"{destination.stem}.partial{destination.suffix}")
    partial.unlink(missing_ok=True)
    try:
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_legacy_h5_warning():
    """Keras warns on every ``.h5`` save that the format is legacy; we write it on purpose."""
    logger = logging.getLogger("absl")
    quiet = _DropMessage("saving your model as an HDF5 file")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def read_metadata(path) -> dict:
    """The metadata record of a checkpoint, without loading the model."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read(METADATA_NAME))
        if path.suffix == ".h5":
            with h5py.File(path, "r") as file:
                return json.loads(file.attrs[METADATA_ATTR])
    except (KeyError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path}: not a semseg-suite checkpoint or corrupt ({type(error).__name__}: {error})"
        ) from None
    raise CheckpointError(f"{path}: checkpoint must end in .keras or .h5")


def load_checkpoint(path, *, compile: bool = False) -> tuple[keras.Model, dict]:
    """Loads a checkpoint's model and metadata.

    Args:
        path: a ``.keras`` or ``.h5`` file written by ``save_checkpoint``.
        compile: restore the optimizer (``.keras`` only), for resuming training.
    """
    metadata = read_metadata(path)
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # keras raises assorted types for unreadable files
        raise CheckpointError(f"{path}: cannot load the model ({error})") from error
    return model, metadata
