"""Segmentation datasets on disk: discovery, validation and tf.data pipelines.

Two folder layouts are recognised by their class table:

- colour (the old Semantic-Segmentation-Suite layout): ``train/ train_labels/ val/
  val_labels/ test/ test_labels/ class_dict.csv``. Labels are RGB images whose
  colours are the ``name,r,g,b`` rows of ``class_dict.csv``.
- index (the SegNet CamVid layout): ``train/ trainannot/ val/ valannot/ test/
  testannot/ classes.csv``. Labels are single-channel images whose values are row
  indices of ``classes.csv``.

Only ``train`` is required. Images and labels pair by file stem: image ``a.jpg``
goes with label ``a.png`` or ``a_L.png``, never by position in a sorted listing.

One class may be ignored (by default the one named void, unlabelled or unlabeled).
It is removed from the trainable classes, which keep their CSV order with
contiguous ids ``0..C-1``, and its pixels become ``IGNORE_INDEX``.

`load_dataset` checks the whole dataset before training starts and raises
`DatasetError` naming the offending file. `make_train_dataset` and
`make_eval_dataset` build the tf.data pipelines. All training randomness is derived
from ``(seed, epoch)``, so an epoch can be replayed exactly and epochs differ.
"""

import concurrent.futures
import csv
import dataclasses
import pathlib

import cv2
import keras
import numpy as np
import tensorflow as tf
from PIL import Image

IGNORE_INDEX = 255  # the void label of every label map the suite produces
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
VOID_NAMES = ("void", "unlabelled", "unlabeled")
PREPROCESSING_MODES = ("caffe", "tf", "torch")

# Decoded uint8 pairs (3 bytes of image and 1 of label per pixel) are kept in memory
# only when their estimated size is below this.
_CACHE_LIMIT_BYTES = 2 * 1024**3
_AUTOTUNE = tf.data.AUTOTUNE


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
class _Layout:
    csv_name: str
    label_suffix: str  # the label folder of split S is S + label_suffix
    label_channels: int  # 3: RGB colour labels, 1: class-index labels


