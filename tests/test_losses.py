"""Losses against independent float64 NumPy references, on a batch with void pixels.

The batch has three 7x9 images with 4 classes: two with ~30% void pixels (255 and
labels outside [0, 4): -1, 4, 9, 254), the second without class 3 (per-image losses
average over present classes), and one entirely void image, which per-image losses
leave out of their image count.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from semseg_suite import losses
from semseg_suite.losses import LOSSES, get_loss, weighted_heads_loss

NUM_CLASSES = 4
IGNORE = 255
WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0])


# NumPy references (float64), written from the papers' definitions.


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def pixels(labels, logits):
    """Flattened valid pixels per image: a list of (labels (n,), log-probs (n, C))."""
    logp = log_softmax(logits)
    out = []
    for image_labels, image_logp in zip(labels, logp):
        valid = (image_labels >= 0) & (image_labels < NUM_CLASSES)
        out.append((image_labels[valid], image_logp[valid]))
    return out


def pixel_ce(labels, logp):
    return -logp[np.arange(len(labels)), labels]


def reference_ce(labels, logits, class_weights=None, gamma=0.0):
    """Weighted mean of -(1 - p_t)^gamma log p_t over valid pixels (gamma 0: CE)."""
    weights = np.ones(NUM_CLASSES) if class_weights is None else class_weights
    total = weight_sum = 0.0
    for y, logp in pixels(labels, logits):
        ce = pixel_ce(y, logp)
        total += np.sum(weights[y] * (1 - np.exp(-ce)) ** gamma * ce)
        weight_sum += np.sum(weights[y])
    return total / weight_sum


def reference_ohem(labels, logits, ratio, class_weights=None):
    """Mean of the k largest (weighted) pixel losses of each image, over all kept."""
    weights = np.ones(NUM_CLASSES) if class_weights is None else class_weights
    total = kept = 0
    for y, logp in pixels(labels, logits):
        if not len(y):
            continue
        # k as the loss computes it, in float32
        k = max(1, math.ceil(np.float32(ratio) * np.float32(len(y))))
        hardest = np.sort(weights[y] * pixel_ce(y, logp))[::-1][:k]
        total += hardest.sum()
        kept += k
    return total / kept


def reference_dice(labels, logits, smooth=1.0):
    """1 - mean Dice over the classes present in each image, mean over images."""
    image_losses = []
    for y, logp in pixels(labels, logits):
        if not len(y):
            continue
        p = np.exp(logp)
        scores = []
        for c in np.unique(y):
            g = (y == c).astype(np.float64)
            scores.append((2 * np.sum(p[:, c] * g) + smooth) / (p[:, c].sum() + g.sum() + smooth))
        image_losses.append(1 - np.mean(scores))
    return np.mean(image_losses)


def lovasz_gradient(fg_sorted):
    """Berman et al. 2018, Alg. 1: gradient of the Lovasz extension of the Jaccard
    loss at errors sorted in decreasing order, from cumulative sums."""
    gts = fg_sorted.sum()
    intersection = gts - np.cumsum(fg_sorted)
    union = gts + np.cumsum(1 - fg_sorted)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def reference_lovasz(labels, logits):
    """Lovasz-softmax, per image over its present classes, mean over images."""
    image_losses = []
    for y, logp in pixels(labels, logits):
        if not len(y):
            continue
        p = np.exp(logp)
        class_losses = []
        for c in np.unique(y):
            fg = (y == c).astype(np.float64)
            errors = np.abs(fg - p[:, c])
            order = np.argsort(-errors, kind="stable")
            class_losses.append(errors[order] @ lovasz_gradient(fg[order]))
        image_losses.append(np.mean(class_losses))
    return np.mean(image_losses)


# Each case: (spec, get_loss keyword arguments, reference(labels, logits)).
CASES = [
    ("ce", {}, reference_ce),
    ("ce", {"class_weights": WEIGHTS}, lambda y, x: reference_ce(y, x, WEIGHTS)),
    ("focal", {}, lambda y, x: reference_ce(y, x, gamma=2.0)),
    (
        "focal",
        {"class_weights": WEIGHTS, "focal_gamma": 0.5},
        lambda y, x: reference_ce(y, x, WEIGHTS, gamma=0.5),
    ),
    ("dice", {}, reference_dice),
    ("lovasz", {}, reference_lovasz),
    ("ohem", {}, lambda y, x: reference_ohem(y, x, losses.DEFAULT_OHEM_RATIO)),
    (
        "ohem",
        {"class_weights": WEIGHTS, "ohem_ratio": 0.3},
        lambda y, x: reference_ohem(y, x, 0.3, WEIGHTS),
    ),
    ("ce+0.5*dice", {}, lambda y, x: reference_ce(y, x) + 0.5 * reference_dice(y, x)),
    (
        "focal+lovasz",
        {"class_weights": WEIGHTS},
        lambda y, x: reference_ce(y, x, WEIGHTS, gamma=2.0) + reference_lovasz(y, x),
    ),
]
CASE_IDS = [spec + ("-" + "-".join(kwargs) if kwargs else "") for spec, kwargs, _ in CASES]


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, size=(3, 7, 9)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = IGNORE
    labels[1][labels[1] == 3] = 1  # class 3 absent from image 1
    labels[1, 0, :4] = [-1, 4, 9, 254]  # outside [0, C): void as well
    labels[2] = IGNORE
    logits = rng.normal(scale=3.0, size=(3, 7, 9, NUM_CLASSES)).astype(np.float32)
    return labels, logits


def void_mask(labels):
    return (labels < 0) | (labels >= NUM_CLASSES)


def make_loss(spec, kwargs):
    return get_loss(spec, num_classes=NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("spec, kwargs, reference", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(batch, spec, kwargs, reference):
    labels, logits = batch
    loss = make_loss(spec, kwargs)(labels, logits)
    assert loss.dtype == tf.float32 and loss.shape == ()
    assert float(loss) == pytest.approx(reference(labels, logits), rel=1e-5)


@pytest.mark.parametrize("spec, kwargs, reference", CASES, ids=CASE_IDS)
def test_void_pixels_count_for_nothing(batch, spec, kwargs, reference):
    labels, logits = batch
    loss_fn = make_loss(spec, kwargs)
    void = void_mask(labels)
    changed = logits.copy()
    changed[void] = np.random.default_rng(1).normal(scale=50.0, size=changed[void].shape)
    expected = float(loss_fn(labels, logits))
    assert float(loss_fn(labels, changed)) == pytest.approx(expected, rel=1e-6)

    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, variable)
    gradient = tape.gradient(loss, variable).numpy()
    assert np.all(np.isfinite(gradient))
    assert np.all(gradient[void] == 0.0)
    assert np.abs(gradient[~void]).sum() > 0


@pytest.mark.parametrize("spec, kwargs, reference", CASES, ids=CASE_IDS)
def test_xla_gives_the_same_value(batch, spec, kwargs, reference):
    labels, logits = batch
    loss_fn = make_loss(spec, kwargs)
    compiled = tf.function(loss_fn.__call__, jit_compile=True)
    # (B, H, W, 1) labels are the same labels
    value = compiled(tf.constant(labels[..., None]), tf.constant(logits))
    assert float(value) == pytest.approx(float(loss_fn(labels, logits)), rel=1e-5)


@pytest.mark.parametrize("spec, kwargs, reference", CASES, ids=CASE_IDS)
def test_halves_of_the_batch_decompose(batch, spec, kwargs, reference):
    """(num_a + num_b) / (den_a + den_b) is the whole batch's loss: what makes
    training on two replicas equal training on one device."""
    labels, logits = batch
    loss_fn = make_loss(spec, kwargs)
    halves = [(labels[:1], logits[:1]), (labels[1:], logits[1:])]
    numerators = [loss_fn.numerators(y, x) for y, x in halves]
    denominators = [loss_fn.denominators(y, NUM_CLASSES) for y, _ in halves]
    assert numerators[0].shape == (len(loss_fn.coefficients),)
    assert denominators[0].dtype == tf.float32
    np.testing.assert_allclose(
        denominators[0] + denominators[1], loss_fn.denominators(labels, NUM_CLASSES), rtol=1e-6
    )
    # each replica divides its own numerators by the global denominators
    global_denominators = denominators[0] + denominators[1]
    per_replica = [loss_fn.combine(n, global_denominators) for n in numerators]
    whole = float(loss_fn(labels, logits))
    assert float(per_replica[0] + per_replica[1]) == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("spec, kwargs, reference", CASES, ids=CASE_IDS)
def test_bfloat16_logits_give_a_close_float32_loss(batch, spec, kwargs, reference):
    labels, logits = batch
    loss_fn = make_loss(spec, kwargs)
    low = loss_fn(labels, tf.cast(logits, tf.bfloat16))
    assert low.dtype == tf.float32
    assert float(low) == pytest.approx(float(loss_fn(labels, logits)), rel=5e-3)


def test_replica_context_with_all_reduced_denominators(batch):
    """The trainer's recipe inside `strategy.run`, compiled with XLA."""
    labels, logits = batch
    loss_fn = get_loss("ce+dice", num_classes=NUM_CLASSES)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    @tf.function(jit_compile=True)
    def replica_loss(y, x, global_denominators):
        return loss_fn.combine(loss_fn.numerators(y, x), global_denominators)

    def step(y, x):
        denominators = loss_fn.denominators(y, NUM_CLASSES)
        context = tf.distribute.get_replica_context()
        return replica_loss(y, x, context.all_reduce("sum", denominators))

    value = strategy.run(tf.function(step), args=(tf.constant(labels), tf.constant(logits)))
    assert float(value) == pytest.approx(float(loss_fn(labels, logits)), rel=1e-5)


