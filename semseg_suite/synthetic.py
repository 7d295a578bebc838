"""The built-in synthetic dataset: textured shapes on cluttered backgrounds.

Each scene has a smooth random background crossed by thin clutter lines, and three
to six overlapping shapes (disks, rotated rectangles, triangles, rings) of varied
sizes. Every shape is textured in a random dark and a random bright colour, so
colour never tells the class. Each class has a typical texture (disks stripes,
rectangles checkers, triangles dots, rings blotches) worn 80% of the time, else a
random one: texture is a quick but unreliable cue, and shape settles the rest. The
image is blurred and noised. A ``Void`` band, two pixels wide, marks every boundary
between classes, so the ignore path is exercised.

Learnable but not trivial: DeepLabV3_plus on a randomly initialised MobileNetV2,
trained for 6 epochs of 50 batches of 8 crops of 128x128 (Adam, 1e-3), reaches a
validation mIoU of 0.42; predicting Background everywhere scores 0.14.

The dataset is written in the colour layout of `semseg_suite.data` (``train/
train_labels/ val/ val_labels/ test/ test_labels/ class_dict.csv``). Every image is
drawn from its own generator seeded by ``(seed, split, index)``: the same seed and
library versions write the same bytes, whatever the number of images.
"""

import csv
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

DATASET_NAME = "synthetic-shapes-v1"
CACHE_ENV_VAR = "SEMSEG_SUITE_CACHE"
SPLITS = ("train", "val", "test")


# Patterns: (rng, y, x) -> values in [0, 1], from (H, W) float pixel coordinates.


def _stripes(rng, y, x):
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    return np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period) > 0