_LAYOUTS = {
    "colour": _Layout("class_dict.csv", "_labels", 3),
    "index": _Layout("classes.csv", "annot", 1),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A validated dataset: its classes, label encoding and image/label pairs.

    Attributes:
        root: the dataset folder.
        layout: ``"colour"`` (RGB labels) or ``"index"`` (class-index labels).
        class_names: trainable classes in CSV order; the ignored class is not one.
        colors: RGB colour of each trainable class.
        ignored_name: name of the ignored class, or None when no CSV row is ignored.
        ignored_value: raw label value mapped to ``IGNORE_INDEX``: the ignored
            class's CSV row index, or else a raw index-label value (255 by default;
            colour labels have no raw values outside their colours).
        splits: split name -> ``(image_path, label_path)`` pairs sorted by stem,
            for the splits present.
        label_map: ``(raw key, train id)`` pairs sorted by key. A label pixel's raw
            key is its value (index layout) or ``0xRRGGBB`` (colour layout); its
            train id is in ``0..C-1`` or ``IGNORE_INDEX``. Other raw keys are
            invalid.
    """

    root: pathlib.Path
    layout: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignored_name: str | None
    ignored_value: int
    splits: dict[str, tuple[tuple[str, str], ...]]
    label_map: tuple[tuple[int, int], ...]
    # split -> decoded dataset with an in-memory .cache(), shared by the pipelines
    # of every epoch so that images are decoded once per DatasetInfo.
    _decoded_cache: dict = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_classes(self) -> int:
        """Number of trainable classes."""
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training pairs.

    Attributes:
        scale_range: (min, max) factor of the random rescale.
        h_flip: flip left-right with probability 1/2.
        v_flip: flip up-down with probability 1/2.
        brightness: maximum relative brightness change; 0.2 multiplies pixel values
            by a factor in [0.8, 1.2]. 0 disables it.
        rotation: maximum rotation in degrees, both ways. 0 disables it.
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    h_flip: bool = True
    v_flip: bool = False
    brightness: float = 0.0
    rotation: float = 0.0

    def __post_init__(self):
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < min <= max, got {low, high}")
        if not 0 <= self.brightness < 1:
            raise ValueError(f"brightness must be in [0, 1), got {self.brightness}")
        if self.rotation < 0:
            raise ValueError(f"rotation must be >= 0 degrees, got {self.rotation}")


def load_dataset(root, ignore_class=None, check_labels=True) -> DatasetInfo:
    """Finds, pairs and validates a dataset folder.

    Args:
        root: dataset folder in the colour or the index layout (see module doc).
        ignore_class: the class whose pixels are ignored. None: a class named void,
            unlabelled or unlabeled (any case) if there is one, else the raw label
            value 255. A str: that class name. An int below the number of CSV rows:
            that row. A larger int: that raw index-label value.
        check_labels: decode every label to check its size and values. Without it
            only image headers are read, and bad label values surface as a tf.data
            error during iteration.

    Returns:
        The dataset's `DatasetInfo`.

    Raises:
        DatasetError: the folder, class table, a split or a file is missing,
            unpaired, unreadable, of the wrong size or holds an unknown label value.
    """
    root = pathlib.Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    layout_name = _detect_layout(root)
    layout = _LAYOUTS[layout_name]
    csv_path = root / layout.csv_name
    names, colors = _read_class_table(csv_path)
    ignored_value = _resolve_ignored(csv_path, names, ignore_class)
    trainable = [row for row in range(len(names)) if row != ignored_value]
    if len(trainable) >= IGNORE_INDEX:
        raise DatasetError(f"{csv_path}: more than {IGNORE_INDEX - 1} classes")
    info = DatasetInfo(
        root=root,
        layout=layout_name,
        class_names=tuple(names[row] for row in trainable),
        colors=tuple(colors[row] for row in trainable),
        ignored_name=names[ignored_value] if ignored_value < len(names) else None,
        ignored_value=ignored_value,
        splits={
            split: _pair_files(root / split, root / f"{split}{layout.label_suffix}")
            for split in _present_splits(root, layout)
        },
        label_map=_label_map(layout_name, colors, trainable, ignored_value),
    )
    _check_pairs(info, check_labels)
    return info


def _detect_layout(root):
    """Returns the layout whose class table the folder holds."""
    found = [
        name for name, layout in _LAYOUTS.items() if (root / layout.csv_name).is_file()
    ]
    tables = " or ".join(layout.csv_name for layout in _LAYOUTS.values())
    if not found:
        raise DatasetError(f"{root}: no class table ({tables})")
    if len(found) > 1:
        raise DatasetError(f"{root}: both {tables} present; keep one")
    return found[0]


def _read_class_table(path):
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


def _resolve_ignored(csv_path, names, ignore_class):
    """Returns the ignored CSV row, or a raw label value >= len(names)."""
    if ignore_class is None:
        voids = [row for row, name in enumerate(names) if name.lower() in VOID_NAMES]
        return voids[0] if voids else IGNORE_INDEX
    if isinstance(ignore_class, str):
        if ignore_class not in names:
            raise DatasetError(
                f"{csv_path}: no class named {ignore_class!r}; "
                f"classes: {', '.join(names)}"
            )
        return names.index(ignore_class)
    if not 0 <= ignore_class <= 255:
        raise ValueError(
            f"ignore_class must be a class name or 0..255, got {ignore_class}"
        )
    return ignore_class


def _label_map(layout_name, colors, trainable, ignored_value):
    """(raw key, train id) pairs of every valid raw label value, sorted by key."""
    if layout_name == "colour":
        keys = [r << 16 | g << 8 | b for r, g, b in colors]
    else:
        keys = list(range(len(colors)))
    train_ids = {row: train_id for train_id, row in enumerate(trainable)}
    pairs = [(key, train_ids.get(row, IGNORE_INDEX)) for row, key in enumerate(keys)]
    if layout_name == "index" and ignored_value >= len(colors):
        pairs.append((ignored_value, IGNORE_INDEX))
    return tuple(sorted(pairs))


def _present_splits(root, layout):
    """Names of the splits with both folders; raises if one of a pair is missing."""
    present = []
    for split in SPLITS:
        folders = root / split, root / f"{split}{layout.label_suffix}"
        exists = [folder.is_dir() for folder in folders]
        if exists[0] != exists[1]:
            missing, found = folders if not exists[0] else folders[::-1]
            raise DatasetError(f"{missing}: missing, but {found.name}/ exists")
        if exists[0]:
            present.append(split)
    if "train" not in present:
        raise DatasetError(f"{root / 'train'}: missing train split")
    return present


def _pair_files(image_dir, label_dir):
    """Pairs images with labels by stem (label stem = image stem [+ "_L"])."""
    images = _files_by_stem(image_dir)
    labels = _files_by_stem(label_dir)
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


def _files_by_stem(folder):
    """Maps stem -> path for the image files of a folder, skipping hidden files."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in files:
            raise DatasetError(f"{path}: same stem as {files[path.stem].name}")
        files[path.stem] = path
    return files


