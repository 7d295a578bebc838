"""Class weights against NumPy hand computations on a tiny index-layout dataset."""

import cv2
import numpy as np
import pytest

from semseg_suite import class_weights, data
from semseg_suite.class_weights import PixelStatistics, enet, median_frequency

# classes.csv rows; row 4 (Void) is ignored, so the trainable classes are 0..3.
CLASSES = ("Sky", "Road", "Car", "Bike", "Void")
VOID = 4
# Raw label maps. Bike (3) never appears in train; it does in val.
TRAIN = [
    np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [4, 4, 1, 1, 1]]),
    np.array([[1, 1, 1, 1, 1], [1, 2, 2, 1, 1], [1, 2, 2, 4, 4]]),
    np.array([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]),
]
VAL = [np.array([[3, 3, 0, 0, 0], [3, 3, 0, 0, 0], [1, 1, 1, 1, 1]])]


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    for split, labels in (("train", TRAIN), ("val", VAL)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for index, label in enumerate(labels):
            cv2.imwrite(str(root / split / f"{index}.png"), np.zeros((*label.shape, 3), np.uint8))
            cv2.imwrite(str(root / f"{split}annot" / f"{index}.png"), label.astype(np.uint8))
    rows = [f"{name},{row},{row},{row}" for row, name in enumerate(CLASSES)]
    (root / "classes.csv").write_text("\n".join(["name,r,g,b", *rows]) + "\n")
    return data.load_dataset(root)


def hand_statistics(labels):
    """(class pixels, valid pixels of the images holding each class), by loops."""
    class_pixels, image_pixels = np.zeros(4), np.zeros(4)
    for label in labels:
        valid = np.sum(label != VOID)
        for c in range(4):
            count = np.sum(label == c)
            class_pixels[c] += count
            if count:
                image_pixels[c] += valid
    return class_pixels, image_pixels


def test_pixel_statistics_count_valid_pixels(info):
    assert info.class_names == CLASSES[:4]
    stats = class_weights.pixel_statistics(info)
    class_pixels, image_pixels = hand_statistics(TRAIN)
    np.testing.assert_array_equal(stats.class_pixels, class_pixels)
    np.testing.assert_array_equal(stats.image_pixels, image_pixels)
    # Sky: 5 + 6 pixels in images of 13 and 15 valid pixels; Car in one of 13
    np.testing.assert_array_equal(stats.class_pixels[[0, 2]], [11, 4])
    np.testing.assert_array_equal(stats.image_pixels[[0, 2, 3]], [28, 13, 0])
    val = class_weights.pixel_statistics(info, "val")
    np.testing.assert_array_equal(val.class_pixels, [6, 5, 0, 4])


def test_median_frequency_by_hand():
    stats = PixelStatistics(np.array([10, 30, 5, 0]), image_pixels=np.array([40, 60, 10, 0]))
    # freq = 0.25, 0.5, 0.5; median 0.5; Bike (absent) gets the largest weight, 2
    np.testing.assert_allclose(median_frequency(stats), [2.0, 1.0, 1.0, 2.0])


def test_enet_by_hand():
    stats = PixelStatistics(np.array([10, 30, 0, 0]), image_pixels=np.array([40, 40, 0, 0]))
    present = [1 / np.log(1.02 + 0.25), 1 / np.log(1.02 + 0.75)]
    np.testing.assert_allclose(enet(stats), [*present, present[0], present[0]])


@pytest.mark.parametrize("method", ["median-frequency", "enet"])
def test_class_weights_from_the_training_labels(info, method):
    class_pixels, image_pixels = hand_statistics(TRAIN)
    present = class_pixels > 0
    if method == "median-frequency":
        frequency = class_pixels[present] / image_pixels[present]
        expected = np.median(frequency) / frequency
    else:
        expected = 1 / np.log(1.02 + class_pixels[present] / class_pixels.sum())
    weights = class_weights.class_weights(method, info)
    assert weights.dtype == np.float32 and weights.shape == (4,)
    np.testing.assert_allclose(weights[present], expected, rtol=1e-6)
    # Bike is absent from train: the largest weight, the rarest present class's
    assert weights[3] == weights[:3].max() == weights[2]


def test_statistics_of_another_split(info):
    weights = class_weights.class_weights("enet", info, split="val")
    # val: Sky 6, Road 5, Bike 4 of 15 pixels; Car is absent and gets Bike's weight
    expected = 1 / np.log(1.02 + np.array([6, 5, 4, 4]) / 15)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no 'test' split"):
        class_weights.pixel_statistics(info, "test")


def test_no_valid_pixel_raises():
    stats = PixelStatistics(class_pixels=np.zeros(3, np.int64), image_pixels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="no valid pixel"):
        median_frequency(stats)


@pytest.mark.parametrize(
    "name, content",
    [
        ("weights.txt", "# one per class\n1\n2.5\n\n0.5\n4\n"),
        ("weights.csv", "name,weight\nSky, 1\nRoad, 2.5\nCar,0.5\nBike,4\n"),
        ("weights.npy", None),
    ],
)
def test_weights_file(info, tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        np.save(path, np.array([1, 2.5, 0.5, 4]))
    else:
        path.write_text(content)
    weights = class_weights.class_weights(str(path), info)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, [1, 2.5, 0.5, 4])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "missing.txt: class weights file not found .*median-frequency, enet"),
        ("short.txt", "1\n2\n3\n", "short.txt: 3 weights for 4 classes"),
        ("zero.txt", "1\n0\n1\n1\n", "zero.txt: .*positive and finite; class 'Road' has 0.0"),
        ("nan.txt", "1\n1\nnan\n1\n", "class 'Car' has nan"),
        ("word.csv", "Sky,1\nRoad,two\nCar,1\nBike,1\n", "word.csv:2: weight 'two' is not a number"),
        ("order.csv", "Road,1\nSky,1\nCar,1\nBike,1\n", "order.csv:1: class 'Road', expected 'Sky'"),
        ("wide.csv", "Sky,1,2\n", "wide.csv:1: expected weight or name,weight"),
        ("matrix.npy", np.ones((2, 2)), "matrix.npy: expected a 1-D array"),
    ],
)
def test_bad_weights_file_raises_naming_it(info, tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(ValueError, match=message):
        class_weights.class_weights(str(path), info)
