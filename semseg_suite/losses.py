"""Segmentation losses that decompose over replicas, picked by a spec like "ce+dice".

Every loss is a weighted sum of terms, each a ratio of two sums over the pixels or
images of a batch:

    loss = sum_k coefficients[k] * numerators[k] / denominators[k]

The denominators depend on the labels only, so a distributed loop can compute them
before the forward pass, SUM them over replicas, and let every replica divide its own
numerators by the global denominators (`combine`). Summed over replicas, the losses
(and so the gradients) then equal the loss of the whole global batch on one device,
however void pixels are spread over replicas. A single device just calls the loss.

Labels are int (B, H, W) or (B, H, W, 1). Void pixels (labels equal to
`ignore_index` or outside [0, C)) count for nothing, in numerators and denominators,
and their logits get zero gradient. Logits (B, H, W, C) may be bfloat16 or float16
(mixed precision); everything is computed in float32. Shapes never depend on data,
so every loss runs under `tf.function(jit_compile=True)` and in replica contexts.

`get_loss(spec, num_classes=...)` is the one entry point; `LOSSES` maps each name
of a spec to its factory.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from semseg_suite.data import IGNORE_INDEX, valid_pixels

# Default ohem_ratio. Pohlen et al.'s FRRN code keeps the 512*32 hardest of the
# 256x512 pixels of each Cityscapes image for FRRN A (1/8) and 512*64 of 512x1024
# for FRRN B (1/16); the larger fraction suits the smaller crops used here.
DEFAULT_OHEM_RATIO = 0.125
_TINY = float(np.finfo(np.float32).tiny)
_WEIGHTED = ("ce", "focal", "ohem")  # the losses that take class weights


class LossError(ValueError):
    """A loss spec, term weight or class weights that cannot be used."""


class SegmentationLoss:
    """A loss of the form ``sum_k coefficients[k] * numerators[k] / denominators[k]``.

    Subclasses implement `denominators` and `numerators`; numerators and
    denominators are sums over the pixels or images of the batch, so those of two
    halves of a batch add up to those of the whole batch.

    Attributes:
        names: name of each term, e.g. ``("ce", "dice")``.
        coefficients: weight of each term.
        class_weights: float32 (C,) array the loss applies, or None.
        ignore_index: the void label.
    """

    names: tuple[str, ...] = ()
    coefficients: tuple[float, ...] = ()
    class_weights: np.ndarray | None = None
    ignore_index: int = IGNORE_INDEX

    def denominators(self, labels, num_classes) -> tf.Tensor:
        """float32 (num_terms,) sums that depend on the labels only."""
        raise NotImplementedError

    def numerators(self, labels, logits) -> tf.Tensor:
        """float32 (num_terms,) sums of the batch's per-pixel or per-image losses."""
        raise NotImplementedError

    def combine(self, numerators, denominators) -> tf.Tensor:
        """``sum_k coefficients[k] * numerators[k] / denominators[k]``, a scalar.

        A term whose denominator is 0 (no valid pixel) has a numerator of 0 and
        adds 0.
        """
        ratios = tf.math.divide_no_nan(numerators, denominators)
        return tf.reduce_sum(tf.constant(self.coefficients, tf.float32) * ratios)

    def __call__(self, labels, logits) -> tf.Tensor:
        """The loss of one batch on one device, a float32 scalar."""
        logits = tf.convert_to_tensor(logits)
        num_classes = _num_classes(logits)
        return self.combine(
            self.numerators(labels, logits), self.denominators(labels, num_classes)
        )

    @property
    def spec(self) -> str:
        """The terms as a `get_loss` spec, e.g. ``"ce+0.5*dice"``."""
        return "+".join(
            name if coefficient == 1 else f"{coefficient:g}*{name}"
            for coefficient, name in zip(self.coefficients, self.names)
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.spec!r})"


