"""Inference: segment images and videos with a trained checkpoint or an exported model.

`Segmenter` turns a checkpoint into class ids through `semseg_suite.tiling`, the same
sliding-window / multi-scale / flip code the exported serving graphs run, so what
test.py measures is what is deployed. Anything with ``.predict(image_rgb) -> (H, W)
ids``, ``.class_names`` and ``.colors`` (a `Segmenter`, or an exported model loaded by
``semseg_suite.export.runtime.load``) is a *predictor*; `predict_batch`,
`segment_images`, `segment_video` and `write_legend` work with any predictor.

Outputs are written through `StagedFolder`: into a hidden sibling folder that is
moved into place only when everything succeeded, so a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import shutil
import sys
import uuid

import cv2
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from semseg_suite import data, export, tiling, visualize

MIN_SIZE = 32
VIDEO_FOURCC = "mp4v"
VIDEO_SUFFIX = ".mp4"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
LEGEND = "legend.png"


def read_rgb(path) -> np.ndarray:
    """Reads an image file as uint8 RGB, with a one-line error naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise data.DatasetError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Segmenter:
    """A model plus what it needs at inference: normalisation, classes, colours, options.

    Args:
        model: a model mapping normalised images to logits (auxiliary heads, if
            any, are dropped; ``self.model`` is its `export.fold_batch_norm`
            inference copy).
        metadata: the checkpoint's metadata (see ``semseg_suite.export``).
        options: a `semseg_suite.tiling.InferenceOptions` (default: the whole
            image once, no test-time augmentation).
    """

    def __init__(self, model, metadata: dict, options: tiling.InferenceOptions | None = None):
        model = export.inference_model(model)  # main logits only (no auxiliary heads)
        model = export.fold_batch_norm(model)  # each conv+BN pair as one conv, same logits
        self.model = model
        self.metadata = metadata
        self.options = options if options is not None else tiling.InferenceOptions()
        self.class_names = list(metadata["class_names"])
        self.colors = [tuple(c) for c in metadata["colors"]]
        self.preprocessing = metadata["preprocessing"]
        self._logits = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_checkpoint(cls, path, options: tiling.InferenceOptions | None = None) -> "Segmenter":
        model, metadata = export.load_checkpoint(path)
        for key in ("class_names", "colors", "preprocessing"):
            if key not in metadata:
                raise export.CheckpointError(f"{path}: checkpoint metadata has no {key!r}")
        return cls(model, metadata, options)

    def normalise(self, image_rgb) -> tf.Tensor:
        """One uint8 RGB image ``(H, W, 3)``, or a batch ``(B, H, W, 3)``, as a normalised batch."""
        image = tf.convert_to_tensor(image_rgb)
        if image.shape.rank == 3:
            image = image[tf.newaxis]
        return data.preprocess_image(image, self.preprocessing)

    def _check_size(self, normalised) -> None:
        height, width = normalised.shape[1:3]
        if height < MIN_SIZE or width < MIN_SIZE:
            raise ValueError(f"images must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {height}x{width}")

    def logits(self, normalised: tf.Tensor) -> tf.Tensor:
        """Raw logits of a normalised batch ``(B, H, W, 3)``, whole image, no options."""
        self._check_size(normalised)
        return self._logits(normalised)

    def probabilities(self, normalised: tf.Tensor) -> tf.Tensor:
        """Softmax ``(B, H, W, C)`` of a normalised batch under this segmenter's options."""
        self._check_size(normalised)
        return tiling.probabilities(self._logits, normalised, self.options)

    def predict_normalised(self, normalised: tf.Tensor) -> np.ndarray:
        """int32 class ids ``(B, H, W)``: argmax of the (averaged) softmax."""
        return np.argmax(self.probabilities(normalised).numpy(), axis=-1).astype(np.int32)

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """int32 class ids ``(H, W)`` of one uint8 RGB image, at the image's own size."""
        return self.predict_normalised(self.normalise(image_rgb))[0]

    def predict_batch(self, images_rgb) -> np.ndarray:
        """int32 class ids ``(B, H, W)`` of equally sized uint8 RGB images, in one call."""
        return self.predict_normalised(self.normalise(np.stack(list(images_rgb))))

    def colorize(self, label_ids: np.ndarray) -> np.ndarray:
        return visualize.colorize(label_ids, self.colors)

    def segment_file(self, path, out_dir, *, alpha: float = 0.5) -> tuple[pathlib.Path, pathlib.Path]:
        """Writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` for one image file."""
        image = read_rgb(path)
        return write_image_outputs(self, image, self.predict(image), out_dir, pathlib.Path(path).stem, alpha)

    def segment_video(self, path, out_path, *, alpha: float = 0.5, batch_size: int = 4) -> int:
        """Writes an overlay video of ``path``; returns the number of frames."""
        return segment_video(self, path, out_path, alpha=alpha, batch_size=batch_size)


