"""Inference: segment images with a trained checkpoint."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import tensorflow as tf

from semseg_suite import data, export, visualize

MIN_SIZE = 32


def read_rgb(path) -> np.ndarray:
    """Reads an image file as uint8 RGB, with a one-line error naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise data.DatasetError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Segmenter:
    """A model plus what it needs at inference: normalisation, classes, colours.

    Args:
        model: a model mapping normalised images to logits.
        metadata: the checkpoint's metadata (see ``semseg_suite.export``).
    """

    def __init__(self, model, metadata: dict):
        model = export.inference_model(model)  # main logits only (no auxiliary heads)
        self.model = model
        self.metadata = metadata
        self.class_names = list(metadata["class_names"])
        self.colors = [tuple(c) for c in metadata["colors"]]
        self.preprocessing = metadata["preprocessing"]
        self._logits = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_checkpoint(cls, path) -> "Segmenter":
        model, metadata = export.load_checkpoint(path)
        return cls(model, metadata)

    def normalise(self, image_rgb) -> tf.Tensor:
        return data.preprocess_image(tf.convert_to_tensor(image_rgb)[tf.newaxis], self.preprocessing)

    def logits(self, normalised: tf.Tensor) -> tf.Tensor:
        """Logits of a normalised batch ``(B, H, W, 3)``."""
        height, width = normalised.shape[1:3]
        if height < MIN_SIZE or width < MIN_SIZE:
            raise ValueError(f"images must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {height}x{width}")
        return self._logits(normalised)

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """Class ids ``(H, W)`` of one uint8 RGB image, at the image's own size."""
        return np.argmax(self.logits(self.normalise(image_rgb))[0].numpy(), axis=-1)

    def colorize(self, label_ids: np.ndarray) -> np.ndarray:
        return visualize.colorize(label_ids, self.colors)

    def segment_file(self, path, out_dir, *, alpha: float = 0.5) -> tuple[pathlib.Path, pathlib.Path]:
        """Writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` for one image file."""
        image = read_rgb(path)
        mask = self.colorize(self.predict(image))
        out_dir = pathlib.Path(out_dir)
        stem = pathlib.Path(path).stem
        mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
        visualize.save_rgb(mask_path, mask)
        visualize.save_rgb(overlay_path, visualize.overlay(image, mask, alpha))
        return mask_path, overlay_path

    def segment_video(self, path, out_path, *, alpha: float = 0.5) -> int:
        """Writes an overlay video of ``path``; returns the number of frames."""
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise data.DatasetError(f"{path}: cannot open video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        writer, frames = None, 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                blended = visualize.overlay(rgb, self.colorize(self.predict(rgb)), alpha)
                if writer is None:
                    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(out_path), fourcc, fps, (rgb.shape[1], rgb.shape[0]))
                writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
                frames += 1
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if frames == 0:
            raise data.DatasetError(f"{path}: no frames could be decoded")
        return frames
