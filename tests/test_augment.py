"""Tests of the photometric, blur, grayscale, cutout and random-order augmentations."""

import numpy as np
import pytest
import tensorflow as tf

import train
from semseg_suite import data
from semseg_suite.data import augment as aug

SIZE = (24, 32)
CROP = (16, 16)
PALETTE = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.float32)
PHOTOMETRIC = dict(brightness=0.3, contrast=0.5, saturation=0.5, hue=0.2, blur_prob=0.7, grayscale_prob=0.5)


def _pair(seed=0):
    """Label of three classes in blocks, image coloured by class plus a little noise."""
    rows, cols = np.mgrid[: SIZE[0], : SIZE[1]]
    label = ((rows // 6 + cols // 8) % 3).astype(np.uint8)
    noise = np.random.default_rng(seed).uniform(-10, 10, (*SIZE, 3))
    image = np.clip(PALETTE[label] + noise, 0, 255).astype(np.float32)
    return image, label


def _run(config, position=0, crop=CROP, seed=(0, 0), pair=None, preprocessing="tf"):
    image, label = _pair() if pair is None else pair
    augment = aug.pair_augmenter(crop, preprocessing, config, seed)
    out_image, out_label = augment(tf.constant(position, tf.int64), (tf.constant(image), tf.constant(label)))
    return out_image.numpy(), out_label.numpy()


def _still(**kwargs):
    """Config without any geometry: the output crop is the input (full size)."""
    return data.AugmentConfig(scale_range=(1.0, 1.0), h_flip=False, **kwargs)


SINGLE_OPS = [
    dict(brightness=0.3), dict(contrast=0.5), dict(saturation=0.5), dict(hue=0.3), dict(blur_prob=1.0, blur_sigma=2.0),
    dict(grayscale_prob=1.0), dict(cutout_prob=1.0, cutout_size=0.5), dict(PHOTOMETRIC, random_order=True),
]


@pytest.mark.parametrize("options", SINGLE_OPS + [dict(PHOTOMETRIC, cutout_prob=0.8, random_order=True)])
def test_labels_stay_original_ids_or_ignore(options):
    config = data.AugmentConfig(scale_range=(0.6, 1.7), h_flip=True, v_flip=True, rotation=25.0, **options)
    for position in range(6):
        image, label = _run(config, position)
        assert image.shape == (*CROP, 3) and np.all(np.isfinite(image))
        assert set(np.unique(label)) <= {0, 1, 2, data.IGNORE_INDEX}


@pytest.mark.parametrize("options", SINGLE_OPS[:6] + [dict(PHOTOMETRIC, random_order=True)])
def test_photometric_ops_never_change_the_label(options):
    _, original = _pair()
    for position in range(3):
        _, label = _run(_still(**options), position, crop=SIZE)
        np.testing.assert_array_equal(label, original)


def test_cutout_is_an_ignored_rectangle_of_constant_image():
    _, original = _pair()
    sizes = []
    for position in range(8):
        image, label = _run(_still(cutout_prob=1.0, cutout_size=0.5), position, crop=SIZE)
        rows, cols = np.nonzero(label == data.IGNORE_INDEX)
        assert rows.size > 0
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert rows.size == label[box].size  # a full rectangle
        assert np.all(label[box] == data.IGNORE_INDEX)
        assert np.all(image[box] == 0.0)  # 0 after normalisation
        outside = label != data.IGNORE_INDEX
        np.testing.assert_array_equal(label[outside], original[outside])
        assert label[box].shape[0] <= round(0.5 * SIZE[0]) and label[box].shape[1] <= round(0.5 * SIZE[1])
        sizes.append(rows.size)
    assert len(set(sizes)) > 1
    _, label = _run(_still(cutout_prob=0.0), 0, crop=SIZE)
    assert not np.any(label == data.IGNORE_INDEX)


def test_geometry_with_cutout_and_blur_keeps_image_and_label_aligned():
    config = data.AugmentConfig(
        scale_range=(0.75, 1.5), h_flip=True, v_flip=True, rotation=20.0, cutout_prob=1.0, blur_prob=1.0, blur_sigma=0.5
    )
    agreement = []
    for position in range(6):
        image, label = _run(config, position)
        rgb = (image + 1) * 127.5
        nearest = np.argmin(((rgb[..., None, :] - PALETTE) ** 2).sum(-1), axis=-1)
        known = label != data.IGNORE_INDEX
        agreement.append(np.mean(nearest[known] == label[known]))
    assert min(agreement) > 0.85


def test_grayscale_gives_equal_channels():
    image, _ = _run(_still(grayscale_prob=1.0), 0, crop=SIZE)
    np.testing.assert_allclose(image[..., 0], image[..., 1], atol=1e-5)
    np.testing.assert_allclose(image[..., 0], image[..., 2], atol=1e-5)
    plain, _ = _run(_still(), 0, crop=SIZE)
    assert not np.allclose(plain[..., 0], plain[..., 1])


def test_disabled_ops_leave_the_image_equal():
    plain, _ = _run(_still(), 0, crop=SIZE)
    image, _ = _pair()
    np.testing.assert_allclose(plain, image / 127.5 - 1, atol=1e-6)
    for options in (dict(hue=0.0), dict(blur_prob=0.0, blur_sigma=3.0), dict(cutout_prob=0.0), dict(random_order=True)):
        np.testing.assert_array_equal(_run(_still(**options), 0, crop=SIZE)[0], plain)


def test_hue_shift_of_half_twice_is_identity():
    image = tf.constant(_pair()[0])
    shifted = tf.image.adjust_hue(tf.image.adjust_hue(image / 255, 0.5), 0.5) * 255
    np.testing.assert_allclose(shifted.numpy(), image.numpy(), atol=0.5)
    # The op with a range [-0.5, 0.5] matches tf.image with the delta it samples.
    seed = tf.constant([3, 4], tf.int64)
    delta = tf.random.stateless_uniform([], seed, -0.5, 0.5)
    expected = np.clip(tf.image.adjust_hue(image / 255, delta).numpy(), 0, 1) * 255
    np.testing.assert_allclose(aug._random_hue(image, 0.5, seed).numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("name, reference", [
    ("contrast", lambda image, f: np.clip(tf.image.adjust_contrast(image, f).numpy(), 0, 255)),
    ("saturation", lambda image, f: np.clip(tf.image.adjust_saturation(image / 255, f).numpy(), 0, 1) * 255),
])  # fmt: skip
def test_contrast_and_saturation_match_tf_image(name, reference):
    image = tf.constant(_pair()[0])
    op = {"contrast": aug._random_contrast, "saturation": aug._random_saturation}[name]
    seed = tf.constant([5, 6], tf.int64)
    factor = tf.random.stateless_uniform([], seed, 0.5, 1.5)
    result = op(image, 0.5, seed).numpy()
    np.testing.assert_allclose(result, reference(image, factor), atol=1e-3)
    assert not np.allclose(result, image.numpy(), atol=1.0)
    # Same op inside the pipeline, with the seed the pipeline folds in.
    element_seed = tf.random.experimental.stateless_fold_in((0, 0), tf.constant(0, tf.int64))
    index = {"contrast": 1, "saturation": 2}[name]
    seed = tf.random.experimental.stateless_fold_in(element_seed, 100 + index)
    factor = tf.random.stateless_uniform([], seed, 0.5, 1.5)
    piped, _ = _run(_still(**{name: 0.5}), 0, crop=SIZE)
    np.testing.assert_allclose((piped + 1) * 127.5, reference(image, factor), atol=1e-2)


def test_blur_keeps_constants_and_mean_and_reduces_variance():
    seed = tf.constant([1, 2], tf.int64)
    constant = tf.fill([9, 13, 3], 77.0)
    np.testing.assert_allclose(aug._random_blur(constant, 1.0, 3.0, seed).numpy(), 77.0, atol=1e-3)
    noise = tf.constant(np.random.default_rng(1).uniform(0, 255, (40, 40, 3)), tf.float32)
    blurred = aug._random_blur(noise, 1.0, 2.0, seed).numpy()
    assert abs(blurred.mean() - noise.numpy().mean()) < 2.0
    assert blurred.var() < 0.5 * noise.numpy().var()
    np.testing.assert_array_equal(aug._random_blur(noise, 0.0, 2.0, seed).numpy(), noise.numpy())


def _order(position, count, seed=(0, 0)):
    element_seed = tf.random.experimental.stateless_fold_in(seed, tf.constant(position, tf.int64))
    order_seed = tf.random.experimental.stateless_fold_in(element_seed, 106)
    return tuple(np.argsort(tf.random.stateless_uniform([count], order_seed).numpy(), kind="stable"))


def test_random_order_varies_by_position_and_is_reproducible():
    # Hue then grayscale differs from grayscale (hue-less, so unchanged) then hue.
    options = dict(hue=0.4, grayscale_prob=1.0)
    orders = {position: _order(position, 2) for position in range(8)}
    assert len(set(orders.values())) == 2
    for position, order in orders.items():
        fixed, _ = _run(_still(**options), position, crop=SIZE)
        shuffled, _ = _run(_still(random_order=True, **options), position, crop=SIZE)
        again, _ = _run(_still(random_order=True, **options), position, crop=SIZE)
        np.testing.assert_array_equal(shuffled, again)
        if order == (0, 1):
            np.testing.assert_allclose(shuffled, fixed, atol=1e-5)
        else:
            assert np.abs(shuffled - fixed).max() > 1e-3, (position, order)


def test_same_seed_and_epoch_give_the_same_pairs():
    config = data.AugmentConfig(rotation=10.0, cutout_prob=0.5, random_order=True, **PHOTOMETRIC)
    first = [_run(config, position, seed=(7, 1)) for position in range(3)]
    second = [_run(config, position, seed=(7, 1)) for position in range(3)]
    other = [_run(config, position, seed=(7, 2)) for position in range(3)]
    for (image, label), (image2, label2) in zip(first, second):
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("field, value, allowed", [
    ("contrast", 1.0, "[0, 1)"), ("saturation", -0.1, "[0, 1)"), ("hue", 0.6, "[0, 0.5]"),
    ("blur_prob", 1.5, "[0, 1]"), ("blur_sigma", 0.0, "(0, 10]"), ("grayscale_prob", -1.0, "[0, 1]"),
    ("cutout_prob", 2.0, "[0, 1]"), ("cutout_size", 0.0, "(0, 1]"),
])  # fmt: skip
def test_bad_settings_are_rejected(field, value, allowed, capsys):
    with pytest.raises(ValueError, match=rf"{field} must be in {__import__('re').escape(allowed)}"):
        data.AugmentConfig(**{field: value})
    flag = "--" + field.replace("_", "-")
    with pytest.raises(SystemExit):
        train.parse_args([f"{flag}={value}"])
    assert f"must be in {allowed}, got {value}" in capsys.readouterr().err