def predict_batch(predictor, images_rgb) -> np.ndarray:
    """Class ids ``(B, H, W)`` of equally sized images, batched where the predictor can.

    Raises:
        ValueError: the predictor returned ids of the wrong shape or outside its classes.
    """
    images_rgb = list(images_rgb)
    if hasattr(predictor, "predict_batch"):
        ids = np.asarray(predictor.predict_batch(images_rgb))
    else:
        ids = np.stack([np.asarray(predictor.predict(image)) for image in images_rgb])
    expected = (len(images_rgb), *np.asarray(images_rgb[0]).shape[:2])
    if ids.shape != expected:
        raise ValueError(f"the model returned class ids of shape {ids.shape[1:]} for images of {expected[1:]}")
    num_classes = len(predictor.class_names)
    outside = (ids < 0) | (ids >= num_classes)
    if outside.any():
        raise ValueError(f"the model returned class ids outside [0, {num_classes}): "
                         f"{np.unique(ids[outside])[:5].tolist()} ({outside.mean():.1%} of the pixels)")
    return ids.astype(np.int32)


def write_image_outputs(predictor, image, ids, out_dir, stem, alpha) -> tuple[pathlib.Path, pathlib.Path]:
    """``<stem>_mask.png`` (class colours) and ``<stem>_overlay.png`` in ``out_dir``."""
    mask = visualize.colorize(ids, predictor.colors)
    out_dir = pathlib.Path(out_dir)
    mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
    visualize.save_rgb(mask_path, mask)
    visualize.save_rgb(overlay_path, visualize.overlay(image, mask, alpha))
    return mask_path, overlay_path


