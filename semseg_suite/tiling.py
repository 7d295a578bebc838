"""Sliding-window and test-time-augmented inference, in TensorFlow ops only.

`probabilities(logits_fn, images, options)` is the one entry point: test.py,
predict.py and the exported serving graphs (`semseg_suite.export`) all call it, so
the mIoU gain of each option is measured with the code that is deployed. It runs
eagerly or inside a `tf.function` whose images have unknown height and width.

- **Sliding window** (``tile``, ``overlap``): square tiles (clipped to the image
  where it is smaller) placed evenly from one border to the other, so that
  neighbours share at least ``overlap`` pixels; each tile's softmax is weighted by a
  separable ramp that rises over the ``overlap`` pixels at its edges and is flat
  inside, and the sum is divided by the summed weights. The weight is positive
  everywhere, so a pixel seen by one tile gets that tile's output unchanged: one tile
  covering the image is whole-image inference, and no seam appears where a
  tile's context suffices.
- **Test-time augmentation** (``scales``, ``flip``): each view (every scale, and
  its horizontal mirror with ``flip``) is resized bilinearly, segmented (tiled if
  asked), its softmax mirrored back and resized to the input size; the views'
  softmaxes are averaged. The caller takes the argmax.
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How an image is turned into class probabilities.

    Attributes:
        tile: side of the square sliding-window tiles, or None for the whole image.
        overlap: pixels shared by neighbouring tiles (below `tile`).
        scales: input scales whose softmax outputs are averaged.
        flip: also average the horizontally flipped image's softmax.
    """

    tile: int | None = None
    overlap: int = 0
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.tile is not None and not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile), got overlap {self.overlap} for tile {self.tile}")
        if not self.scales or not all(scale > 0 for scale in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")

    @property
    def views(self) -> int:
        """Model passes per image and tile: one per scale, twice with flip."""
        return len(self.scales) * (2 if self.flip else 1)


def probabilities(logits_fn, images, options: InferenceOptions = InferenceOptions()) -> tf.Tensor:
    """Softmax probabilities of a batch of normalised images.

    Args:
        logits_fn: maps a float batch ``(B, h, w, 3)`` to logits ``(B, h, w, C)``
            of the same height and width, for any h and w.
        images: float ``(B, H, W, 3)``, normalised as the model expects.
        options: the `InferenceOptions`.

    Returns:
        float32 ``(B, H, W, C)``, the mean of the views' softmaxes (see module doc).
    """
    images = tf.convert_to_tensor(images)
    size = tf.shape(images)[1:3]
    total = None
    for scale in options.scales:
        scaled = images if scale == 1 else tf.image.resize(images, _scaled(size, scale), "bilinear")
        for flip in (False, True) if options.flip else (False,):
            view = tf.reverse(scaled, axis=[2]) if flip else scaled
            probs = _sliding_window(logits_fn, view, options.tile, options.overlap)
            if flip:
                probs = tf.reverse(probs, axis=[2])
            if scale != 1:
                probs = tf.image.resize(probs, size, "bilinear")
            total = probs if total is None else total + probs
    return total if options.views == 1 else total / options.views


def _softmax(logits_fn, images):
    return tf.nn.softmax(tf.cast(logits_fn(images), tf.float32), axis=-1)


def _scaled(size, scale):
    """(h, w) = round(size * scale), at least 1."""
    return tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)


def tile_starts(length, tile, overlap):
    """Start offsets of the tiles along one axis: evenly spaced, first at 0, last at the far border.

    Args:
        length: the image's length along the axis (int or scalar tensor).
        tile: the tile side; tiles are clipped to `length` where it is smaller.
        overlap: the least overlap between neighbours.

    Returns:
        int32 vector of offsets: one 0 if one tile covers the axis, else
        ``n = 1 + ceil((length - tile) / (tile - overlap))`` offsets
        ``floor(i * (length - tile) / (n - 1))``.
    """
    length = tf.convert_to_tensor(length, tf.int32)
    side = tf.minimum(length, tile)
    room = length - side
    stride = tile - overlap
    count = 1 + (room + stride - 1) // stride
    steps = tf.range(count)
    return tf.where(count > 1, steps * room // tf.maximum(count - 1, 1), 0)


def _ramp(side, overlap):
    """(side,) weights: rising linearly over `overlap` pixels at both ends, 1 inside, positive."""
    position = tf.range(side, dtype=tf.float32)
    distance = tf.minimum(position, tf.cast(side, tf.float32) - 1 - position)  # to the nearest edge
    return tf.minimum(1.0, (distance + 1) / (overlap + 1))


def _sliding_window(logits_fn, images, tile, overlap):
    if tile is None:
        return _softmax(logits_fn, images)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    tile_h, tile_w = tf.minimum(height, tile), tf.minimum(width, tile)
    starts_y, starts_x = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    count_x = tf.size(starts_x)
    # an outer product reshaped to (1, h, w, 1): TFLite has no kernel for new axes on dynamic tensors
    weight = tf.reshape(tf.reshape(_ramp(tile_h, overlap), [-1, 1]) * _ramp(tile_w, overlap), [1, tile_h, tile_w, 1])

    def place(index):
        """The weighted softmax of tile `index`, and its weight, padded to the image."""
        y0, x0 = starts_y[index // count_x], starts_x[index % count_x]
        crop = images[:, y0:y0 + tile_h, x0:x0 + tile_w, :]
        padding = [[0, 0], [y0, height - y0 - tile_h], [x0, width - x0 - tile_w], [0, 0]]
        return tf.pad(_softmax(logits_fn, crop) * weight, padding), tf.pad(weight, padding)

    first, weights = place(0)  # outside the loop: it fixes the number of classes

    def body(index, total, weights):
        probs, weight_here = place(index)
        return index + 1, total + probs, weights + weight_here

    _, total, weights = tf.while_loop(
        lambda index, *_: index < tf.size(starts_y) * count_x, body, (tf.constant(1), first, weights)
    )
    return total / weights