class _Term(SegmentationLoss):
    """A loss of one term; subclasses implement `_numerator` and `_denominator`.

    Both receive `safe` labels (void pixels set to 0, shape (B, H, W)) and the
    boolean `valid` mask; `_numerator` also receives float32 logits.
    """

    name = ""

    def __init__(self, ignore_index=IGNORE_INDEX):
        self.ignore_index = int(ignore_index)
        self.names = (self.name,)
        self.coefficients = (1.0,)

    def denominators(self, labels, num_classes):
        safe, valid = _safe_labels(labels, num_classes, self.ignore_index)
        return tf.reshape(self._denominator(safe, valid), [1])

    def numerators(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        safe, valid = _safe_labels(labels, _num_classes(logits), self.ignore_index)
        return tf.reshape(self._numerator(safe, valid, logits), [1])

    def _denominator(self, safe, valid):
        raise NotImplementedError

    def _numerator(self, safe, valid, logits):
        raise NotImplementedError


class CrossEntropy(_Term):
    """Softmax cross-entropy, the mean over valid pixels.

    numerator = sum over valid pixels of ``w[y] * -log softmax(logits)[y]``,
    denominator = sum over valid pixels of ``w[y]``, with ``w = 1`` without class
    weights. With class weights this is PyTorch's weighted mean
    (``nn.CrossEntropyLoss(weight=w)``): the weights change how much each class
    counts, not the scale of the loss.

    Args:
        ignore_index: void label.
        class_weights: (C,) weight of each class, or None.
    """

    name = "ce"

    def __init__(self, ignore_index=IGNORE_INDEX, class_weights=None):
        super().__init__(ignore_index)
        self.class_weights = class_weights

    def _denominator(self, safe, valid):
        return tf.reduce_sum(_pixel_weights(safe, valid, self.class_weights))

    def _numerator(self, safe, valid, logits):
        weights = _pixel_weights(safe, valid, self.class_weights)
        return tf.reduce_sum(weights * _pixel_cross_entropy(safe, valid, logits))


class FocalLoss(CrossEntropy):
    """Focal loss of Lin et al. 2017, "Focal Loss for Dense Object Detection".

    Per pixel ``FL = -(1 - p_t)^gamma * log p_t`` with ``p_t`` the softmax
    probability of the true class; gamma = 2 is the paper's best setting. The mean
    is taken over valid pixels as for `CrossEntropy`. Class weights play the role of
    the paper's alpha_t (a factor per true class); unlike the paper, which divides
    by the number of anchors, the mean divides by the sum of the weights, so that
    with gamma = 0 the focal loss equals the (weighted) cross-entropy.

    Args:
        ignore_index: void label.
        class_weights: (C,) weight of each class, or None.
        gamma: focusing parameter, >= 0.
    """

    name = "focal"

    def __init__(self, ignore_index=IGNORE_INDEX, class_weights=None, gamma=2.0):
        super().__init__(ignore_index, class_weights)
        if not gamma >= 0:
            raise LossError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def _numerator(self, safe, valid, logits):
        cross_entropy = _pixel_cross_entropy(safe, valid, logits)  # -log p_t
        one_minus_p = -tf.math.expm1(-cross_entropy)  # 1 - p_t, exact near p_t = 1
        # The floor keeps the gradient of x^gamma finite at x = 0 when gamma < 1.
        modulation = tf.pow(tf.maximum(one_minus_p, _TINY), self.gamma)
        weights = _pixel_weights(safe, valid, self.class_weights)
        return tf.reduce_sum(weights * modulation * cross_entropy)


class HardPixelCrossEntropy(_Term):
    """Online hard example mining: bootstrapped cross-entropy on the hardest pixels.

    Online bootstrapping of Wu et al. 2016 ("Bridging category-level and
    instance-level semantic image segmentation"), as the bootstrapped cross-entropy
    of Pohlen et al. 2017 (FRRN): in each image only the k valid pixels with the
    largest loss count, k = ceil(ratio * valid pixels of the image), at least 1.
    The default ratio 1/8 is FRRN A's (the 512*32 hardest of 256x512 pixels); FRRN
    B keeps 1/16 at 512x1024.

    numerator = sum of the kept pixels' losses, denominator = number of kept pixels
    (summed over images; it depends on the labels only). Class weights multiply each
    pixel's cross-entropy before the ranking, so heavier classes are kept more often;
    the denominator stays a pixel count.

    Args:
        ignore_index: void label.
        class_weights: (C,) weight of each class, or None.
        ratio: fraction of each image's valid pixels kept, in (0, 1].
    """

    name = "ohem"

    def __init__(self, ignore_index=IGNORE_INDEX, class_weights=None, ratio=DEFAULT_OHEM_RATIO):
        super().__init__(ignore_index)
        if not 0 < ratio <= 1:
            raise LossError(f"ohem_ratio must be in (0, 1], got {ratio}")
        self.class_weights = class_weights
        self.ratio = float(ratio)

    def _kept_per_image(self, valid):
        """int32 (B,): pixels kept per image, 0 for an image without valid pixels."""
        count = _count(valid, axis=[1, 2])
        kept = tf.maximum(tf.math.ceil(self.ratio * count), 1.0)
        return tf.cast(tf.where(count > 0, kept, 0.0), tf.int32)

    def _denominator(self, safe, valid):
        return tf.cast(tf.reduce_sum(self._kept_per_image(valid)), tf.float32)

    def _numerator(self, safe, valid, logits):
        weights = _pixel_weights(safe, valid, self.class_weights)
        # Void pixels have loss 0, the least a valid pixel can have: where one of
        # them ranks among the k kept, it ties with a valid 0 and the sum is the same.
        losses = weights * _pixel_cross_entropy(safe, valid, logits)
        losses = tf.reshape(losses, [tf.shape(losses)[0], -1])
        ranked = tf.sort(losses, axis=-1, direction="DESCENDING")
        rank = tf.range(tf.shape(ranked)[1])
        kept = rank[None, :] < self._kept_per_image(valid)[:, None]
        return tf.reduce_sum(tf.where(kept, ranked, 0.0))


class _PerImageTerm(_Term):
    """A loss averaged over the images that have at least one valid pixel.

    numerator = sum of the per-image losses (`_image_losses`, 0 for an image
    without valid pixels), denominator = number of images with a valid pixel.
    """

    def _denominator(self, safe, valid):
        return _count(tf.reduce_any(valid, axis=[1, 2]), axis=0)

    def _numerator(self, safe, valid, logits):
        num_classes = _num_classes(logits)
        batch = tf.shape(logits)[0]
        probabilities = tf.reshape(tf.nn.softmax(logits), [batch, -1, num_classes])
        valid = tf.reshape(valid, [batch, -1])
        # One-hot labels, all zero at void pixels: (B, N, C).
        truth = tf.one_hot(tf.reshape(safe, [batch, -1]), num_classes)
        truth = tf.where(valid[..., None], truth, 0.0)
        probabilities = tf.where(valid[..., None], probabilities, 0.0)
        losses = self._image_losses(probabilities, truth, valid)
        return tf.reduce_sum(tf.where(tf.reduce_any(valid, axis=1), losses, 0.0))

    def _image_losses(self, probabilities, truth, valid):
        """(B,) losses from (B, N, C) probabilities and one-hot truth, both 0 at
        void pixels, and the (B, N) valid mask."""
        raise NotImplementedError


class DiceLoss(_PerImageTerm):
    """Soft multi-class Dice loss on softmax probabilities, per image.

    The soft Dice of Milletari et al. 2016 (V-Net) in the multi-class form of Sudre
    et al. 2017 (generalised Dice) with equal class weights, and linear (not
    squared) sums in the denominator. For each image and each class c present in
    its valid labels: ``dice_c = (2 sum p_c g_c + s) / (sum p_c + sum g_c + s)``
    over the valid pixels, with smoothing s = 1 (a pixel, negligible against the
    pixel counts). The image's loss is 1 - the mean of dice_c over the present
    classes, like Berman et al.'s classes="present" for Lovasz: an image's loss does
    not shrink with the number of classes it lacks, and predicting an absent class
    still costs through the lower probability of the true one.

    Class weights do not apply: every present class already counts equally.

    Args:
        ignore_index: void label.
        smooth: s, >= 0.
    """

    name = "dice"

    def __init__(self, ignore_index=IGNORE_INDEX, smooth=1.0):
        super().__init__(ignore_index)
        if not smooth >= 0:
            raise LossError(f"dice smoothing must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def _image_losses(self, probabilities, truth, valid):
        intersection = tf.reduce_sum(probabilities * truth, axis=1)  # (B, C)
        truth_sum = tf.reduce_sum(truth, axis=1)
        total = tf.reduce_sum(probabilities, axis=1) + truth_sum
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return 1.0 - _mean_over_present(dice, truth_sum > 0)


class LovaszSoftmax(_PerImageTerm):
    """Lovasz-softmax loss of Berman et al. 2018, per image, classes="present".

    For each image and each class c present in its valid labels, the pixel errors
    ``|g_c - p_c|`` are sorted in decreasing order and dotted with the gradient of
    the Lovasz extension of the Jaccard loss (Berman et al., Alg. 1: differences of
    1 - intersection/union along the sorted order, from cumulative sums). The
    image's loss is the mean over its present classes. This is Berman's
    ``per_image=True`` option, which makes the batch loss a sum over images and so
    decomposes over replicas; it differs from Berman's per-image mean only in
    dividing by the images with valid pixels rather than by all images.

    Cost: one sort of the B*C*H*W errors per step.

    Class weights do not apply: every present class already counts equally.

    Args:
        ignore_index: void label.
    """

    name = "lovasz"

    def _image_losses(self, probabilities, truth, valid):
        # (B, C, N): one sort per image and class.
        truth = tf.transpose(truth, [0, 2, 1])
        errors = tf.abs(truth - tf.transpose(probabilities, [0, 2, 1]))
        # Void pixels sort after every valid error (>= 0), so the cumulative sums
        # at valid positions only count valid pixels.
        errors = tf.where(valid[:, None, :], errors, -1.0)
        order = tf.argsort(errors, axis=-1, direction="DESCENDING")
        errors = tf.nn.relu(tf.gather(errors, order, batch_dims=2))
        truth = tf.gather(truth, order, batch_dims=2)
        truth_sum = tf.reduce_sum(truth, axis=-1, keepdims=True)
        intersection = truth_sum - tf.cumsum(truth, axis=-1)
        union = truth_sum + tf.cumsum(1.0 - truth, axis=-1)  # >= 1
        jaccard = 1.0 - intersection / union
        gradient = tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], -1)
        class_losses = tf.reduce_sum(errors * gradient, axis=-1)  # (B, C)
        return _mean_over_present(class_losses, truth_sum[..., 0] > 0)


