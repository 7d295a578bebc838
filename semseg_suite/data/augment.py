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
        contrast: maximum contrast change in [0, 1); the factor is in 1 +- contrast.
            0 disables it.
        saturation: maximum saturation change in [0, 1); the factor is in
            1 +- saturation. 0 disables it.
        hue: maximum hue shift in [0, 0.5], as a fraction of the hue circle. 0 disables it.
        blur_prob: probability in [0, 1] of a Gaussian blur of the image. 0 disables it.
        blur_sigma: maximum blur sigma in pixels, in (0, 10]; sigma is sampled in
            [0.1, blur_sigma].
        grayscale_prob: probability in [0, 1] of turning the image grayscale.
        cutout_prob: probability in [0, 1] of one cutout rectangle: image 0 after
            normalisation, label IGNORE_INDEX.
        cutout_size: maximum cutout height and width in (0, 1], as a fraction of the crop.
        random_order: run the photometric ops in a random order per image instead of
            the fixed order brightness, contrast, saturation, hue, grayscale, blur.
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    h_flip: bool = True
    v_flip: bool = False
    brightness: float = 0.0
    rotation: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: float = 1.0
    grayscale_prob: float = 0.0
    cutout_prob: float = 0.0
    cutout_size: float = 0.25
    random_order: bool = False

    def __post_init__(self):
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < min <= max, got {low, high}")
        if not 0 <= self.brightness < 1:
            raise ValueError(f"brightness must be in [0, 1), got {self.brightness}")
        if self.rotation < 0:
            raise ValueError(f"rotation must be >= 0 degrees, got {self.rotation}")
        for name in ("contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("blur_prob", "grayscale_prob", "cutout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.blur_sigma <= 10:
            raise ValueError(f"blur_sigma must be in (0, 10], got {self.blur_sigma}")
        if not 0 < self.cutout_size <= 1:
            raise ValueError(f"cutout_size must be in (0, 1], got {self.cutout_size}")


def pair_augmenter(crop_size, preprocessing, config, base_seed):
    """Returns ``(position, (image, label)) -> (image, label)`` augmenting one pair.

    Only the rescale touches the whole image; the photometric ops (on [0, 255]
    floats), normalisation, padding, flips, rotation and cutout run on the crop.
    Photometric ops draw their seeds by folding fixed indices into the pair's seed,
    so the geometry is the same with or without them.
    """

    def augment(position, pair):
        image, label = pair
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        seeds = tf.random.experimental.stateless_split(element_seed, num=6)
        image, label = _random_scale(image, label, config.scale_range, seeds[0])
        image, label = _random_window(image, label, crop_size, seeds[1])
        image = _photometric(image, config, seeds[2], element_seed)
        image = preprocess_image(image, preprocessing)
        image, label = _pad_to_size(image, label, crop_size)
        image, label = _random_flips(image, label, config, seeds[3:5])
        if config.rotation:
            image, label = _random_rotation(image, label, config.rotation, seeds[5])
        if config.cutout_prob:
            cutout_seed = tf.random.experimental.stateless_fold_in(element_seed, 107)
            image, label = _random_cutout(image, label, config, cutout_seed)
        return image, tf.cast(label[..., 0], tf.int32)

    return augment


def photometric_ops(config, brightness_seed, element_seed):
    """Returns the enabled photometric ops, in the fixed order, as image -> image.

    Args:
        config: the AugmentConfig.
        brightness_seed: seed of the brightness factor (as before the other ops).
        element_seed: the pair's seed; op k folds in 100 + k.
    """

    def seed(index):
        return tf.random.experimental.stateless_fold_in(element_seed, 100 + index)

    ops = []
    if config.brightness:
        ops.append(lambda image: _random_brightness(image, config.brightness, brightness_seed))
    if config.contrast:
        ops.append(lambda image: _random_contrast(image, config.contrast, seed(1)))
    if config.saturation:
        ops.append(lambda image: _random_saturation(image, config.saturation, seed(2)))
    if config.hue:
        ops.append(lambda image: _random_hue(image, config.hue, seed(3)))
    if config.grayscale_prob:
        ops.append(lambda image: _random_grayscale(image, config.grayscale_prob, seed(4)))
    if config.blur_prob:
        ops.append(lambda image: _random_blur(image, config.blur_prob, config.blur_sigma, seed(5)))
    return ops


def _photometric(image, config, brightness_seed, element_seed):
    """Applies the photometric ops, fixed or (``random_order``) randomly permuted."""
    image = tf.cast(image, tf.float32)
    ops = photometric_ops(config, brightness_seed, element_seed)
    if not config.random_order or len(ops) < 2:
        for op in ops:
            image = op(image)
        return image
    order_seed = tf.random.experimental.stateless_fold_in(element_seed, 106)
    order = tf.argsort(tf.random.stateless_uniform([len(ops)], order_seed))
    for step in range(len(ops)):
        image = tf.switch_case(order[step], [lambda op=op: op(image) for op in ops])
    return image


def _random_contrast(image, max_change, seed):
    """tf.image.adjust_contrast by a random factor in 1 +- max_change, on [0, 255]."""
    factor = tf.random.stateless_uniform([], seed, 1 - max_change, 1 + max_change)
    return tf.clip_by_value(tf.image.adjust_contrast(image, factor), 0.0, 255.0)


def _random_saturation(image, max_change, seed):
    """tf.image.adjust_saturation by a random factor in 1 +- max_change."""
    factor = tf.random.stateless_uniform([], seed, 1 - max_change, 1 + max_change)
    return tf.clip_by_value(tf.image.adjust_saturation(image / 255, factor), 0.0, 1.0) * 255


def _random_hue(image, max_shift, seed):
    """tf.image.adjust_hue by a random shift in [-max_shift, max_shift] of the circle."""
    delta = tf.random.stateless_uniform([], seed, -max_shift, max_shift)
    return tf.clip_by_value(tf.image.adjust_hue(image / 255, delta), 0.0, 1.0) * 255


def _random_grayscale(image, probability, seed):
    """With `probability`, replaces RGB by its tf.image.rgb_to_grayscale in all channels."""
    apply = tf.random.stateless_uniform([], seed) < probability
    gray = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])
    return tf.where(apply, gray, image)


