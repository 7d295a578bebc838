"""The dataset contract every format produces, and the checks they share.

A format's loader finds image/label pairs and describes its label encoding as a
`DatasetInfo`; `check_pairs` then reads every pair once and raises `DatasetError`
naming the first bad file.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile

import cv2
import keras
import numpy as np
import tensorflow as tf
from PIL import Image

IGNORE_INDEX = 255  # the void label of every label map the suite produces
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
VOID_NAMES = ("void", "unlabelled", "unlabeled")

log = logging.getLogger("semseg_suite")
PREPROCESSING_MODES = ("caffe", "tf", "torch")


def valid_pixels(labels, num_classes, ignore_index=IGNORE_INDEX) -> tf.Tensor:
    """Boolean mask of the labels that count: in ``[0, num_classes)`` and not void.

    The one rule for which pixels enter losses and metrics; values outside the
    class range are treated as void too (TensorFlow would fail on them on CPU).
    """
    labels = tf.convert_to_tensor(labels)
    in_range = tf.logical_and(labels >= 0, labels < num_classes)
    return tf.logical_and(in_range, labels != ignore_index)


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message is one line: ``"<path>: <what is wrong>"``.
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A validated dataset: its classes, label encoding and image/label pairs.

    Every format (`semseg_suite.data.open_dataset`) produces one; the pipelines,
    class weights, evaluation and the dataset doctor only see this.

    Attributes:
        root: the dataset folder.
        layout: the format: ``"colour"`` or ``"index"`` (the suite's two folder
            layouts), ``"voc"``, ``"cityscapes"``, ``"ade20k"``, ``"tfds"`` or
            ``"folders"`` (a plain pair of folders).
        class_names: trainable classes; the ignored class is not one.
        colors: RGB colour of each trainable class.
        ignored_name: name of the ignored class, or None when no class is ignored.
        ignored_value: raw label value mapped to ``IGNORE_INDEX``: the ignored
            class's row, or else a raw index-label value (255 by default; colour
            labels have no raw values outside their colours).
        splits: split name -> ``(image_path, label_path)`` pairs sorted by stem,
            for the splits present.
        label_map: ``(raw key, train id)`` pairs sorted by key. A label pixel's raw
            key is its value (index encoding) or ``0xRRGGBB`` (colour encoding); its
            train id is in ``0..C-1`` or ``IGNORE_INDEX``. Other raw keys are
            invalid.
        label_encoding: ``"index"`` (1-channel uint8 labels) or ``"colour"`` (labels
            decoded to RGB: colour images, and palette PNGs through their palette).
        class_table: where the valid raw values come from, for error messages
            (e.g. ``classes.csv``).
        spec: the dataset as ``open_dataset`` takes it (a folder or ``tfds:NAME``),
            saved in checkpoints so that test.py reopens the same data.
        options: the other ``open_dataset`` arguments needed to reopen it.
        notes: what was detected or converted on the way, one line each.
    """

    root: pathlib.Path
    layout: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignored_name: str | None
    ignored_value: int
    splits: dict[str, tuple[tuple[str, str], ...]]
    label_map: tuple[tuple[int, int], ...]
    label_encoding: str = "index"
    class_table: str = "the class table"
    spec: str = ""
    options: dict = dataclasses.field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()
    # split -> decoded dataset with an in-memory .cache(), shared by the pipelines
    # of every epoch so that images are decoded once per DatasetInfo.
    _decoded_cache: dict = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_classes(self) -> int:
        """Number of trainable classes."""
        return len(self.class_names)

    @property
    def label_channels(self) -> int:
        """Channels a label is decoded to: 3 for colour labels, else 1."""
        return 3 if self.label_encoding == "colour" else 1


def read_class_table(path):
    """Reads a ``name,r,g,b`` CSV into (names, RGB colours), one per row."""
    names, colors = [], []
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [field.strip().lower() for field in next(reader, [])]
        if header != ["name", "r", "g", "b"]:
            raise DatasetError(f"{path}: header must be name,r,g,b, got {header}")
        for row in reader:
            fields = [field.strip() for field in row]
            if not any(fields):
                continue
            where = f"{path}:{reader.line_num}"
            name, color = _parse_class_row(where, fields)
            if color in colors:
                raise DatasetError(f"{where}: duplicate colour {color}")
            if name in names:
                raise DatasetError(f"{where}: duplicate class {name!r}")
            names.append(name)
            colors.append(color)
    if not names:
        raise DatasetError(f"{path}: no classes")
    return names, colors