class CompositeLoss(SegmentationLoss):
    """A weighted sum of losses; its terms are those of its parts, concatenated.

    Args:
        parts: the losses.
        weights: one weight per part; it multiplies the coefficients of the part.
    """

    def __init__(self, parts, weights):
        self.parts = tuple(parts)
        self.names = tuple(name for part in self.parts for name in part.names)
        self.coefficients = tuple(
            float(weight) * coefficient
            for part, weight in zip(self.parts, weights, strict=True)
            for coefficient in part.coefficients
        )
        weighted = [part for part in self.parts if part.class_weights is not None]
        self.class_weights = weighted[0].class_weights if weighted else None
        self.ignore_index = self.parts[0].ignore_index

    def denominators(self, labels, num_classes):
        return tf.concat([part.denominators(labels, num_classes) for part in self.parts], 0)

    def numerators(self, labels, logits):
        return tf.concat([part.numerators(labels, logits) for part in self.parts], 0)


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Hyperparameters `get_loss` hands to every factory in `LOSSES`.

    Attributes:
        ignore_index: void label.
        class_weights: float32 (C,) weights, or None; used by ce, focal and ohem.
        focal_gamma: focusing parameter of the focal loss.
        ohem_ratio: fraction of each image's valid pixels kept by ohem.
        dice_smooth: smoothing constant of the Dice loss.
    """

    ignore_index: int = IGNORE_INDEX
    class_weights: np.ndarray | None = None
    focal_gamma: float = 2.0
    ohem_ratio: float = DEFAULT_OHEM_RATIO
    dice_smooth: float = 1.0


LOSSES = {
    "ce": lambda options: CrossEntropy(options.ignore_index, options.class_weights),
    "dice": lambda options: DiceLoss(options.ignore_index, options.dice_smooth),
    "focal": lambda options: FocalLoss(
        options.ignore_index, options.class_weights, options.focal_gamma
    ),
    "lovasz": lambda options: LovaszSoftmax(options.ignore_index),
    "ohem": lambda options: HardPixelCrossEntropy(
        options.ignore_index, options.class_weights, options.ohem_ratio
    ),
}


def get_loss(
    spec: str,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    class_weights=None,
    focal_gamma: float = 2.0,
    ohem_ratio: float = DEFAULT_OHEM_RATIO,
    dice_smooth: float = 1.0,
) -> SegmentationLoss:
    """Builds the loss a spec names.

    Args:
        spec: ``"+"``-separated terms, each a name of `LOSSES` with an optional
            ``"<weight>*"`` prefix: ``"ce"``, ``"ce+dice"``, ``"ce+0.5*dice"``,
            ``"focal+lovasz"``.
        num_classes: C, the number of trainable classes.
        ignore_index: void label.
        class_weights: (C,) positive-or-zero finite weights, or None. ce: weighted
            mean (PyTorch's convention); focal: alpha_t, normalised the same way;
            ohem: scales each pixel's loss before the ranking. Dice and Lovasz
            average over classes and take none.
        focal_gamma: focal loss gamma (Lin et al.: 2).
        ohem_ratio: fraction of each image's valid pixels that ohem keeps.
        dice_smooth: Dice smoothing constant.

    Returns:
        The `SegmentationLoss`: the named loss itself for a single unweighted term,
        else a `CompositeLoss`.

    Raises:
        LossError: an unknown name (the message lists the known ones), a malformed
            term or weight, bad class weights or class weights that no term uses.
    """
    weights = _check_class_weights(class_weights, num_classes)
    options = LossOptions(ignore_index, weights, focal_gamma, ohem_ratio, dice_smooth)
    terms = _parse_spec(spec)
    parts = [LOSSES[name](options) for _, name in terms]
    if weights is not None and all(part.class_weights is None for part in parts):
        raise LossError(
            f"class weights apply to {', '.join(_WEIGHTED)}; loss {spec!r} has none"
        )
    if len(parts) == 1 and terms[0][0] == 1.0:
        return parts[0]
    return CompositeLoss(parts, [weight for weight, _ in terms])


def weighted_heads_loss(loss, labels, outputs, loss_weights, denominators) -> tf.Tensor:
    """The loss of a model's outputs, weighted per output (auxiliary heads).

    Args:
        loss: a `SegmentationLoss`.
        labels: int labels (B, H, W) or (B, H, W, 1).
        outputs: logits (B, H, W, C), or a dict of outputs keyed by name (main
            ``"logits"`` plus auxiliary heads). A (B, H, W, C) output takes `loss`;
            a (B, C) output is a class-presence head and takes `presence_loss`
            (EncNet's semantic-encoding loss); a (B, H, W, 1) output is a border
            head and takes `border_focal_loss` (DFN's border network).
        loss_weights: output name -> weight; a missing name weighs 1. Unused for
            a single tensor.
        denominators: ``loss.denominators(labels, C)``, possibly summed over
            replicas; every per-pixel output shares them (all have the labels' size).

    Returns:
        float32 scalar ``sum_h w_h * loss_h``.
    """
    if not isinstance(outputs, dict):
        return loss.combine(loss.numerators(labels, outputs), denominators)

    num_classes = outputs["logits"].shape[-1]

    def head_loss(logits):
        if len(logits.shape) == 2:
            return presence_loss(labels, logits, ignore_index=loss.ignore_index)
        if logits.shape[-1] == 1:
            return border_focal_loss(labels, logits, num_classes, ignore_index=loss.ignore_index)
        return loss.combine(loss.numerators(labels, logits), denominators)

    return tf.add_n([float(loss_weights.get(name, 1.0)) * head_loss(logits) for name, logits in outputs.items()])


def class_presence(labels, num_classes, ignore_index=IGNORE_INDEX) -> tf.Tensor:
    """float32 (B, C): 1 where class c has at least one valid pixel in image b.

    The targets of EncNet's semantic-encoding loss, computed from the label map in
    the training step.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    labels = tf.cast(labels, tf.int32)
    valid = valid_pixels(labels, num_classes, ignore_index)
    return tf.reduce_max(tf.one_hot(tf.where(valid, labels, -1), num_classes), axis=[1, 2])


def presence_loss(labels, logits, ignore_index=IGNORE_INDEX) -> tf.Tensor:
    """EncNet's semantic-encoding loss (Zhang et al. 2018, Sec. 3.2).

    Binary cross-entropy of ``sigmoid(logits)`` (B, C) against `class_presence`,
    the mean over the classes and the global batch: each replica divides its sum by
    its batch times the replicas in sync (tf.distribute splits a batch evenly).
    """
    logits = tf.cast(logits, tf.float32)
    targets = class_presence(labels, logits.shape[-1], ignore_index)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    count = tf.cast(tf.size(logits), tf.float32) * replicas
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits)) / count


BORDER_DILATION = 7  # DFN's border targets: label edges dilated by a 7x7 square (the authors' code)


def boundary_targets(labels, num_classes, ignore_index=IGNORE_INDEX, dilation=BORDER_DILATION):
    """DFN's border targets: the label map's semantic edges, dilated.

    A pixel is an edge if its class differs from its left or upper neighbour's
    (void counted as class 0, as the authors do before their Canny filter); the
    edge map is dilated by a ``dilation x dilation`` square.

    Returns:
        ``(targets, valid)``: float32 (B, H, W) in {0, 1}, and bool (B, H, W), the
        non-void pixels, the only ones the loss counts.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    labels = tf.cast(labels, tf.int32)
    valid = valid_pixels(labels, num_classes, ignore_index)
    classes = tf.where(valid, labels, 0)
    left = tf.pad(classes[:, :, :-1], [[0, 0], [0, 0], [1, 0]], mode="SYMMETRIC")
    up = tf.pad(classes[:, :-1, :], [[0, 0], [1, 0], [0, 0]], mode="SYMMETRIC")
    edges = tf.cast(tf.logical_or(classes != left, classes != up), tf.float32)
    dilated = tf.nn.max_pool2d(edges[..., tf.newaxis], dilation, 1, "SAME")[..., 0]
    return dilated, valid


def border_focal_loss(labels, logits, num_classes, ignore_index=IGNORE_INDEX, gamma=2.0, alpha=0.25) -> tf.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) of a border map against `boundary_targets`.

    ``-alpha_t (1 - p_t)^gamma log(p_t)`` per valid pixel, the mean over the valid
    pixels: each replica divides its sum by its own count times the replicas in
    sync, which is the global mean when replicas hold as many valid pixels.

    Args:
        labels: int labels (B, H, W) or (B, H, W, 1).
        logits: (B, H, W, 1) border logits.
        num_classes: the classes of the labels (for what is void).
        gamma, alpha: the focal loss's focusing and balance (2 and 0.25, as DFN's authors).
    """
    logits = tf.cast(logits, tf.float32)[..., 0]
    targets, valid = boundary_targets(labels, num_classes, ignore_index)
    probs = tf.sigmoid(logits)
    p_t = targets * probs + (1 - targets) * (1 - probs)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    focal = alpha_t * (1 - p_t) ** gamma * tf.nn.sigmoid_cross_entropy_with_logits(targets, logits)
    valid = tf.cast(valid, tf.float32)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    return tf.reduce_sum(focal * valid) / (tf.maximum(tf.reduce_sum(valid), 1.0) * replicas)


def _parse_spec(spec):
    """``"ce+0.5*dice"`` -> ``[(1.0, "ce"), (0.5, "dice")]``."""
    terms = []
    for term in str(spec).split("+"):
        weight, _, name = term.strip().rpartition("*")
        name = name.strip()
        if name not in LOSSES:
            raise LossError(
                f"unknown loss {name!r} in {spec!r}; known losses: "
                f"{', '.join(sorted(LOSSES))} (combine them as e.g. ce+0.5*dice)"
            )
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            message = f"loss weight {weight.strip()!r} in {spec!r} is not a number"
            raise LossError(message) from None
        if not (math.isfinite(value) and value > 0):
            raise LossError(f"loss weight {value} in {spec!r} must be positive and finite")
        terms.append((value, name))
    return terms


def _check_class_weights(class_weights, num_classes):
    """Returns the weights as a float32 (C,) array (or None), or raises."""
    if class_weights is None:
        return None
    weights = np.asarray(class_weights, dtype=np.float32)
    if weights.shape != (num_classes,):
        raise LossError(
            f"class_weights must hold one weight per class ({num_classes}), "
            f"got shape {weights.shape}"
        )
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise LossError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _num_classes(logits):
    """C from the logits' last axis: a Python int when static, else a tensor."""
    return logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]


def _safe_labels(labels, num_classes, ignore_index):
    """(int32 (B, H, W) labels with void pixels set to 0, bool valid mask)."""
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 4:
        labels = tf.squeeze(labels, axis=-1)
    valid = valid_pixels(labels, num_classes, ignore_index)
    return tf.where(valid, labels, 0), valid


def _count(mask, axis):
    """Number of True values along `axis`, as float32 (counted exactly in int32)."""
    return tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32), axis=axis), tf.float32)


def _pixel_weights(safe, valid, class_weights):
    """float32 weight of each pixel: its class weight (or 1), 0 at void pixels."""
    if class_weights is None:
        return tf.cast(valid, tf.float32)
    return tf.where(valid, tf.gather(tf.constant(class_weights), safe), 0.0)


def _pixel_cross_entropy(safe, valid, logits):
    """-log softmax(logits)[label] per pixel, 0 (with zero gradient) at void."""
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits)
    return tf.where(valid, cross_entropy, 0.0)


def _mean_over_present(values, present):
    """Mean of (B, C) `values` over the classes `present` in each image (0 if none)."""
    present = tf.cast(present, tf.float32)
    total = tf.reduce_sum(values * present, axis=-1)
    return tf.math.divide_no_nan(total, tf.reduce_sum(present, axis=-1))
