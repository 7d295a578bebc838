"""Sliding-window and test-time-augmented inference (semseg_suite.tiling)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite.tiling import InferenceOptions, probabilities, tile_starts

COLOURS = np.array([(1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0)], np.float32)


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def conv_model(seed=0, classes=4):
    """A random two-layer conv net (receptive field 5x5): not per-pixel, not flip-symmetric."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(classes, 3, padding="same"),
    ])


def images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (33, 32, 0), (257, 64, 16), (64, 64, 16), (20, 32, 8)])
def test_tiles_cover_the_axis_from_border_to_border_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap).numpy()
    side = min(length, tile)
    assert starts[0] == 0 and starts[-1] == length - side
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= tile - overlap)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start:start + side] = True
    assert covered.all()
    # the fewest tiles that do it
    assert len(starts) == 1 + int(np.ceil(max(length - side, 0) / (tile - overlap)))


@pytest.mark.parametrize("shape", [(1, 48, 48, 3), (2, 20, 45, 3)])
def test_one_tile_covering_the_image_is_whole_image_inference(shape):
    model, x = conv_model(), images(shape)
    whole = probabilities(model, x).numpy()
    np.testing.assert_allclose(softmax(model(x).numpy()), whole, atol=1e-6)
    tiled = probabilities(model, x, InferenceOptions(tile=48, overlap=12)).numpy()
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_an_image_smaller_than_a_tile_along_one_side_is_tiled_along_the_other():
    x = images((1, 20, 100, 3))
    per_pixel = lambda batch: tf.einsum("bhwc,ck->bhwk", batch, np.eye(3, 5, dtype=np.float32))  # noqa: E731
    tiled = probabilities(per_pixel, x, InferenceOptions(tile=32, overlap=8)).numpy()
    assert tiled.shape == (1, 20, 100, 5)
    np.testing.assert_allclose(tiled, probabilities(per_pixel, x).numpy(), atol=1e-6)


def test_no_seams_on_an_image_whose_map_is_known():
    # Vertical stripes of three colours 13 px wide; the model classifies a pixel by its
    # 3x3 neighbourhood's mean colour, so the right map is the stripe's class away from
    # stripe edges, and a tile edge cuts through stripes at every 24 px.
    columns = (np.arange(101) // 13) % 3
    truth = np.broadcast_to(columns, (77, 101))
    x = np.broadcast_to(COLOURS[truth], (1, 77, 101, 3)).copy()
    mean = keras.layers.AveragePooling2D(3, strides=1, padding="same")

    def by_colour(batch):
        return 4.0 * tf.einsum("bhwc,kc->bhwk", mean(batch), COLOURS)

    tiled = probabilities(by_colour, x, InferenceOptions(tile=32, overlap=8)).numpy().argmax(-1)[0]
    inside = np.ones(101, bool)
    inside[np.flatnonzero(np.diff(columns)) + np.array([[0], [1]])] = False  # the two columns at each stripe edge
    np.testing.assert_array_equal(tiled[:, inside], truth[:, inside])
    np.testing.assert_array_equal(tiled, probabilities(by_colour, x).numpy().argmax(-1)[0])


def test_the_ramp_blend_damps_what_tile_edges_get_wrong():
    # Zero padding at a tile edge changes a conv net's output there; the overlapping
    # neighbour sees those pixels with context, and the ramp weights it up.
    model, x = conv_model(), images((1, 70, 91, 3))
    whole = probabilities(model, x).numpy()
    error = {overlap: np.abs(probabilities(model, x, InferenceOptions(tile=32, overlap=overlap)).numpy() - whole).max()
             for overlap in (0, 16)}
    assert error[16] < 0.5 * error[0], error


def test_flip_averages_the_two_softmaxes_and_is_flip_equivariant():
    model, x = conv_model(seed=1), images((1, 37, 53, 3), seed=1)
    flipped = x[:, :, ::-1]
    expected = (softmax(model(x).numpy()) + softmax(model(flipped).numpy())[:, :, ::-1]) / 2
    averaged = probabilities(model, x, InferenceOptions(flip=True)).numpy()
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    assert np.abs(averaged - probabilities(model, x).numpy()).max() > 1e-3  # the flip matters for this model
    np.testing.assert_allclose(
        probabilities(model, flipped, InferenceOptions(flip=True)).numpy(), averaged[:, :, ::-1], atol=1e-6
    )


@pytest.mark.parametrize("shape", [(1, 37, 53, 3), (2, 61, 29, 3)])
def test_multi_scale_on_odd_sizes_averages_views_resized_back(shape):
    model, x = conv_model(seed=2), images(shape, seed=2)
    options = InferenceOptions(scales=(0.75, 1.0, 1.25), flip=True)
    probs = probabilities(model, x, options).numpy()
    assert probs.shape == (*shape[:3], 4) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # the 0.75 view alone, by hand: resize, softmax, resize back
    small = tf.image.resize(x, [round(shape[1] * 0.75), round(shape[2] * 0.75)], "bilinear")
    by_hand = tf.image.resize(tf.nn.softmax(model(small)), shape[1:3], "bilinear").numpy()
    np.testing.assert_allclose(probabilities(model, x, InferenceOptions(scales=(0.75,))).numpy(), by_hand, atol=1e-6)
    np.testing.assert_allclose(
        probabilities(model, x[:, :, ::-1], options).numpy(), probs[:, :, ::-1], atol=1e-5
    )


def test_one_graph_serves_every_size_with_every_option():
    model = conv_model(seed=3)
    options = InferenceOptions(tile=24, overlap=6, scales=(0.5, 1.0), flip=True)
    serve = tf.function(lambda batch: probabilities(model, batch, options),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for shape in ((1, 50, 41, 3), (2, 17, 80, 3)):
        x = images(shape, seed=4)
        np.testing.assert_allclose(serve(x).numpy(), probabilities(model, x, options).numpy(), atol=1e-6)
    assert len(serve._list_all_concrete_functions()) == 1


@pytest.mark.parametrize("kwargs", [{"tile": 32, "overlap": 32}, {"tile": 32, "overlap": -1}, {"scales": ()},
                                    {"scales": (1.0, 0.0)}])
def test_options_out_of_range_are_refused(kwargs):
    with pytest.raises(ValueError):
        InferenceOptions(**kwargs)