def test_lovasz_reference_gradient_is_the_jaccard_loss_increment():
    """The reference's Alg. 1 equals the Lovasz extension's definition: the i-th
    entry is Delta(S_i) - Delta(S_i-1), S_i the first i pixels taken as mispredicted
    and Delta(S) = |S| / |fg u S| (Berman et al., Eq. 8)."""
    fg_sorted = np.array([0, 1, 1, 0, 0, 1, 0], dtype=np.float64)
    fg = {i for i, value in enumerate(fg_sorted) if value}
    deltas = [len(set(range(i))) / len(fg | set(range(i))) for i in range(len(fg_sorted) + 1)]
    np.testing.assert_allclose(lovasz_gradient(fg_sorted), np.diff(deltas), rtol=1e-12)


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    labels, logits = batch
    focal = get_loss("focal", num_classes=NUM_CLASSES, focal_gamma=0.0, class_weights=WEIGHTS)
    ce = get_loss("ce", num_classes=NUM_CLASSES, class_weights=WEIGHTS)
    assert float(focal(labels, logits)) == pytest.approx(float(ce(labels, logits)), rel=1e-6)


def test_ohem_keeping_every_pixel_is_cross_entropy(batch):
    labels, logits = batch
    ohem = get_loss("ohem", num_classes=NUM_CLASSES, ohem_ratio=1.0)
    ce = get_loss("ce", num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(
        ohem.denominators(labels, NUM_CLASSES), ce.denominators(labels, NUM_CLASSES)
    )
    assert float(ohem(labels, logits)) == pytest.approx(float(ce(labels, logits)), rel=1e-6)
    # an image with one valid pixel keeps it, however small the ratio
    one_pixel = np.full((1, 3, 3), IGNORE)
    one_pixel[0, 1, 1] = 2
    tiny_ratio = get_loss("ohem", num_classes=NUM_CLASSES, ohem_ratio=1e-6)
    assert float(tiny_ratio.denominators(one_pixel, NUM_CLASSES)[0]) == 1.0


@pytest.mark.parametrize("spec", sorted(LOSSES))
def test_perfect_prediction_costs_almost_nothing(spec):
    labels = np.random.default_rng(3).integers(0, NUM_CLASSES, size=(2, 5, 6))
    labels[0, 0, 0] = IGNORE
    logits = 30.0 * np.eye(NUM_CLASSES, dtype=np.float32)[np.where(labels == IGNORE, 0, labels)]
    assert float(get_loss(spec, num_classes=NUM_CLASSES)(labels, logits)) < 1e-3


@pytest.mark.parametrize("spec", sorted(LOSSES))
def test_all_void_batch_gives_zero_with_finite_gradients(spec):
    loss_fn = get_loss(spec, num_classes=NUM_CLASSES)
    labels = np.full((2, 3, 3), IGNORE)
    logits = np.random.default_rng(2).normal(size=(2, 3, 3, NUM_CLASSES))
    logits = tf.Variable(logits.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, logits)
    assert float(loss) == 0.0
    assert float(loss_fn.denominators(labels, NUM_CLASSES)[0]) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, logits), 0.0)