def _random_blur(image, probability, max_sigma, seed):
    """With `probability`, a separable Gaussian blur with sigma in [0.1, max_sigma].

    The kernel radius is ceil(3 * max_sigma); each pass is a depthwise convolution
    normalised by the kernel weight inside the image, so constants stay constant and
    small crops need no reflection.
    """
    apply_seed, sigma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply = tf.random.stateless_uniform([], apply_seed) < probability
    sigma = tf.random.stateless_uniform([], sigma_seed, min(0.1, max_sigma), max_sigma)
    radius = max(1, int(np.ceil(3 * max_sigma)))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    blurred = image[None]
    ones = tf.ones_like(blurred[..., :1])
    for shape in ([1, 2 * radius + 1, 1, 1], [2 * radius + 1, 1, 1, 1]):
        filters = tf.reshape(kernel, shape)
        weight = tf.nn.depthwise_conv2d(ones, filters, [1, 1, 1, 1], "SAME")
        filters = tf.tile(filters, [1, 1, 3, 1])
        blurred = tf.nn.depthwise_conv2d(blurred, filters, [1, 1, 1, 1], "SAME") / weight
    return tf.where(apply, blurred[0], image)


def _random_cutout(image, label, config, seed):
    """With `cutout_prob`, one random rectangle: image 0, label IGNORE_INDEX.

    Height and width are each up to ``cutout_size`` of the crop (at least 1 pixel);
    the centre is uniform over the crop and the rectangle is clipped to it.
    """
    height, width = image.shape[:2]
    draws = tf.random.stateless_uniform([5], seed)
    size = tf.maximum(1.0, tf.round(draws[1:3] * config.cutout_size * [height, width]))
    centre = draws[3:5] * [height, width]
    top, left = tf.unstack(tf.cast(tf.floor(centre - size / 2), tf.int32))
    bottom, right = tf.unstack(tf.cast(tf.floor(centre - size / 2), tf.int32) + tf.cast(size, tf.int32))
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    inside &= draws[0] < config.cutout_prob
    image = tf.where(inside, 0.0, image)
    label = tf.where(inside, tf.cast(IGNORE_INDEX, label.dtype), label)
    return image, label


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


