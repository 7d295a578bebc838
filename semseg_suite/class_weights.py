"""Class weights for the pixel-wise losses, from the training labels or a file.

`class_weights(spec, info)` is the entry point behind ``--class-weights``:

- ``median-frequency`` (Eigen & Fergus 2015, used by SegNet): ``freq(c)`` = pixels
  of class c / pixels of the images in which c appears, ``w(c) = median(freq) /
  freq(c)``.
- ``enet`` (Paszke et al. 2016, ENet): ``w(c) = 1 / ln(1.02 + p(c))``, ``p(c)`` =
  pixels of class c / all pixels; weights run from 1.42 (p = 1) to 50.5 (p -> 0).
- a file path: the weights themselves (see `read_weights_file`).

Pixels are valid (non-void) pixels throughout: void pixels are in no class and
train nothing, so they count in neither numerators nor denominators.

A class absent from the training labels has no frequency; it gets the largest weight
of the present classes. It has no effect while training on those labels (no pixel
carries it), and if it does appear (other labels, another split) it is treated as
the rarest class rather than switched off.
"""

import dataclasses
import pathlib

import numpy as np

from semseg_suite.data import DatasetInfo, statistics

ENET_CONSTANT = 1.02  # ENet's c: caps weights at 1 / ln(1.02) = 50.5


class ClassWeightsError(ValueError):
    """Class weights cannot be computed or read (the message names the file)."""


@dataclasses.dataclass(frozen=True)
class PixelStatistics:
    """Valid-pixel counts of a split.

    Attributes:
        class_pixels: int64 (C,) pixels of each class.
        image_pixels: int64 (C,) for each class, the valid pixels of all images in
            which that class appears (0 for a class that appears nowhere).
    """

    class_pixels: np.ndarray
    image_pixels: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool (C,): the classes that appear in the split."""
        return self.class_pixels > 0


def pixel_statistics(info: DatasetInfo, split: str = "train") -> PixelStatistics:
    """Counts the pixels of every class in every label of a split.

    The counts are cached beside the dataset, keyed by its files
    (`semseg_suite.data.statistics`): the second run on unchanged files reads none.

    Args:
        info: the dataset.
        split: the split whose labels are read.

    Returns:
        The split's `PixelStatistics`.

    Raises:
        DatasetError: a label file is unreadable or holds an unknown value.
        ClassWeightsError: the dataset has no such split.
    """
    if split not in info.splits:
        raise ClassWeightsError(f"{info.root}: no {split!r} split (found {', '.join(info.splits)})")
    stats = statistics.split_statistics(info, split)
    return PixelStatistics(class_pixels=stats.class_pixels, image_pixels=stats.image_pixels)


def median_frequency(stats: PixelStatistics) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights).

    ``freq(c) = class_pixels[c] / image_pixels[c]``, ``w(c) = median(freq) /
    freq(c)``, the median taken over the present classes.
    """
    present = _check_present(stats)
    frequency = stats.class_pixels[present] / stats.image_pixels[present]
    return _fill_absent(np.median(frequency) / frequency, present)


def enet(stats: PixelStatistics) -> np.ndarray:
    """ENet's weighting (Paszke et al. 2016): ``w(c) = 1 / ln(1.02 + p(c))``.

    ``p(c) = class_pixels[c] / all valid pixels``.
    """
    present = _check_present(stats)
    probability = stats.class_pixels[present] / stats.class_pixels.sum()
    return _fill_absent(1.0 / np.log(ENET_CONSTANT + probability), present)


METHODS = {"median-frequency": median_frequency, "enet": enet}


def read_weights_file(path, class_names) -> np.ndarray:
    """Reads one positive, finite weight per class, in class order.

    Formats: ``.npy``, a 1-D array; any other file, text with one row per class,
    either ``weight`` or ``name,weight`` (names checked against `class_names`),
    with an optional ``name,weight`` header. Blank lines and lines starting with
    ``#`` are skipped.

    Args:
        path: the file.
        class_names: the trainable classes, in order.

    Returns:
        float32 (C,) weights.

    Raises:
        ClassWeightsError: the file is missing or unreadable, or its weights are not one
            positive finite number per class; the message names the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ClassWeightsError(
            f"{path}: class weights file not found (--class-weights takes "
            f"{', '.join(METHODS)} or a file)"
        )
    if path.suffix.lower() == ".npy":
        try:
            weights = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ClassWeightsError(f"{path}: not a readable .npy array ({error})") from None
        if weights.ndim != 1:
            raise ClassWeightsError(f"{path}: expected a 1-D array, got shape {weights.shape}")
    else:
        weights = _read_text_weights(path, class_names)
    if len(weights) != len(class_names):
        raise ClassWeightsError(
            f"{path}: {len(weights)} weights for {len(class_names)} classes "
            f"({', '.join(class_names)})"
        )
    try:
        weights = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ClassWeightsError(f"{path}: weights must be numbers") from None
    bad = ~(np.isfinite(weights) & (weights > 0))
    if bad.any():
        index = int(np.argmax(bad))
        raise ClassWeightsError(
            f"{path}: weights must be positive and finite; class "
            f"{class_names[index]!r} has {weights[index]}"
        )
    return weights.astype(np.float32)


def class_weights(spec: str, info: DatasetInfo, split: str = "train") -> np.ndarray:
    """The weights ``--class-weights`` names.

    Args:
        spec: ``"median-frequency"``, ``"enet"`` or a file path (`read_weights_file`).
        info: the dataset; its `split` labels are read for the computed weights.
        split: the split the statistics come from.

    Returns:
        float32 (C,) weights, one per trainable class of `info`.
    """
    if spec in METHODS:
        return METHODS[spec](pixel_statistics(info, split)).astype(np.float32)
    return read_weights_file(spec, info.class_names)


def _check_present(stats):
    """The present-class mask; raises if no class appears at all."""
    if not stats.present.any():
        raise ClassWeightsError("the labels hold no valid pixel: no class weights can be computed")
    return stats.present


def _fill_absent(present_weights, present):
    """(C,) weights: `present_weights` at present classes, their maximum elsewhere."""
    weights = np.full(present.shape, present_weights.max(), dtype=np.float64)
    weights[present] = present_weights
    return weights


def _read_text_weights(path, class_names):
    """Weights from a text file of ``weight`` or ``name,weight`` rows."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ClassWeightsError(f"{path}: not a readable text file ({error})") from None
    rows = [
        (number, [field.strip() for field in line.split(",")])
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if rows and [field.lower() for field in rows[0][1]] == ["name", "weight"]:
        rows = rows[1:]
    weights = []
    for index, (number, fields) in enumerate(rows):
        where = f"{path}:{number}"
        if len(fields) not in (1, 2):
            raise ClassWeightsError(f"{where}: expected weight or name,weight, got {','.join(fields)}")
        if len(fields) == 2 and index < len(class_names) and fields[0] != class_names[index]:
            raise ClassWeightsError(
                f"{where}: class {fields[0]!r}, expected {class_names[index]!r} "
                "(rows must follow the class order)"
            )
        try:
            weights.append(float(fields[-1]))
        except ValueError:
            raise ClassWeightsError(f"{where}: weight {fields[-1]!r} is not a number") from None
    return weights
