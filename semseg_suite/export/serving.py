"""The serving graph: uint8 RGB in, class ids (and probabilities or logits) out.

Every exported format (`semseg_suite.export.formats`) is converted from the one
`tf.function` built here, so SavedModel, TFLite and ONNX compute the same thing:

1. cast the uint8 ``(B, H, W, 3)`` RGB batch to float and normalise it as the
   checkpoint's frontend expects (``data.preprocess_image`` with the checkpoint's
   ``"preprocessing"`` mode);
2. run `semseg_suite.tiling.probabilities` over the model (sliding window,
   multi-scale and flip averaging, as test.py and predict.py do), where each model
   call pads its input up to what the architecture needs (at least `MIN_SIZE`
   pixels a side, and a multiple of `SIZE_MULTIPLE` for the models that need one)
   and crops the logits back;
3. return ``class_ids`` (int32 ``(B, H, W)``, the argmax) and on request
   ``probabilities`` (float32 softmax) or ``logits`` (float32, the model's raw
   output; only without tiling or test-time augmentation, which average
   probabilities, not logits).

Height and width are unknown in the graph: one export serves every image size.
"""

from __future__ import annotations

import json

import tensorflow as tf

from semseg_suite import data, tiling
from semseg_suite.inference import MIN_SIZE

OUTPUTS = ("ids", "probs", "logits")
IDS, PROBABILITIES, LOGITS = "class_ids", "probabilities", "logits"
# Architectures that need an input side divisible by this (see their builders'
# docstrings); the serving graph pads to it. Others resize features to a reference
# tensor and take any size of at least MIN_SIZE.
SIZE_MULTIPLE = {"FRRN-A": 16, "FRRN-B": 32}
# Metadata fields a deployer needs, copied into every exported file.
SERVING_FIELDS = ("model", "frontend", "num_classes", "class_names", "colors", "preprocessing", "suite_version")


def serving_metadata(metadata: dict, options: tiling.InferenceOptions, outputs: str) -> dict:
    """The JSON record stored with an exported model (classes, colours, how it infers)."""
    record = {key: metadata[key] for key in SERVING_FIELDS if key in metadata}
    record["inference_options"] = {
        "tile": options.tile, "overlap": options.overlap, "scales": list(options.scales), "flip": options.flip,
    }
    record["input"] = "uint8 RGB (batch, height, width, 3), any height and width"
    record["outputs"] = {IDS: "int32 (batch, height, width)"}
    if outputs == "probs":
        record["outputs"][PROBABILITIES] = "float32 (batch, height, width, classes), softmax"
    if outputs == "logits":
        record["outputs"][LOGITS] = "float32 (batch, height, width, classes)"
    return record


def _uses_options(options: tiling.InferenceOptions) -> bool:
    return options != tiling.InferenceOptions()


def padded_logits_fn(model, multiple: int = 1):
    """``model`` as a function of a normalised batch of any size: pads the input
    (zeros, bottom and right) to at least MIN_SIZE a side and to ``multiple``, then
    crops the logits back. The padding is zero pixels wide for sizes that need none."""

    def logits_fn(images):
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        target_h = tf.maximum(height, MIN_SIZE)
        target_w = tf.maximum(width, MIN_SIZE)
        if multiple > 1:
            target_h = (target_h + multiple - 1) // multiple * multiple
            target_w = (target_w + multiple - 1) // multiple * multiple
        # Concatenated zeros rather than tf.pad: the TFLite converter loses the
        # channel count of a pad with computed widths and then cannot convert convs.
        batch, channels = shape[0], images.shape[-1] or 3
        padded = tf.concat([images, tf.zeros(tf.stack([batch, target_h - height, width, channels]), images.dtype)], 1)
        padded = tf.concat([padded, tf.zeros(tf.stack([batch, target_h, target_w - width, channels]), images.dtype)], 2)
        logits = tf.cast(model(padded, training=False), tf.float32)
        return logits[:, :height, :width, :]

    return logits_fn


class SegmentationServer(tf.Module):
    """A checkpoint's model as a serving module.

    Args:
        model: a Keras model from normalised images to logits (auxiliary heads are
            dropped: ``export.inference_model``; conv+BN pairs are folded:
            ``export.fold_batch_norm``).
        metadata: the checkpoint's metadata.
        options: `tiling.InferenceOptions` built into the graph.
        outputs: ``"ids"`` (class ids only), ``"probs"`` (also probabilities) or
            ``"logits"`` (also logits; refused with tiling or test-time augmentation).
    """

    def __init__(self, model, metadata: dict, options: tiling.InferenceOptions = tiling.InferenceOptions(),
                 outputs: str = "ids"):
        super().__init__(name="semseg_suite_server")
        from semseg_suite import export  # the package imports this module

        if outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
        if outputs == "logits" and _uses_options(options):
            raise ValueError("--outputs logits cannot be combined with --tile/--scales/--flip "
                             "(they average probabilities); use --outputs probs")
        model = export.fold_batch_norm(export.inference_model(model))
        # The model's TensorFlow variables, tracked explicitly, and the model itself
        # not tracked (only called through the logits function): through the Keras
        # model or its Keras variables, the TFLite converter does not find the
        # variables in the SavedModel (uninitialised READ_VARIABLE ops, NaN
        # outputs), and tracking both stores every weight twice.
        self.model_variables = [variable.value for variable in model.variables]
        self.options = options
        self.outputs = outputs
        self.preprocessing = metadata["preprocessing"]
        data.preprocess_image(tf.zeros((1, 1, 1, 3), tf.uint8), self.preprocessing)  # checks the mode
        # A plain string: tf.Module would wrap a dict attribute for tracking.
        self.metadata_json = json.dumps(serving_metadata(metadata, options, outputs), sort_keys=True)
        self._logits_fn = padded_logits_fn(model, SIZE_MULTIPLE.get(metadata.get("model"), 1))

    @property
    def metadata(self) -> dict:
        """The JSON record stored with the export (`serving_metadata`)."""
        return json.loads(self.metadata_json)

    def compute(self, images):
        """The serving computation on a uint8 batch (eager or traced)."""
        normalised = data.preprocess_image(images, self.preprocessing)
        if self.outputs == "logits":
            logits = self._logits_fn(normalised)
            return {IDS: tf.argmax(logits, axis=-1, output_type=tf.int32), LOGITS: logits}
        probabilities = tiling.probabilities(self._logits_fn, normalised, self.options)
        result = {IDS: tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
        if self.outputs == "probs":
            result[PROBABILITIES] = probabilities
        return result

    def function(self, batch: int | None = None) -> tf.types.experimental.ConcreteFunction:
        """The concrete serving function of uint8 ``(batch, None, None, 3)`` images."""
        spec = tf.TensorSpec((batch, None, None, 3), tf.uint8, name="image")
        return tf.function(self.compute, autograph=False).get_concrete_function(spec)
