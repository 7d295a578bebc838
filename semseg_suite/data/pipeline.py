"""tf.data pipelines over a `DatasetInfo`: decoded pairs, training crops, whole images.

All training randomness is derived from ``(seed, epoch)``, so an epoch can be
replayed exactly and epochs differ.
"""

import numpy as np
import tensorflow as tf

from semseg_suite.data.augment import AugmentConfig, pair_augmenter
from semseg_suite.data.core import DatasetError, DatasetInfo, image_size, preprocess_image

# Decoded uint8 pairs (3 bytes of image and 1 of label per pixel) are kept in memory
# only when their estimated size is below this.
_CACHE_LIMIT_BYTES = 2 * 1024**3
_AUTOTUNE = tf.data.AUTOTUNE


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
    augment_pair = pair_augmenter(crop_size, preprocessing, augment, (seed, epoch))
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
    height, width = image_size(pairs[0][0])
    return height * width * 4 * len(pairs)


def _decode_files(info, files):
    """Decodes (image path, label path) elements into uint8 images and label ids."""
    channels = info.label_channels
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


