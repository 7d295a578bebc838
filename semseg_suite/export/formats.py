"""Writers of the exported formats, one per ``--format``.

Each writer converts the serving function of a `serving.SegmentationServer` with a
maintained converter (TensorFlow's SavedModel and TFLite converters, tf2onnx) into
a temporary file or folder beside the output and moves it into place with
``os.replace``, so a failed export leaves nothing half-written, and an existing
export is only ever replaced whole.

Where the class names, colours and inference options go (the JSON record of
`serving.serving_metadata`):

* SavedModel: ``assets/semseg_suite.json`` in the folder, and a ``metadata``
  signature returning the same JSON as a string
  (``tf.saved_model.load(path).signatures["metadata"]()["metadata"]``).
* TFLite: the flatbuffer's standard ``metadata`` table, entry ``semseg_suite``
  (readable with ``tensorflow.lite.python.schema_py_generated`` or any flatbuffer
  reader of the TFLite schema), and the same JSON in a ``<name>.json`` file beside
  the ``.tflite`` for deployers without a flatbuffer reader. TFLite models take a
  batch of 1 (the input's height and width are resized per image).
* ONNX: ``metadata_props`` key ``semseg_suite`` (``onnx.load(path).metadata_props``,
  or ``InferenceSession.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import re
import tempfile

import numpy as np
import tensorflow as tf

from semseg_suite import data, layers
from semseg_suite.export.serving import SegmentationServer

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
SUFFIX = {"savedmodel": "_savedmodel", "tflite": ".tflite", "tflite-fp16": "_fp16.tflite",
          "tflite-int8": "_int8.tflite", "onnx": ".onnx"}
METADATA_KEY = "semseg_suite"
ASSET_NAME = "semseg_suite.json"
REQUIREMENTS = "requirements-export.txt"
ONNX_OPSET = 17
DEFAULT_CALIBRATION = 100  # training images for int8 calibration when --calibration is not given
SELECT_OPS = re.compile(r"TF Select ops: ([^\n]+)")
LOCATION = re.compile(r'fused\["\w+:", "([^@"]+)@')
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ExportError(ValueError):
    """An export that cannot be done; the message is one line naming the file."""


def require(module: str, package: str, fmt: str):
    """Imports a converter module, or raises a one-line ExportError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"--format {fmt} needs the {package} package: pip install -r {REQUIREMENTS} (or pip install {package})"
        ) from None


def default_output(checkpoint, fmt: str) -> pathlib.Path:
    """``run/best.keras`` -> ``run/best.tflite``, ``run/best_savedmodel``, ..."""
    checkpoint = pathlib.Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX[fmt])


def sidecar_path(path) -> pathlib.Path:
    """The JSON metadata file written beside a ``.tflite``."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def write(server: SegmentationServer, fmt: str, output, *, calibration=None) -> pathlib.Path:
    """Exports ``server`` as ``fmt`` to ``output``; returns the path written.

    Args:
        server: the serving module.
        fmt: one of `FORMATS`.
        output: file (TFLite, ONNX) or folder (SavedModel) to write.
        calibration: int8 only: an iterable of uint8 RGB images ``(H, W, 3)``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    output = pathlib.Path(output)
    if fmt == "onnx":  # check the converter before any work
        require("tf2onnx", "tf2onnx", fmt)
        require("onnx", "onnx", fmt)
    if fmt.startswith("tflite") and output.suffix != ".tflite":
        raise ExportError(f"{output}: a TFLite export must end in .tflite")
    if fmt == "onnx" and output.suffix != ".onnx":
        raise ExportError(f"{output}: an ONNX export must end in .onnx")
    with _staging(output) as partial:
        if fmt == "savedmodel":
            _write_savedmodel(server, partial)
        elif fmt == "onnx":
            _write_onnx(server, partial)
        else:
            content = _tflite_bytes(server, fmt, calibration)
            partial.write_bytes(_with_tflite_metadata(content, server.metadata_json))
    if fmt.startswith("tflite"):
        with _staging(sidecar_path(output)) as partial:
            partial.write_text(json.dumps(server.metadata, indent=2, sort_keys=True) + "\n")
    return output


