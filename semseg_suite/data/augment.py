"""Random augmentation of training pairs, in tf.data with stateless random ops.

Image and label always share the window, flips and geometry; the label is only
ever resampled nearest-neighbour, so no class id is interpolated.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from semseg_suite.data.core import IGNORE_INDEX, preprocess_image


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


def pair_augmenter(crop_size, preprocessing, config, base_seed):
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