def test_other_ignore_index():
    labels = np.array([[[0, 1, 2]]])
    logits = np.zeros((1, 1, 3, 3), np.float32)
    logits[0, 0, 0] = [5.0, 0.0, 0.0]
    # with class 2 void, only pixels 0 and 1 count
    expected = np.mean(-log_softmax(logits[0, 0, :2])[[0, 1], [0, 1]])
    loss = get_loss("ce", num_classes=3, ignore_index=2)(labels, logits)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_weighted_heads_loss_sums_the_heads(batch):
    labels, logits = batch
    loss_fn = get_loss("ce+dice", num_classes=NUM_CLASSES)
    aux = logits[..., ::-1].copy()
    denominators = loss_fn.denominators(labels, NUM_CLASSES)
    outputs = {"logits": logits, "aux": aux}
    total = weighted_heads_loss(loss_fn, labels, outputs, {"aux": 0.4}, denominators)
    expected = float(loss_fn(labels, logits)) + 0.4 * float(loss_fn(labels, aux))
    assert float(total) == pytest.approx(expected, rel=1e-6)
    single = weighted_heads_loss(loss_fn, labels, logits, {}, denominators)
    assert float(single) == pytest.approx(float(loss_fn(labels, logits)), rel=1e-6)


def test_spec_terms_and_coefficients():
    loss_fn = get_loss(" ce + 0.5*dice+2 * lovasz", num_classes=NUM_CLASSES)
    assert isinstance(loss_fn, losses.CompositeLoss)
    assert loss_fn.names == ("ce", "dice", "lovasz")
    assert loss_fn.coefficients == (1.0, 0.5, 2.0)
    assert loss_fn.spec == "ce+0.5*dice+2*lovasz"
    assert isinstance(get_loss("focal", num_classes=NUM_CLASSES), losses.FocalLoss)
    assert get_loss("0.5*ce", num_classes=NUM_CLASSES).coefficients == (0.5,)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lovasz_hinge", "known losses: ce, dice, focal, lovasz, ohem"),
        ("ce+", "unknown loss ''"),
        ("half*dice", "'half' in 'half\\*dice' is not a number"),
        ("ce+-1*dice", "must be positive"),
    ],
)
def test_bad_spec_raises(spec, message):
    with pytest.raises(ValueError, match=message):
        get_loss(spec, num_classes=NUM_CLASSES)


@pytest.mark.parametrize(
    "spec, weights, message",
    [
        ("ce", [1.0, 2.0], "one weight per class \\(4\\)"),
        ("ce", [1.0, -2.0, 1.0, 1.0], "finite and >= 0"),
        ("ce", [1.0, np.nan, 1.0, 1.0], "finite and >= 0"),
        ("dice+lovasz", WEIGHTS, "apply to ce, focal, ohem; loss 'dice\\+lovasz' has none"),
    ],
)
def test_bad_class_weights_raise(spec, weights, message):
    with pytest.raises(ValueError, match=message):
        get_loss(spec, num_classes=NUM_CLASSES, class_weights=weights)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"focal_gamma": -1.0}, "gamma must be >= 0"),
        ({"ohem_ratio": 0.0}, "ohem_ratio must be in"),
        ({"dice_smooth": -1.0}, "smoothing must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_loss("focal+ohem+dice", num_classes=NUM_CLASSES, **kwargs)