class _staging:
    """A temporary path beside ``output``, moved onto it when the block succeeds
    and removed otherwise."""

    def __init__(self, output: pathlib.Path):
        self.output = output

    def __enter__(self) -> pathlib.Path:
        parent = self.output.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.output.name}.partial-", dir=parent))
        except OSError as error:
            raise ExportError(f"{self.output}: cannot write here ({error.strerror or error})") from None
        return self.tmpdir / self.output.name

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None:
                staged = self.tmpdir / self.output.name
                try:
                    if self.output.is_dir() and not self.output.is_symlink():
                        old = self.tmpdir / "previous"
                        os.replace(self.output, old)  # a folder cannot be replaced in one step
                    os.replace(staged, self.output)
                except OSError as error:
                    raise ExportError(f"{self.output}: cannot write here ({error.strerror or error})") from None
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return False


def _write_savedmodel(server: SegmentationServer, path: pathlib.Path) -> None:
    metadata = tf.constant(server.metadata_json)
    metadata_fn = tf.function(lambda: {"metadata": metadata}, input_signature=[])
    tf.saved_model.save(server, str(path),
                        signatures={"serving_default": server.function(), "metadata": metadata_fn.get_concrete_function()})
    (path / "assets").mkdir(exist_ok=True)
    (path / "assets" / ASSET_NAME).write_text(json.dumps(server.metadata, indent=2, sort_keys=True) + "\n")


def _tflite_bytes(server: SegmentationServer, fmt: str, calibration) -> bytes:
    samples = None
    if fmt == "tflite-int8":
        if calibration is None:
            raise ExportError("--format tflite-int8 needs calibration images (--calibration DIR|N)")
        samples = [np.asarray(image, np.uint8)[np.newaxis] for image in calibration]
        if not samples:
            raise ExportError("--format tflite-int8: no calibration images")
    # Through a SavedModel: from_concrete_functions leaves the Keras variables as
    # uninitialised READ_VARIABLE ops (NaN outputs) in TF 2.21.
    with tempfile.TemporaryDirectory(prefix="semseg_suite_tflite_") as folder:
        tf.saved_model.save(server, folder, signatures={"serving_default": server.function(batch=1)})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS
        if fmt == "tflite-fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif fmt == "tflite-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([sample] for sample in samples)
            builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        # Builtin kernels only: TF Select (Flex) ops need a TensorFlow-linked
        # runtime, which TensorFlow's own Python interpreter lacks in TF 2.21.
        converter.target_spec.supported_ops = [builtins]
        try:
            return converter.convert()
        except Exception as error:  # the converter raises assorted types
            select = SELECT_OPS.search(str(error))
            if select:
                where = LOCATION.search(str(error))
                place = f" (in {where.group(1)})" if where else ""
                raise ExportError(f"TFLite ({fmt}) has no builtin kernel for {select.group(1).strip()}{place}: "
                                  "this model cannot be exported to TFLite; use --format onnx or savedmodel") from None
            raise ExportError(f"TFLite conversion ({fmt}) failed: {_first_line(error)}") from error


def _first_line(error: Exception, limit: int = 300) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= limit else first[:limit] + "..."