def open_video(path) -> tuple[cv2.VideoCapture, float, int, tuple[int, int]]:
    """Opens a video and checks a first frame decodes: ``(capture, fps, frames, (w, h))``.

    ``frames`` is the container's frame count (0 when unknown). The returned capture
    is freshly opened, at the first frame (seeking back is unreliable in some
    containers).
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise data.DatasetError(f"{path}: cannot open video (missing, unreadable or not a video)")
    ok, frame = capture.read()
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    capture.release()
    if not ok:
        raise data.DatasetError(f"{path}: no frames could be decoded")
    return cv2.VideoCapture(str(path)), fps, count, (frame.shape[1], frame.shape[0])


def segment_video(predictor, path, out_path, *, alpha: float = 0.5, batch_size: int = 4, progress=None) -> int:
    """Writes an overlay video of ``path`` (same fps and size, no audio); returns the frame count.

    The mp4v codec rounds an odd width or height down to even.

    Frames are read, segmented ``batch_size`` at a time and written as a stream, so
    memory does not grow with the video's length. ``progress``, if given, is called
    with the number of frames done after each batch.
    """
    capture, fps, _, (width, height) = open_video(path)
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
    frames = 0
    try:
        if not writer.isOpened():
            raise OSError(f"{out_path}: cannot write video")
        batch = []
        while True:
            ok, frame = capture.read()
            if ok:
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if batch and (not ok or len(batch) == batch_size):
                for rgb, ids in zip(batch, predict_batch(predictor, batch)):
                    blended = visualize.overlay(rgb, visualize.colorize(ids, predictor.colors), alpha)
                    writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
                frames += len(batch)
                if progress is not None:
                    progress(len(batch))
                batch = []
            if not ok:
                break
    finally:
        capture.release()
        writer.release()
    if frames == 0:
        raise data.DatasetError(f"{path}: no frames could be decoded")
    return frames


def write_legend(path, class_names, colors) -> pathlib.Path:
    """Writes `visualize.legend` of the classes to ``path``."""
    visualize.save_rgb(path, visualize.legend(class_names, colors))
    return pathlib.Path(path)


def check_output_folder(path) -> pathlib.Path:
    """Refuses an output folder that cannot be written, before any work is done.

    The folder may not exist yet; then its nearest existing ancestor must be a
    writable folder.

    Raises:
        OSError: one line, ``"<path>: <what>"``.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(f"{path}: exists and is not a folder")
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OSError(f"{path}: cannot create the folder: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OSError(f"{path}: cannot write there (no permission on {ancestor})")
    return path


@dataclasses.dataclass
class StagedFolder:
    """Writes to a hidden sibling of ``target``; moves the files in on success only.

    Use as ``with StagedFolder(out_dir) as staging: write into staging``. On a clean
    exit every file written under ``staging`` replaces its namesake in ``target``
    (other files already in ``target`` stay); on an exception the staging folder is
    removed and ``target`` is left as it was (folders created only to hold it are
    removed again). Subfolders named in ``replace`` are replaced whole, so no stale
    file of an earlier run stays in them.
    """

    target: pathlib.Path
    replace: tuple[str, ...] = ()

    def __post_init__(self):
        self.target = check_output_folder(self.target)
        self.staging = self.target.parent / f".{self.target.name}.partial-{uuid.uuid4().hex[:8]}"
        self._created: list[pathlib.Path] = []

    def __enter__(self) -> pathlib.Path:
        missing = []
        parent = self.staging.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        self._created = missing  # innermost first
        self.staging.mkdir(parents=True)
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            try:
                self._publish()
                return
            except BaseException:
                self._discard()
                raise
        self._discard()

    def _publish(self) -> None:
        if not self.target.exists():
            os.replace(self.staging, self.target)  # one atomic move
            return
        for name in self.replace:
            if (self.staging / name).is_dir():
                shutil.rmtree(self.target / name, ignore_errors=True)
                os.replace(self.staging / name, self.target / name)
        for source in sorted(self.staging.rglob("*")):
            destination = self.target / source.relative_to(self.staging)
            if source.is_dir():
                destination.mkdir(exist_ok=True)
            else:
                os.replace(source, destination)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break


def _kind(path: pathlib.Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _known(path: pathlib.Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def expand_input(spec) -> list[pathlib.Path]:
    """The files one ``--image`` value names: itself, a folder's images and videos, or a glob's."""
    path = pathlib.Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _known(p))
        if not files:
            raise data.DatasetError(f"{path}: no images or videos in folder")
        return files
    if path.exists():
        return [path]
    if glob.has_magic(str(spec)):
        matches = sorted(pathlib.Path(p) for p in glob.glob(str(spec), recursive=True))
        if not matches:
            raise data.DatasetError(f"{spec}: no files match")
        files = [p for p in matches if _known(p)]
        if not files:
            raise data.DatasetError(f"{spec}: matches no images or videos ({len(matches)} other files)")
        return files
    raise data.DatasetError(f"{path}: no such file or folder")


def find_inputs(specs) -> list[tuple[pathlib.Path, str, int]]:
    """Every input as ``(path, "image" | "video", frames)``, checked before any work.

    Images must have a readable header, videos must open and decode a first frame.
    """
    seen, items = set(), []
    for spec in specs:
        for path in expand_input(spec):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            if not os.access(path, os.R_OK):
                raise data.DatasetError(f"{path}: cannot read (no permission)")
            frames = 1
            if _kind(path) == "video":
                capture, _, frames, _ = open_video(path)
                capture.release()
            elif not cv2.haveImageReader(str(path)):
                raise data.DatasetError(f"{path}: cannot read image (not an image OpenCV can decode)")
            items.append((path, _kind(path), frames))
    return items


def output_stems(paths) -> list[str]:
    """One output name per input: its stem, made unique (``x.png`` and ``x.jpg`` -> ``x``, ``x_jpg``)."""
    names, used = [], set()
    for path in paths:
        name = path.stem
        if name in used:
            name = f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        base, count = name, 2
        while name in used:
            name, count = f"{base}_{count}", count + 1
        used.add(name)
        names.append(name)
    return names


def load_predictor(path, fmt: str | None = None, options: tiling.InferenceOptions | None = None):
    """A `Segmenter` of a checkpoint, or with ``fmt`` (``"tflite"``, ``"onnx"``,
    ``"savedmodel"``) the exported model ``semseg_suite.export.runtime.load`` reads.

    Raises:
        export.CheckpointError: one line naming ``path``.
    """
    if fmt is None:
        return Segmenter.from_checkpoint(path, options)
    path = pathlib.Path(path)
    if not path.exists():
        raise export.CheckpointError(f"{path}: exported model not found")
    try:
        from semseg_suite.export import runtime
    except ImportError as error:
        raise export.CheckpointError(f"{path}: cannot run exported models here ({error_line(error)})") from None
    try:
        return runtime.load(path, fmt)
    except Exception as error:  # converters' runtimes raise assorted types for unreadable files
        message = error_line(error)
        if not message.startswith(str(path)):
            message = f"{path}: not a loadable {fmt} model ({message})"
        raise export.CheckpointError(message) from None


def segment_inputs(predictor, items, out_dir, *, alpha: float = 0.5, batch_size: int = 4) -> list[str]:
    """Segments `find_inputs`'s items into ``out_dir`` (through a `StagedFolder`).

    Writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` per image (equally sized
    neighbours batched ``batch_size`` at a time), ``<stem>_overlay.mp4`` per video
    and ``legend.png``, with a progress bar on a terminal.

    Returns:
        One line per input naming what it became (final paths), then the legend's.
    """
    out_dir = pathlib.Path(out_dir)
    with StagedFolder(out_dir) as staging:
        return _segment_inputs(predictor, items, out_dir, staging, alpha, batch_size)


def _segment_inputs(predictor, items, out_dir, staging, alpha, batch_size) -> list[str]:
    lines = []
    batch = []  # (path, stem, rgb) of equally sized images

    def flush():
        try:
            ids = predict_batch(predictor, [rgb for _, _, rgb in batch])
        except ValueError as error:
            raise ValueError(f"{batch[0][0]}: {error_line(error)}") from None
        for (path, stem, rgb), label_ids in zip(batch, ids):
            mask, overlay = write_image_outputs(predictor, rgb, label_ids, staging, stem, alpha)
            lines.append(f"{path} -> {out_dir / mask.name}, {out_dir / overlay.name}")
        bar.update(len(batch))
        batch.clear()

    total = sum(frames for _, _, frames in items)
    with tqdm(total=total or None, unit="img", desc="predict", disable=None, file=sys.stderr) as bar:
        for (path, kind, _), stem in zip(items, output_stems(path for path, _, _ in items)):
            if kind == "video":
                if batch:
                    flush()
                name = f"{stem}_overlay{VIDEO_SUFFIX}"
                try:
                    frames = segment_video(predictor, path, staging / name, alpha=alpha,
                                           batch_size=batch_size, progress=bar.update)
                except ValueError as error:
                    if isinstance(error, data.DatasetError):
                        raise
                    raise ValueError(f"{path}: {error_line(error)}") from None
                lines.append(f"{path} -> {out_dir / name} ({frames} frames)")
                continue
            rgb = read_rgb(path)
            if batch and (batch[0][2].shape != rgb.shape or len(batch) == batch_size):
                flush()
            batch.append((path, stem, rgb))
        if batch:
            flush()
    write_legend(staging / LEGEND, predictor.class_names, predictor.colors)
    lines.append(f"legend: {out_dir / LEGEND}")
    return lines


def error_line(error: BaseException) -> str:
    """A one-line ``<path>: <what>`` message for the scripts' ``error:`` output."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