def _check_pairs(info, check_labels):
    """Checks that every pair is readable and of one size, on a thread pool."""

    def check(pair):
        image_path, label_path = pair
        image_size = _image_size(image_path)
        if check_labels:
            label_size = decode_label_file(info, label_path).shape
        else:
            label_size = _image_size(label_path)
        if label_size != image_size:
            raise DatasetError(
                f"{label_path}: label is {label_size[0]}x{label_size[1]} (HxW), "
                f"its image {pathlib.Path(image_path).name} is "
                f"{image_size[0]}x{image_size[1]}"
            )

    pairs = [pair for split_pairs in info.splits.values() for pair in split_pairs]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(check, pairs))


def _image_size(path):
    """(height, width) from the image file's header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError:  # includes PIL.UnidentifiedImageError
        raise DatasetError(f"{path}: not a readable image") from None
    return height, width


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
    if info.layout == "colour":
        label = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"{path}: not a readable image")
    if info.layout == "colour":
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
            f"{_LAYOUTS[info.layout].csv_name} ({pixels})"
        )
    return train_ids


def _train_ids(info, label):
    """Maps an (H, W) index or (H, W, 3) RGB label to train ids, -1 where unknown."""
    raw, train_ids = np.array(info.label_map, dtype=np.int32).T
    if info.layout == "index":
        lookup = np.full(256, -1, dtype=np.int32)
        lookup[raw] = train_ids
        return lookup[label]
    label = label.astype(np.int32)
    keys = label[..., 0] << 16 | label[..., 1] << 8 | label[..., 2]
    position = np.searchsorted(raw, keys).clip(max=len(raw) - 1)
    return np.where(raw[position] == keys, train_ids[position], -1)


def _describe_raw_value(info, value):
    """Human-readable raw label value (an index or an RGB triple) for errors."""
    if info.layout == "colour":
        return f"colour {tuple(value.tolist())}"
    return f"value {value}"


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


def make_train_dataset(
    info: DatasetInfo,
    split: str,
    *,
    batch_size: int,
    crop_size: tuple[int, int],
    preprocessing: str,
    augment: AugmentConfig = AugmentConfig(),
    seed: int = 0,
    epoch: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """One epoch of shuffled, augmented, batched training crops.

    Per pair: a random rescale (image bilinear, label nearest); a random crop,
    padded at the bottom and right where the scaled image is smaller (image with 0
    after normalisation, label with IGNORE_INDEX); brightness; normalisation;
    flips; rotation (image bilinear with fill 0, label nearest with fill
    IGNORE_INDEX). Image and label always share the window, flips and angle.

    The file order is a shuffle seeded from ``(seed, epoch)``, and each pair's
    augmentation uses stateless random ops seeded from ``(seed, epoch, position)``:
    the same arguments give the same batches, another epoch gives others. Build
    one dataset per epoch.

    Args:
        info: the dataset.
        split: split name, e.g. ``"train"``.
        batch_size: pairs per batch; the last partial batch is dropped.
        crop_size: (height, width) of the crops.
        preprocessing: `preprocess_image` mode.
        augment: augmentation settings.
        seed: base random seed.
        epoch: epoch number, mixed into every seed.
        cache: keep the decoded split in memory when its estimated size is under
            2 GiB; the cache lives with `info` and serves every epoch.

    Returns:
        Dataset of (float32 images (B, h, w, 3), int32 labels (B, h, w)) with
        labels in ``0..C-1`` or ``IGNORE_INDEX``.
    """
    crop_height, crop_width = crop_size
    if crop_height < 1 or crop_width < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    num_pairs = len(_split_pairs(info, split))
    if batch_size > num_pairs:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {num_pairs} {split} pairs"
        )
    shuffle_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    augment_pair = _pair_augmenter(crop_size, preprocessing, augment, (seed, epoch))
    dataset = _decoded_pairs(info, split, cache, shuffle_seed).enumerate()
    dataset = dataset.map(
        augment_pair, num_parallel_calls=_AUTOTUNE, deterministic=True
    )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(_AUTOTUNE)


def make_eval_dataset(
    info: DatasetInfo, split: str, *, preprocessing: str, cache: bool = False
) -> tf.data.Dataset:
    """Whole images of a split, one per batch, in the order of ``info.splits``.

    Args:
        info: the dataset.
        split: split name, e.g. ``"val"``.
        preprocessing: `preprocess_image` mode.
        cache: as in `make_train_dataset`.

    Returns:
        Dataset of (float32 image (1, H, W, 3), int32 label (1, H, W)).
    """

    def normalise(image, label):
        return preprocess_image(image, preprocessing), tf.cast(label, tf.int32)

    dataset = _decoded_pairs(info, split, cache)
    dataset = dataset.map(normalise, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return dataset.batch(1).prefetch(_AUTOTUNE)


def _split_pairs(info, split):
    """The pairs of a split; raises if the dataset does not have it."""
    if split not in info.splits:
        raise DatasetError(
            f"{info.root / split}: no {split!r} split (found {', '.join(info.splits)})"
        )
    return info.splits[split]


def _decoded_pairs(info, split, cache, shuffle_seed=None):
    """Decoded (uint8 (H, W, 3) image, uint8 (H, W) label ids) pairs of a split.

    With a `shuffle_seed` the order is shuffled. Cached pairs are shuffled in
    memory, uncached ones as file names before decoding; both give the same order
    for the same seed.
    """
    pairs = _split_pairs(info, split)
    files = tf.data.Dataset.from_tensor_slices(tuple(map(list, zip(*pairs))))
    if cache and _decoded_bytes(pairs) < _CACHE_LIMIT_BYTES:
        if split not in info._decoded_cache:
            info._decoded_cache[split] = _decode_files(info, files).cache()
        decoded = info._decoded_cache[split]
        if shuffle_seed is None:
            return decoded
        return decoded.shuffle(len(pairs), seed=shuffle_seed)
    if shuffle_seed is not None:
        files = files.shuffle(len(pairs), seed=shuffle_seed)
    return _decode_files(info, files)


def _decoded_bytes(pairs):
    """Estimated decoded size of the pairs, from the first image's size."""
    height, width = _image_size(pairs[0][0])
    return height * width * 4 * len(pairs)