def _with_tflite_metadata(content: bytes, text: str) -> bytes:
    """The TFLite flatbuffer with ``text`` as its ``semseg_suite`` metadata entry."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _write_onnx(server: SegmentationServer, path: pathlib.Path) -> None:
    tf2onnx = require("tf2onnx", "tf2onnx", "onnx")
    onnx = require("onnx", "onnx", "onnx")
    spec = tf.TensorSpec((None, None, None, 3), tf.uint8, name="image")
    function = tf.function(server.compute, autograph=False)
    with layers.explicit_same_padding():  # ONNX Runtime takes no dilated auto_pad=SAME convolution
        names = sorted(function.get_concrete_function(spec).structured_outputs)  # flattened in sorted key order
        try:
            model, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET)
        except Exception as error:
            raise ExportError(f"ONNX conversion failed: {_first_line(error)}") from error
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"ONNX conversion gave an invalid model: {_first_line(error)}") from None
    _rename_outputs(model.graph, dict(zip([o.name for o in model.graph.output], names)))
    _rename_inputs(model.graph, {model.graph.input[0].name: "image"})
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, server.metadata_json
    onnx.save(model, str(path))
    try:
        import onnxruntime
    except ImportError:
        return
    try:  # a model onnxruntime refuses is not written
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(f"ONNX conversion gave a model onnxruntime cannot load: {_first_line(error)}") from None


def _rename_outputs(graph, mapping: dict) -> None:
    for node in graph.node:
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
    for value in graph.output:
        value.name = mapping.get(value.name, value.name)


def _rename_inputs(graph, mapping: dict) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
    for value in graph.input:
        value.name = mapping.get(value.name, value.name)


def calibration_images(metadata: dict, calibration=None, *, checkpoint="checkpoint", seed: int = 0):
    """uint8 RGB images for int8 calibration.

    Args:
        metadata: the checkpoint's metadata (``dataset``/``dataset_options`` reopen
            its training split; ``crop_size`` is the size images are resized to).
        calibration: None (`DEFAULT_CALIBRATION` training images), an int N (N
            training images), or a folder of images.
        checkpoint: named in errors.
    """
    from semseg_suite.inference import read_rgb

    if calibration is None or isinstance(calibration, int) or str(calibration).isdigit():
        count = DEFAULT_CALIBRATION if calibration is None else int(calibration)
        if count < 1:
            raise ExportError(f"--calibration {calibration}: need at least one image")
        spec = metadata.get("dataset")
        if spec is None:
            raise ExportError(f"{checkpoint}: no training dataset in its metadata; give --calibration DIR")
        try:
            info = data.open_dataset(spec, **(metadata.get("dataset_options") or {}))
        except (data.DatasetError, TypeError) as error:
            raise ExportError(f"{checkpoint}: cannot reopen its training data for calibration ({error}); "
                              "give --calibration DIR") from None
        pairs = info.splits.get("train") or ()
        if not pairs:
            raise ExportError(f"{info.root}: no training split to calibrate on; give --calibration DIR")
        order = np.random.default_rng(seed).permutation(len(pairs))[:count]
        paths = [pairs[i][0] for i in order]
    else:
        folder = pathlib.Path(calibration)
        if not folder.is_dir():
            raise ExportError(f"{folder}: --calibration must be a folder of images or a number")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ExportError(f"{folder}: no images to calibrate on ({', '.join(IMAGE_SUFFIXES)})")
    size = metadata.get("crop_size")
    images = []
    for path in paths:
        try:
            image = read_rgb(path)
        except data.DatasetError as error:
            raise ExportError(str(error)) from None
        if size:
            image = tf.image.resize(image, size, method="bilinear", antialias=True).numpy()
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        images.append(image)
    return images


def export_checkpoint(checkpoint, fmt: str, output=None, *, options=None, outputs: str = "ids",
                      calibration=None) -> pathlib.Path:
    """Exports a checkpoint (``.keras``/``.h5``) as ``fmt``; returns the path written.

    Args:
        checkpoint: the checkpoint file.
        fmt: one of `FORMATS`.
        output: where to write; by default beside the checkpoint (`default_output`).
        options: `semseg_suite.tiling.InferenceOptions` built into the graph.
        outputs: ``"ids"``, ``"probs"`` or ``"logits"`` (see `SegmentationServer`).
        calibration: int8 only: None, a number of training images or a folder.
    """
    from semseg_suite import export, tiling

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require("tf2onnx", "tf2onnx", fmt)
        require("onnx", "onnx", fmt)
    model, metadata = export.load_checkpoint(checkpoint)
    server = SegmentationServer(model, metadata, options or tiling.InferenceOptions(), outputs)
    images = calibration_images(metadata, calibration, checkpoint=checkpoint) if fmt == "tflite-int8" else None
    return write(server, fmt, output or default_output(checkpoint, fmt), calibration=images)
