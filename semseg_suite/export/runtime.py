"""Running an exported model: ``load(path).predict(image_rgb)``.

The format is inferred from the path (``.tflite``, ``.onnx``, or a SavedModel
folder) unless given. ``predict.py --format`` uses this, so a user can check the
deployed file itself on their own images.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings

import numpy as np

from semseg_suite.export import formats
from semseg_suite.export.formats import ExportError
from semseg_suite.export.serving import IDS

RUNTIME_FORMATS = ("savedmodel", "tflite", "onnx")


def infer_format(path) -> str:
    path = pathlib.Path(path)
    if path.suffix == ".tflite":
        return "tflite"
    if path.suffix == ".onnx":
        return "onnx"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "savedmodel"
    if not path.exists():
        raise ExportError(f"{path}: exported model not found")
    raise ExportError(f"{path}: not an exported model (expected a .tflite, a .onnx or a SavedModel folder)")


class ExportedModel:
    """An exported model plus its metadata.

    Attributes:
        path: the file or folder.
        format: ``"savedmodel"``, ``"tflite"`` or ``"onnx"``.
        metadata: the JSON record stored with it (`serving.serving_metadata`).
        class_names: names of the classes, by id.
        colors: RGB colour of each class.
    """

    def __init__(self, path, fmt: str, metadata: dict):
        self.path = pathlib.Path(path)
        self.format = fmt
        self.metadata = metadata
        self.class_names = list(metadata.get("class_names", []))
        self.colors = [tuple(c) for c in metadata.get("colors", [])]

    def outputs(self, image_rgb: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model (``class_ids`` and, if exported, ``probabilities``
        or ``logits``) for one uint8 RGB image ``(H, W, 3)``, without the batch axis."""
        image = np.asarray(image_rgb)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        return {name: value[0] for name, value in self._run(image[np.newaxis]).items()}

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """Class ids ``(H, W)`` int32 of one uint8 RGB image."""
        return self.outputs(image_rgb)[IDS].astype(np.int32)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _SavedModel(ExportedModel):
    def __init__(self, path):
        import tensorflow as tf

        path = pathlib.Path(path)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:
            raise ExportError(f"{path}: cannot load the SavedModel ({type(error).__name__})") from error
        self._loaded = loaded  # keeps the variables alive
        self._serve = loaded.signatures["serving_default"]
        asset = path / "assets" / formats.ASSET_NAME
        if asset.is_file():
            metadata = json.loads(asset.read_text())
        else:
            metadata = json.loads(loaded.signatures["metadata"]()["metadata"].numpy().decode())
        super().__init__(path, "savedmodel", metadata)

    def _run(self, batch):
        return {name: value.numpy() for name, value in self._serve(image=batch).items()}


class _TFLite(ExportedModel):
    def __init__(self, path):
        import tensorflow as tf

        path = pathlib.Path(path)
        try:
            content = path.read_bytes()
            with warnings.catch_warnings():  # its deprecation notice for ai_edge_litert, a package we do not need
                warnings.simplefilter("ignore", UserWarning)
                self._interpreter = tf.lite.Interpreter(model_content=content, num_threads=os.cpu_count())
        except (OSError, ValueError, RuntimeError) as error:
            raise ExportError(f"{path}: cannot load the TFLite model ({error})") from None
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = self._interpreter.get_output_details()
        self._shape = None
        super().__init__(path, "tflite", read_tflite_metadata(content, path))
        self._names = _tflite_output_names(self._interpreter, self._outputs)

    def _run(self, batch):
        results = []
        for image in batch:  # TFLite models take a batch of 1
            if self._shape != image.shape:
                self._interpreter.resize_tensor_input(self._input["index"], (1, *image.shape))
                self._interpreter.allocate_tensors()
                self._shape = image.shape
            self._interpreter.set_tensor(self._input["index"], image[np.newaxis])
            self._interpreter.invoke()
            results.append({name: self._interpreter.get_tensor(detail["index"])
                            for name, detail in zip(self._names, self._outputs)})
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


def _tflite_output_names(interpreter, outputs) -> list[str]:
    """The serving output names (``class_ids``, ...) of the interpreter's output tensors."""
    signatures = interpreter._get_full_signature_list()  # {"serving_default": {"outputs": {name: index}}}
    for signature in signatures.values():
        by_index = {index: name for name, index in signature.get("outputs", {}).items()}
        if all(detail["index"] in by_index for detail in outputs):
            return [by_index[detail["index"]] for detail in outputs]
    # No signature: ids are the only int32 output.
    return [IDS if detail["dtype"] == np.int32 else f"output_{i}" for i, detail in enumerate(outputs)]


def read_tflite_metadata(content: bytes, path="model.tflite") -> dict:
    """The ``semseg_suite`` JSON entry of a TFLite flatbuffer's metadata table
    (else the ``<name>.json`` file beside it)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(content), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == formats.METADATA_KEY:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    sidecar = formats.sidecar_path(path)
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    raise ExportError(f"{path}: no semseg-suite metadata (not exported by semseg_suite.export)")


class _ONNX(ExportedModel):
    def __init__(self, path):
        onnxruntime = formats.require("onnxruntime", "onnxruntime", "onnx")
        path = pathlib.Path(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        try:
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise ExportError(f"{path}: cannot load the ONNX model ({formats._first_line(error)})") from None
        custom = self._session.get_modelmeta().custom_metadata_map
        if formats.METADATA_KEY not in custom:
            raise ExportError(f"{path}: no semseg-suite metadata (not exported by semseg_suite.export)")
        self._input = self._session.get_inputs()[0].name
        self._names = [output.name for output in self._session.get_outputs()]
        super().__init__(path, "onnx", json.loads(custom[formats.METADATA_KEY]))

    def _run(self, batch):
        return dict(zip(self._names, self._session.run(self._names, {self._input: batch})))


_LOADERS = {"savedmodel": _SavedModel, "tflite": _TFLite, "onnx": _ONNX}


def load(path, format: str | None = None) -> ExportedModel:  # noqa: A002  (the CLI's --format)
    """Loads an exported model.

    Args:
        path: a ``.tflite`` file, a ``.onnx`` file or a SavedModel folder.
        format: ``"savedmodel"``, ``"tflite"`` (any TFLite variant: ``tflite-fp16``
            and ``tflite-int8`` are accepted) or ``"onnx"``; inferred from the path
            when None.

    Raises:
        ExportError: one line naming the path.
    """
    path = pathlib.Path(path)
    fmt = infer_format(path) if format is None else ("tflite" if format.startswith("tflite") else format)
    if fmt not in _LOADERS:
        raise ExportError(f"unknown format {format!r}: choose one of {', '.join(RUNTIME_FORMATS)}")
    if not path.exists():
        raise ExportError(f"{path}: exported model not found")
    return _LOADERS[fmt](path)