def _decode_files(info, files):
    """Decodes (image path, label path) elements into uint8 images and label ids."""
    channels = _LAYOUTS[info.layout].label_channels
    weights = tf.constant(256 ** np.arange(channels - 1, -1, -1), tf.int32)
    raw_keys, train_ids = zip(*info.label_map)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(raw_keys, tf.int32), tf.constant(train_ids, tf.int32)
        ),
        default_value=-1,
    )

    def decode(image_path, label_path):
        image = tf.io.decode_image(
            tf.io.read_file(image_path), channels=3, expand_animations=False
        )
        label = tf.io.decode_image(
            tf.io.read_file(label_path), channels=channels, expand_animations=False
        )
        label_ids = table.lookup(tf.reduce_sum(tf.cast(label, tf.int32) * weights, -1))
        tf.debugging.Assert(
            tf.reduce_all(label_ids >= 0),
            [label_path, "holds a value that is not in the class table"],
        )
        return image, tf.cast(label_ids, tf.uint8)

    return files.map(decode, num_parallel_calls=_AUTOTUNE, deterministic=True)


def _pair_augmenter(crop_size, preprocessing, config, base_seed):
    """Returns ``(position, (image, label)) -> (image, label)`` augmenting one pair.

    Only the rescale touches the whole image; brightness, normalisation, padding,
    flips and rotation run on the crop.
    """

    def augment(position, pair):
        image, label = pair
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        seeds = tf.random.experimental.stateless_split(element_seed, num=6)
        image, label = _random_scale(image, label, config.scale_range, seeds[0])
        image, label = _random_window(image, label, crop_size, seeds[1])
        if config.brightness:
            image = _random_brightness(image, config.brightness, seeds[2])
        image = preprocess_image(image, preprocessing)
        image, label = _pad_to_size(image, label, crop_size)
        image, label = _random_flips(image, label, config, seeds[3:5])
        if config.rotation:
            image, label = _random_rotation(image, label, config.rotation, seeds[5])
        return image, tf.cast(label[..., 0], tf.int32)

    return augment