def _checker(rng, y, x):
    cell = rng.integers(3, 9)
    return (y // cell + x // cell) % 2


def _dots(rng, y, x):
    period = rng.uniform(6, 12)
    offset_y, offset_x = (y % period) - period / 2, (x % period) - period / 2
    return np.hypot(offset_y, offset_x) < period * rng.uniform(0.2, 0.4)


def _blotches(rng, y, x):
    cells = rng.integers(8, 24, size=2)
    noise = rng.random(cells).astype(np.float32)
    return cv2.resize(noise, x.shape[::-1], interpolation=cv2.INTER_LINEAR)


def _gradient(rng, y, x):
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    return (ramp - ramp.min()) / np.ptp(ramp)


_PATTERNS = (_stripes, _checker, _dots, _blotches, _gradient)


def _texture(rng, pattern, height, width):
    """Paints `pattern` from a random dark to a random bright colour: (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    low, high = rng.uniform(0, 110, size=3), rng.uniform(145, 255, size=3)
    return low + (high - low) * pattern(rng, y, x)[..., None]


def _draw_disk(mask, rng, center, radius):
    cv2.circle(mask, center, radius, 1, thickness=cv2.FILLED)


def _draw_rectangle(mask, rng, center, radius):
    width, height = radius * rng.uniform(0.8, 2.0, size=2)
    corners = cv2.boxPoints((center, (width, height), rng.uniform(0, 180)))
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)


def _draw_triangle(mask, rng, center, radius):
    angles = rng.uniform(0, 2 * np.pi) + np.radians([0, 120, 240])
    angles += rng.uniform(-0.3, 0.3, size=3)
    corners = np.array(center) + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)


def _draw_ring(mask, rng, center, radius):
    thickness = max(3, round(radius * rng.uniform(0.25, 0.5)))
    cv2.circle(mask, center, radius, 1, thickness=thickness)


# Shape classes: name, how to draw it, its typical texture. The class id of shape k
# is k + 1.
_SHAPES = (
    ("Disk", _draw_disk, _stripes),
    ("Rectangle", _draw_rectangle, _checker),
    ("Triangle", _draw_triangle, _dots),
    ("Ring", _draw_ring, _blotches),
)
# A shape wears its typical texture this often, else any texture: the texture is
# a quick cue, and shape is needed to get the rest right.
_TYPICAL_TEXTURE_RATE = 0.8
CLASS_NAMES = ("Background", *(name for name, _, _ in _SHAPES), "Void")
CLASS_COLORS = (
    (64, 64, 64),
    (220, 20, 60),
    (0, 0, 142),
    (250, 170, 30),
    (107, 142, 35),
    (0, 0, 0),
)
_VOID = CLASS_NAMES.index("Void")


def _background(rng, height, width):
    """Smooth colour noise over a colour gradient, crossed by thin random lines."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3))
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    image = 0.5 * smooth + 0.5 * _texture(rng, _gradient, height, width)
    for _ in range(rng.integers(3, 9)):
        start, end = rng.integers(0, (width, height), size=(2, 2)).tolist()
        color = rng.uniform(0, 255, size=3).tolist()
        cv2.line(image, start, end, color, thickness=int(rng.integers(1, 3)))
    return image


def _render_scene(rng, height, width):
    """Draws one scene.

    Args:
        rng: numpy random Generator.
        height: image height.
        width: image width.

    Returns:
        (uint8 RGB image (H, W, 3), uint8 class ids (H, W)), ids indexing
        `CLASS_NAMES`.
    """
    image = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    min_side = min(height, width)
    for _ in range(rng.integers(3, 7)):
        shape = rng.integers(len(_SHAPES))
        _, draw, pattern = _SHAPES[shape]
        if rng.random() > _TYPICAL_TEXTURE_RATE:
            pattern = _PATTERNS[rng.integers(len(_PATTERNS))]
        mask = np.zeros((height, width), dtype=np.uint8)
        center = tuple(rng.integers(0, (width, height)).tolist())
        draw(mask, rng, center, round(min_side * rng.uniform(0.1, 0.3)))
        inside = mask.astype(bool)
        image[inside] = _texture(rng, pattern, height, width)[inside]
        label[inside] = shape + 1
    boundary = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    label[boundary > 0] = _VOID
    image = cv2.GaussianBlur(image, (3, 3), 0) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate_dataset(root, *, num_train, num_val, num_test, size, seed=0):
    """Writes the synthetic dataset into `root` (created if needed).

    Splits with no pairs get no folders.

    Args:
        root: output folder.
        num_train: number of training pairs.
        num_val: number of validation pairs.
        num_test: number of test pairs.
        size: side of the square images, or their (height, width).
        seed: base seed; the same seed writes the same bytes.
    """
    root = pathlib.Path(root)
    height, width = (size, size) if isinstance(size, int) else size
    palette = np.array(CLASS_COLORS, dtype=np.uint8)
    counts = dict(zip(SPLITS, (num_train, num_val, num_test)))
    root.mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate(counts.items()):
        if count == 0:
            continue
        (root / split).mkdir(exist_ok=True)
        (root / f"{split}_labels").mkdir(exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image, label = _render_scene(rng, height, width)
            name = f"{split}_{index:04d}.png"
            image_bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            label_bgr = cv2.cvtColor(palette[label], cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(root / split / name), image_bgr)
            cv2.imwrite(str(root / f"{split}_labels" / name), label_bgr)
    with (root / "class_dict.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "r", "g", "b"])
        rows = zip(CLASS_NAMES, CLASS_COLORS)
        writer.writerows([name, *color] for name, color in rows)


def builtin_dataset_dir(cache_dir=None) -> pathlib.Path:
    """Folder of the built-in dataset.

    Args:
        cache_dir: cache folder; defaults to ``$SEMSEG_SUITE_CACHE`` if set, else
            ``~/.cache/semseg_suite``.

    Returns:
        ``<cache_dir>/synthetic-shapes-v1``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or "~/.cache/semseg_suite"
    return pathlib.Path(cache_dir).expanduser() / DATASET_NAME


def ensure_builtin_dataset(
    cache_dir=None, *, num_train=400, num_val=50, num_test=50, size=160
) -> pathlib.Path:
    """Returns the built-in dataset's folder, generating it on first use.

    The dataset is written to a temporary folder next to its final place and then
    renamed, so an interrupted run never leaves a partial dataset behind. An
    existing dataset is reused as is: the other arguments apply only when it is
    generated.

    Args:
        cache_dir: see `builtin_dataset_dir`.
        num_train: number of training pairs.
        num_val: number of validation pairs.
        num_test: number of test pairs.
        size: side of the square images, or their (height, width).

    Returns:
        The dataset folder, ready for `semseg_suite.data.load_dataset`.
    """
    target = builtin_dataset_dir(cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{DATASET_NAME}-", dir=target.parent)
    )
    try:
        generate_dataset(
            staging, num_train=num_train, num_val=num_val, num_test=num_test, size=size
        )
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process finished first; its dataset is complete.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