def _parse_class_row(where, fields):
    """Parses one ``name, r, g, b`` row; `where` is ``path:line`` for errors."""
    if len(fields) != 4 or not fields[0]:
        raise DatasetError(f"{where}: expected name,r,g,b, got {','.join(fields)}")
    try:
        color = tuple(int(value) for value in fields[1:])
    except ValueError:
        message = f"{where}: r, g, b must be integers, got {fields[1:]}"
        raise DatasetError(message) from None
    if not all(0 <= value <= 255 for value in color):
        raise DatasetError(f"{where}: r, g, b must be in 0..255, got {color}")
    return fields[0], color


def pair_files(image_dir, label_dir):
    """Pairs images with labels by stem (label stem = image stem [+ "_L"])."""
    images = files_by_stem(image_dir)
    labels = files_by_stem(label_dir)
    if not images:
        raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    pairs = []
    for stem, image in sorted(images.items()):
        matches = [labels.pop(name) for name in (stem, f"{stem}_L") if name in labels]
        if not matches:
            raise DatasetError(
                f"{image}: no label {stem}.* or {stem}_L.* in {label_dir}"
            )
        if len(matches) > 1:
            names = " and ".join(match.name for match in matches)
            raise DatasetError(f"{image}: two labels, {names}")
        pairs.append((str(image), str(matches[0])))
    if labels:
        label = sorted(labels.values())[0]
        raise DatasetError(f"{label}: no image with this stem in {image_dir}")
    return tuple(pairs)