def _random_scale(image, label, scale_range, seed):
    """Resizes by one random factor: image bilinear (to float32), label nearest.

    Takes the label as (H, W) and returns it as (H', W', 1).
    """
    scale = tf.random.stateless_uniform([], seed, *scale_range)
    size = tf.cast(tf.round(tf.cast(tf.shape(label), tf.float32) * scale), tf.int32)
    size = tf.maximum(size, 1)
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(label[..., None], size, method="nearest")
    return image, label


def _random_window(image, label, size, seed):
    """Slices one random window of `size` (or less, where the image is smaller).

    Followed by `_pad_to_size`, this equals padding to at least `size` at the bottom
    and right, then cropping a random `size` window.
    """
    shape = tf.shape(label)[:2]
    window = tf.minimum(shape, size)
    full_range = tf.random.stateless_uniform(
        [2], seed, minval=None, maxval=None, dtype=tf.int32
    )
    offset = full_range % (shape - window + 1)
    image = tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([window, [-1]], 0))
    label = tf.slice(label, tf.concat([offset, [0]], 0), tf.concat([window, [-1]], 0))
    return image, label


def _random_brightness(image, max_change, seed):
    """Multiplies [0, 255] pixel values by a random factor in 1 +- max_change."""
    factor = tf.random.stateless_uniform([], seed, 1 - max_change, 1 + max_change)
    return tf.clip_by_value(image * factor, 0.0, 255.0)


def _pad_to_size(image, label, size):
    """Pads bottom and right up to `size`: image with 0, label with IGNORE_INDEX.

    The inputs are at most `size`, so the outputs are exactly `size`.
    """
    shape = tf.shape(label)
    padding = [
        [0, tf.maximum(size[0] - shape[0], 0)],
        [0, tf.maximum(size[1] - shape[1], 0)],
        [0, 0],
    ]
    image = tf.ensure_shape(tf.pad(image, padding), (*size, 3))
    label = tf.pad(label, padding, constant_values=IGNORE_INDEX)
    return image, tf.ensure_shape(label, (*size, 1))


def _random_flips(image, label, config, seeds):
    """Flips image and label together, stacked as one 4-channel tensor.

    Returns the float32 image and the label as float32 (H, W, 1).
    """
    stacked = tf.concat([image, tf.cast(label, tf.float32)], axis=-1)
    if config.h_flip:
        stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[0])
    if config.v_flip:
        stacked = tf.image.stateless_random_flip_up_down(stacked, seeds[1])
    return stacked[..., :3], stacked[..., 3:]


def _random_rotation(image, label, max_degrees, seed):
    """Rotates about the centre by a random angle in [-max_degrees, max_degrees]."""
    degrees = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees)
    angle = degrees * np.pi / 180
    height, width = image.shape[:2]
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Projective transform mapping each output point (x, y) to its input point.
    transform = tf.stack([
        cos, -sin, center_x - cos * center_x + sin * center_y,
        sin, cos, center_y - sin * center_x - cos * center_y,
        0.0, 0.0,
    ])  # fmt: skip
    image = keras.ops.image.affine_transform(
        image, transform, "bilinear", fill_value=0, data_format="channels_last"
    )
    label = keras.ops.image.affine_transform(
        label,
        transform,
        "nearest",
        fill_value=IGNORE_INDEX,
        data_format="channels_last",
    )
    return image, label


def describe(info: DatasetInfo) -> str:
    """A short multi-line summary of a dataset."""
    if info.ignored_name is not None:
        ignored = f"{info.ignored_name} (label value {info.ignored_value})"
    elif info.layout == "index":
        ignored = f"label value {info.ignored_value}"
    else:
        ignored = "nothing"
    splits = ", ".join(f"{split} {len(pairs)}" for split, pairs in info.splits.items())
    lines = [
        f"dataset  {info.root} ({info.layout} labels)",
        f"classes  {info.num_classes}: {', '.join(info.class_names)}",
        f"ignored  {ignored} -> {IGNORE_INDEX}",
        f"pairs    {splits}",
    ]
    return "\n".join(lines)