def files_by_stem(folder):
    """Maps stem -> path for the image files of a folder.

    Hidden files and folders are skipped silently; other files without an image
    extension (notes.txt, Thumbs.db, ...) are skipped with one INFO line.
    """
    files, skipped = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            skipped.append(path.name)
            continue
        if path.stem in files:
            raise DatasetError(f"{path}: same stem as {files[path.stem].name}")
        files[path.stem] = path
    if skipped:
        log.info("%s: skipped %d non-image entr%s (%s)", folder, len(skipped), "y" if len(skipped) == 1 else "ies",
                 ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    return files


def check_pairs(info, check_labels):
    """Checks that every pair is readable and of one size, on a thread pool.

    With `check_labels` every image and label is decoded in full (a truncated file
    fails here, not in the middle of an epoch); without it only headers are read.
    Images that are not 8-bit RGB (grayscale, RGBA, palette, 16-bit, CMYK) are
    read as RGB by the pipeline; one INFO line says how many there are.

    Raises:
        DatasetError: the first problem found (`read_pair` lists them all).
    """

    def check(pair):
        if check_labels:
            reading = read_pair(info, pair)
            if reading.problems:
                raise DatasetError(reading.problems[0])
            return reading.mode
        image_path, label_path = pair
        _check_lossless(label_path)
        image_hw, mode = _read_image(image_path, decode=False)
        _check_sizes(image_path, label_path, image_hw, image_size(label_path))
        return mode

    pairs = [pair for split_pairs in info.splits.values() for pair in split_pairs]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        modes = collections.Counter(pool.map(check, pairs))
    converted = [f"{count} {_MODE_NAMES.get(mode, mode)}" for mode, count in sorted(modes.items()) if mode != "RGB"]
    if converted:
        log.info("%s: %s image(s) are read as 8-bit RGB", info.spec or info.root, ", ".join(converted))


@dataclasses.dataclass(frozen=True)
class PairReading:
    """What decoding one image/label pair in full found.

    Attributes:
        image_size: (height, width) of the image, or None if it is unreadable.
        mode: the image's PIL mode (``"RGB"``, ``"L"``, ...), or None.
        train_ids: int32 (H, W) train ids of the label, or None if it is unusable.
        problems: one ``"<path>: <what is wrong>"`` line per problem, image first.
    """

    image_size: tuple[int, int] | None
    mode: str | None
    train_ids: np.ndarray | None
    problems: tuple[str, ...]


def read_pair(info: DatasetInfo, pair) -> PairReading:
    """Decodes an image and its label in full, collecting every problem of the pair."""
    image_path, label_path = pair
    problems = []
    image_hw = mode = train_ids = None
    try:
        image_hw, mode = _read_image(image_path, decode=True)
    except DatasetError as error:
        problems.append(str(error))
    try:
        _check_lossless(label_path)
        train_ids = decode_label_file(info, label_path)
    except DatasetError as error:
        problems.append(str(error))
    if image_hw is not None and train_ids is not None:
        try:
            _check_sizes(image_path, label_path, image_hw, train_ids.shape)
        except DatasetError as error:
            problems.append(str(error))
            train_ids = None
    return PairReading(image_hw, mode, train_ids, tuple(problems))


def _check_lossless(label_path):
    if pathlib.Path(label_path).suffix.lower() in LOSSY_EXTENSIONS:
        raise DatasetError(
            f"{label_path}: labels must be lossless (PNG); JPEG compression changes the values and colours "
            "along every class boundary"
        )


def _check_sizes(image_path, label_path, image_hw, label_hw):
    if tuple(label_hw) != tuple(image_hw):
        raise DatasetError(
            f"{label_path}: label is {label_hw[0]}x{label_hw[1]} (HxW), "
            f"its image {pathlib.Path(image_path).name} is "
            f"{image_hw[0]}x{image_hw[1]}"
        )


def cache_root() -> pathlib.Path:
    """Where the suite caches converted datasets and statistics.

    ``$SEMSEG_SUITE_CACHE``, else ``~/.cache/semseg_suite``.
    """
    return pathlib.Path(os.environ.get("SEMSEG_SUITE_CACHE") or "~/.cache/semseg_suite").expanduser().absolute()


# PIL modes of images the pipeline converts to 8-bit RGB (tf.io.decode_image, 3 channels).
_MODE_NAMES = {
    "1": "1-bit", "L": "grayscale", "LA": "grayscale+alpha", "P": "palette", "PA": "palette+alpha",
    "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale", "YCbCr": "YCbCr",
}
LOSSY_EXTENSIONS = (".jpg", ".jpeg")


def image_size(path):
    """(height, width) from the image file's header."""
    return _read_image(path, decode=False)[0]


def _read_image(path, decode):
    """((height, width), PIL mode) of an image file, decoding it in full if `decode`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            if decode:
                image.load()
    except OSError as error:  # includes PIL.UnidentifiedImageError and truncated files
        file = pathlib.Path(path)
        if file.is_file() and file.stat().st_size == 0:
            what = "empty file (0 bytes), not an image"
        elif "truncated" in str(error):
            what = "truncated image file"
        else:
            what = "not a readable image"
        raise DatasetError(f"{path}: {what}") from None
    return (height, width), mode


def decode_label_file(info: DatasetInfo, path) -> np.ndarray:
    """Reads a label image as train ids.

    Args:
        info: the dataset the label belongs to.
        path: label image file.

    Returns:
        int32 (H, W) array of ids in ``0..C-1`` or ``IGNORE_INDEX``.

    Raises:
        DatasetError: the file is unreadable, has the wrong number of channels or
            holds a value (colour) that is not in the class table.
    """
    if info.label_encoding == "colour":
        label = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"{path}: not a readable image")
    if info.label_encoding == "colour":
        label = cv2.cvtColor(label, cv2.COLOR_BGR2RGB)
    elif label.ndim != 2 or label.dtype != np.uint8:
        channels = 1 if label.ndim == 2 else label.shape[2]
        raise DatasetError(
            f"{path}: index labels must be 1-channel uint8, got {channels} "
            f"channel(s) of {label.dtype}"
        )
    train_ids = _train_ids(info, label)
    unknown = train_ids < 0
    if unknown.any():
        count = np.count_nonzero(unknown)
        pixels = "1 pixel" if count == 1 else f"{count} pixels"
        raise DatasetError(
            f"{path}: {_describe_raw_value(info, label[unknown][0])} is not in "
            f"{info.class_table} ({pixels})"
        )
    return train_ids


def _train_ids(info, label):
    """Maps an (H, W) index or (H, W, 3) RGB label to train ids, -1 where unknown."""
    raw, train_ids = np.array(info.label_map, dtype=np.int32).T
    if info.label_encoding == "index":
        lookup = np.full(256, -1, dtype=np.int32)
        lookup[raw] = train_ids
        return lookup[label]
    label = label.astype(np.int32)
    keys = label[..., 0] << 16 | label[..., 1] << 8 | label[..., 2]
    position = np.searchsorted(raw, keys).clip(max=len(raw) - 1)
    return np.where(raw[position] == keys, train_ids[position], -1)


def _describe_raw_value(info, value):
    """Human-readable raw label value (an index or an RGB triple) for errors."""
    if info.label_encoding == "colour":
        return f"colour {tuple(value.tolist())}"
    return f"value {value}"


def describe(info: DatasetInfo) -> str:
    """A short multi-line summary of a dataset."""
    if info.ignored_name is not None:
        ignored = f"{info.ignored_name} (label value {info.ignored_value})"
    elif any(train_id == IGNORE_INDEX for _, train_id in info.label_map):
        ignored = f"label value {info.ignored_value}"
    else:
        ignored = "nothing"
    splits = ", ".join(f"{split} {len(pairs)}" for split, pairs in info.splits.items())
    encoding = "colour" if info.label_encoding == "colour" else "index"
    layout = info.layout if info.layout == encoding else f"{info.layout}, {encoding}"
    lines = [
        f"dataset  {info.spec or info.root} ({layout} labels)",
        f"classes  {info.num_classes}: {', '.join(info.class_names)}",
        f"ignored  {ignored} -> {IGNORE_INDEX}",
        f"pairs    {splits}",
    ]
    lines += [f"note     {note}" for note in info.notes]
    return "\n".join(lines)


def preprocess_image(image, mode) -> tf.Tensor:
    """Normalises RGB images the way a frontend's ImageNet weights expect.

    Args:
        image: uint8 or float RGB image(s) in [0, 255], channels last.
        mode: ``"caffe"`` (RGB->BGR, minus the ImageNet mean), ``"tf"`` (scaled to
            [-1, 1]) or ``"torch"`` (ImageNet mean/std), as in
            ``keras.applications.imagenet_utils.preprocess_input``.

    Returns:
        float32 tensor of the same shape.
    """
    if mode not in PREPROCESSING_MODES:
        raise ValueError(
            f"preprocessing must be one of {PREPROCESSING_MODES}, got {mode!r}"
        )
    return keras.applications.imagenet_utils.preprocess_input(
        tf.cast(image, tf.float32), data_format="channels_last", mode=mode
    )


def check_crop(info: DatasetInfo, crop_size, max_scale: float = 1.0, split: str = "train") -> None:
    """Refuses a crop that is larger than every image of a split, even at the largest scale.

    A crop larger than some images is fine (they are padded with IGNORE_INDEX), but
    one larger than all of them pads every crop: wasted compute, and batch norm
    sees the padding. Reads image headers only.

    Raises:
        DatasetError: naming the split folder, the crop and the largest image.
    """
    sizes = [image_size(image) for image, _ in info.splits[split]]
    largest = max(sizes, key=lambda hw: hw[0] * hw[1])
    height, width = crop_size
    if all(height > h * max_scale or width > w * max_scale for h, w in sizes):
        folder = pathlib.Path(info.splits[split][0][0]).parent
        scaled = f" scaled by up to {max_scale:g}" if max_scale != 1 else ""
        raise DatasetError(
            f"{folder}: crop {height}x{width} is larger than every {split} image{scaled} (largest "
            f"{largest[0]}x{largest[1]}), so every crop would be padded; use a crop of at most "
            f"{int(largest[0] * max_scale)}x{int(largest[1] * max_scale)}"
        )


def convert_once(kind, source, files, convert) -> pathlib.Path:
    """The cache folder of a conversion of `files`, running `convert` the first time.

    The folder is ``<cache root>/KIND/<hash>``, the hash covering the resolved
    `source` folder and the names, sizes and mtimes of `files`, so that a changed
    file converts again. `convert(folder)` writes into a temporary folder that is
    renamed into place once complete, so an interrupted conversion leaves nothing
    half-written (and is redone next time).

    Args:
        kind: the cache subfolder, e.g. ``"masks16"``.
        source: the folder being converted.
        files: the paths the conversion reads.
        convert: called with the temporary folder to fill.

    Returns:
        The cache folder.
    """
    key = hashlib.sha1(str(pathlib.Path(source).resolve()).encode())
    for path in sorted(map(pathlib.Path, files)):
        stat = path.stat()
        key.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    cache = cache_root() / kind / key.hexdigest()[:16]
    if cache.is_dir():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        log.info("%s: converting %d file(s) into %s", source, len(files), cache)
        convert(tmp)
        os.rename(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache
