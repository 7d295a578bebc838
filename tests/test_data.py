"""Tests of the data layer: discovery, validation, pipelines, synthetic dataset.

Every dataset here is written into tmp_path with images whose colours encode their
labels (`PALETTE[raw class]`), so alignment can be checked after augmentation.
"""

import pathlib
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite import data, synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CAMVID = REPO_ROOT.parent / "shared" / "data" / "camvid"

# name, label colour; row 3 is the void class.
CLASSES = (
    ("Sky", (128, 128, 128)),
    ("Road", (128, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Void", (0, 0, 0)),
)
# Image colour of each raw class, far apart so that it can be told back.
PALETTE = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], np.uint8)
HEIGHT, WIDTH = 40, 56
# Image and label file names per split, listed in pair order. Sorted, the label
# names are in another order than the images, so pairing by position would fail.
PAIRS = {
    "train": (
        ("b.png", "b_L.png"),
        ("b2.png", "b2.png"),
        ("a.jpg", "a.png"),
        ("c.bmp", "c.png"),
    ),
    "val": (("v1.png", "v1.png"), ("v0.png", "v0.png")),
}
VAL_SIZES = {"v1.png": (24, 32), "v0.png": (HEIGHT, WIDTH)}
LABEL_FOLDER = {"colour": "{}_labels", "index": "{}annot"}
CLASS_TABLE = {"colour": "class_dict.csv", "index": "classes.csv"}
DEFAULT_IDS = np.array([0, 1, 2, data.IGNORE_INDEX])  # raw class -> train id


def raw_pattern(index, size=(HEIGHT, WIDTH)):
    """Raw class ids of pair `index`: a checkerboard of 10x8 cells, shifted by it."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    return ((y // 10 + x // 8 + index) % len(CLASSES)).astype(np.uint8)


def write_bgr(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label(path, layout, raw, classes=CLASSES):
    if layout == "colour":
        write_bgr(path, np.array([color for _, color in classes], np.uint8)[raw])
    else:
        cv2.imwrite(str(path), raw)


def write_dataset(root, layout, classes=CLASSES):
    """Writes the PAIRS dataset in `layout` with a class table padded by spaces."""
    for split, pairs in PAIRS.items():
        (root / split).mkdir(parents=True)
        (root / LABEL_FOLDER[layout].format(split)).mkdir()
        for index, (image_name, label_name) in enumerate(pairs):
            raw = raw_pattern(index, VAL_SIZES.get(image_name, (HEIGHT, WIDTH)))
            write_bgr(root / split / image_name, PALETTE[raw])
            path = label_file(root, layout, split, label_name)
            write_label(path, layout, raw, classes)
    rows = [f"{name}, {r}, {g}, {b}" for name, (r, g, b) in classes]
    (root / CLASS_TABLE[layout]).write_text("\n".join(["name, r, g, b", *rows]) + "\n")
    return root


def label_file(root, layout, split, name):
    return root / LABEL_FOLDER[layout].format(split) / name


def raw_from_colours(rgb):
    """Raw class of each pixel: the nearest PALETTE colour."""
    distance = np.abs(rgb[..., None, :].astype(int) - PALETTE.astype(int)).sum(-1)
    return distance.argmin(-1)


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(params=["colour", "index"])
def layout(request):
    return request.param


@pytest.fixture
def root(tmp_path, layout):
    return write_dataset(tmp_path / "dataset", layout)


@pytest.fixture
def colour_info(tmp_path):
    return data.load_dataset(write_dataset(tmp_path / "dataset", "colour"))


# --- discovery and ignore handling ------------------------------------------------


def test_pairs_by_stem_in_stem_order(root, layout):
    info = data.load_dataset(root)

    assert info.layout == layout
    assert set(info.splits) == {"train", "val"}
    names = [
        tuple(pathlib.Path(path).name for path in pair) for pair in info.splits["train"]
    ]
    assert names == sorted(PAIRS["train"], key=lambda pair: pathlib.Path(pair[0]).stem)
    for image_path, label_path in info.splits["train"]:
        expected = DEFAULT_IDS[raw_from_colours(read_rgb(image_path))]
        # a.jpg is lossy; any wrong pairing would disagree almost everywhere.
        assert np.mean(data.decode_label_file(info, label_path) == expected) > 0.9


def test_void_class_is_removed_and_ids_are_contiguous(root):
    info = data.load_dataset(root)

    assert info.class_names == ("Sky", "Road", "Car")
    assert info.num_classes == 3
    assert info.colors == ((128, 128, 128), (128, 64, 128), (64, 0, 128))
    assert (info.ignored_name, info.ignored_value) == ("Void", 3)
    label = data.decode_label_file(info, info.splits["val"][1][1])  # v1, index 0
    np.testing.assert_array_equal(label, DEFAULT_IDS[raw_pattern(0, (24, 32))])
    assert label.dtype == np.int32


@pytest.mark.parametrize("ignore_class", ["Road", 1])
def test_ignore_class_by_name_or_index(root, ignore_class):
    info = data.load_dataset(root, ignore_class=ignore_class)

    assert info.class_names == ("Sky", "Car", "Void")
    assert (info.ignored_name, info.ignored_value) == ("Road", 1)
    label = data.decode_label_file(info, info.splits["val"][1][1])
    expected = np.array([0, data.IGNORE_INDEX, 1, 2])[raw_pattern(0, (24, 32))]
    np.testing.assert_array_equal(label, expected)


def test_ignore_raw_value_255_keeps_every_class(tmp_path):
    root = write_dataset(tmp_path, "index")
    path = label_file(root, "index", "train", "a.png")
    raw = raw_pattern(2)
    raw[:5, :5] = 255
    cv2.imwrite(str(path), raw)

    info = data.load_dataset(root, ignore_class=255)

    assert info.class_names == ("Sky", "Road", "Car", "Void")
    assert (info.ignored_name, info.ignored_value) == (None, 255)
    expected = np.where(raw == 255, data.IGNORE_INDEX, raw)
    np.testing.assert_array_equal(data.decode_label_file(info, path), expected)


def test_without_void_class_raw_255_is_ignored_by_default(tmp_path):
    classes = CLASSES[:3] + (("Sidewalk", (0, 0, 192)),)
    root = write_dataset(tmp_path, "index", classes=classes)
    path = label_file(root, "index", "train", "a.png")
    cv2.imwrite(str(path), np.full((HEIGHT, WIDTH), 255, np.uint8))

    info = data.load_dataset(root)

    assert info.num_classes == 4 and info.ignored_name is None
    assert (data.decode_label_file(info, path) == data.IGNORE_INDEX).all()


def test_unknown_ignore_class_name_lists_the_classes(root):
    with pytest.raises(data.DatasetError, match="Sky, Road, Car, Void"):
        data.load_dataset(root, ignore_class="Sidewalk")


def test_describe_summarises_the_dataset(root):
    text = data.describe(data.load_dataset(root))

    assert str(root) in text and "Sky, Road, Car" in text
    assert "Void" in text and "train 4, val 2" in text


# --- validation errors -------------------------------------------------------------


def remove_val_label_folder(root, layout):
    shutil.rmtree(root / LABEL_FOLDER[layout].format("val"))
    return LABEL_FOLDER[layout].format("val")


def remove_a_label(root, layout):
    label_file(root, layout, "train", "b2.png").unlink()
    return "train/b2.png"


def remove_an_image(root, layout):
    (root / "train" / "c.bmp").unlink()
    return "c.png"


def resize_a_label(root, layout):
    path = label_file(root, layout, "train", "a.png")
    write_label(path, layout, raw_pattern(2, (20, 20)))
    return "a.png"


def corrupt_an_image(root, layout):
    (root / "train" / "b2.png").write_bytes(b"\x89PNG not really")
    return "train/b2.png"


def corrupt_a_label(root, layout):
    label_file(root, layout, "val", "v0.png").write_bytes(b"garbage")
    return "v0.png"


def put_unknown_value_in_a_label(root, layout):
    path = label_file(root, layout, "train", "b_L.png")
    if layout == "colour":
        rgb = read_rgb(path)
        rgb[3, 4] = (1, 2, 3)
        write_bgr(path, rgb)
        return r"b_L\.png: colour \(1, 2, 3\)"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    raw[3, 4] = 7
    cv2.imwrite(str(path), raw)
    return r"b_L\.png: value 7 "


def remove_the_train_split(root, layout):
    shutil.rmtree(root / "train")
    shutil.rmtree(root / LABEL_FOLDER[layout].format("train"))
    return "train: missing train split"


@pytest.mark.parametrize(
    "break_dataset",
    [
        remove_val_label_folder,
        remove_a_label,
        remove_an_image,
        resize_a_label,
        corrupt_an_image,
        corrupt_a_label,
        put_unknown_value_in_a_label,
        remove_the_train_split,
    ],
)
def test_bad_dataset_raises_naming_the_file(root, layout, break_dataset):
    expected = break_dataset(root, layout)

    with pytest.raises(data.DatasetError, match=expected) as error:
        data.load_dataset(root)

    message = str(error.value)
    assert "\n" not in message and message.startswith(str(root))


@pytest.mark.parametrize(
    "table, expected",
    [
        ("name,red,green,blue\nSky,1,2,3\n", "header must be name,r,g,b"),
        ("name,r,g,b\nSky,1,2,x\n", r"csv:2: r, g, b must be integers"),
        ("name,r,g,b\nSky,1,2,3\nRoad,1,2,3\n", r"csv:3: duplicate colour \(1, 2, 3\)"),
        ("name,r,g,b\nSky,1,2,300\n", "must be in 0..255"),
        ("name,r,g,b\n", "no classes"),
    ],
)
def test_malformed_class_table_raises(root, layout, table, expected):
    (root / CLASS_TABLE[layout]).write_text(table)

    with pytest.raises(data.DatasetError, match=expected):
        data.load_dataset(root)


def test_missing_folder_or_class_table_raises(tmp_path):
    with pytest.raises(data.DatasetError, match="dataset folder not found"):
        data.load_dataset(tmp_path / "nowhere")
    with pytest.raises(data.DatasetError, match=r"no class table"):
        data.load_dataset(tmp_path)


def test_missing_split_raises_naming_the_folder(colour_info):
    with pytest.raises(data.DatasetError, match=r"dataset/test: no 'test' split"):
        data.make_eval_dataset(colour_info, "test", preprocessing="tf")


def test_unchecked_bad_label_fails_in_the_pipeline_naming_it(tmp_path):
    root = write_dataset(tmp_path, "index")
    path = label_file(root, "index", "val", "v0.png")
    cv2.imwrite(str(path), np.full((HEIGHT, WIDTH), 9, np.uint8))
    info = data.load_dataset(root, check_labels=False)

    with pytest.raises(tf.errors.InvalidArgumentError, match="v0.png"):
        list(data.make_eval_dataset(info, "val", preprocessing="tf"))


# --- pipelines -----------------------------------------------------------------


def train_batches(info, **kwargs):
    arguments = dict(batch_size=2, crop_size=(32, 48), preprocessing="tf") | kwargs
    dataset = data.make_train_dataset(info, "train", **arguments)
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def test_train_dataset_shapes_dtypes_and_label_values(colour_info):
    augment = data.AugmentConfig(v_flip=True, brightness=0.3, rotation=20)
    dataset = data.make_train_dataset(
        colour_info,
        "train",
        batch_size=2,
        crop_size=(32, 48),
        preprocessing="caffe",
        augment=augment,
    )

    assert dataset.element_spec == (
        tf.TensorSpec((2, 32, 48, 3), tf.float32),
        tf.TensorSpec((2, 32, 48), tf.int32),
    )
    batches = [(images.numpy(), labels.numpy()) for images, labels in dataset]
    assert len(batches) == 2  # 4 pairs, batch 2
    all_labels = np.stack([labels for _, labels in batches])
    assert set(np.unique(all_labels)) <= {0, 1, 2, data.IGNORE_INDEX}
    assert np.isfinite(np.stack([images for images, _ in batches])).all()


@pytest.mark.parametrize(
    "settings",
    [dict(scale_range=(2.0, 1.0)), dict(brightness=1.5), dict(rotation=-1.0)],
)
def test_augment_config_rejects_bad_settings(settings):
    with pytest.raises(ValueError):
        data.AugmentConfig(**settings)


def test_crop_larger_than_scaled_image_is_padded_with_ignore(colour_info):
    augment = data.AugmentConfig(scale_range=(0.5, 0.5), h_flip=False)

    batches = train_batches(colour_info, crop_size=(32, 40), augment=augment)

    for images, labels in batches:
        # 40x56 scaled by 0.5 is 20x28, padded at the bottom and right.
        assert (labels[:, 20:] == data.IGNORE_INDEX).all()
        assert (labels[:, :, 28:] == data.IGNORE_INDEX).all()
        assert (images[:, 20:] == 0).all() and (images[:, :, 28:] == 0).all()
        assert (labels[:, :20, :28] != data.IGNORE_INDEX).mean() > 0.5
        # Saturated colours in "tf" mode: every channel is near -1 or 1.
        assert (np.abs(images[:, :20, :28]).sum(-1) > 1.5).all()


@pytest.mark.parametrize("rotation", [0.0, 25.0])
def test_augmented_labels_stay_aligned_with_images(colour_info, rotation):
    augment = data.AugmentConfig(
        scale_range=(0.75, 1.5), h_flip=True, v_flip=True, rotation=rotation
    )
    agreement = []
    for epoch in range(3):
        for images, labels in train_batches(colour_info, augment=augment, epoch=epoch):
            rgb = np.clip((images + 1) * 127.5, 0, 255)
            expected = DEFAULT_IDS[raw_from_colours(rgb)]
            known = labels != data.IGNORE_INDEX
            agreement.append(np.mean(labels[known] == expected[known]))

    # Only pixels on resampled edges may disagree; a misalignment would leave ~1/4.
    assert min(agreement) > 0.85


def test_flip_of_a_full_crop_is_exact(colour_info):
    augment = data.AugmentConfig(scale_range=(1.0, 1.0), h_flip=True)
    originals = {}
    for image_path, label_path in colour_info.splits["train"]:
        label = data.decode_label_file(colour_info, label_path)
        originals[label.tobytes()] = label
        originals[label[:, ::-1].tobytes()] = label

    batches = train_batches(colour_info, crop_size=(HEIGHT, WIDTH), augment=augment)

    flipped = 0
    for _, labels in batches:
        for label in labels:
            assert label.tobytes() in originals
            flipped += not np.array_equal(label, originals[label.tobytes()])
    assert 0 < flipped < 4  # both outcomes occur for seed 0


def test_rotation_fills_corners_with_ignore(colour_info):
    def ignored(rotation):
        augment = data.AugmentConfig(scale_range=(1.0, 1.0), rotation=rotation)
        batches = train_batches(colour_info, crop_size=(HEIGHT, WIDTH), augment=augment)
        return sum(np.count_nonzero(label == data.IGNORE_INDEX) for _, label in batches)

    assert ignored(30.0) > ignored(0.0) * 1.05


def test_same_seed_and_epoch_give_the_same_batches(colour_info):
    augment = data.AugmentConfig(brightness=0.2, rotation=10, v_flip=True)
    first = train_batches(colour_info, augment=augment, seed=3, epoch=1)
    uncached = train_batches(colour_info, augment=augment, seed=3, epoch=1, cache=False)
    next_epoch = train_batches(colour_info, augment=augment, seed=3, epoch=2)

    for (images, labels), (images_again, labels_again) in zip(first, uncached):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, next_epoch))


def test_eval_dataset_yields_whole_images_in_order(root):
    info = data.load_dataset(root)
    dataset = data.make_eval_dataset(info, "val", preprocessing="torch")

    batches = list(dataset)
    assert len(batches) == 2
    for (image, label), (image_path, label_path) in zip(batches, info.splits["val"]):
        rgb = read_rgb(image_path)
        assert image.dtype == tf.float32 and label.dtype == tf.int32
        assert image.shape == (1, *rgb.shape) and label.shape == (1, *rgb.shape[:2])
        expected_image = data.preprocess_image(rgb, "torch")
        np.testing.assert_allclose(image[0], expected_image, atol=1e-5)
        expected_label = data.decode_label_file(info, label_path)
        np.testing.assert_array_equal(label[0], expected_label)


def test_preprocess_image_modes():
    white = np.full((1, 1, 3), 255, np.uint8)

    np.testing.assert_allclose(data.preprocess_image(white, "tf"), 1.0)
    caffe = data.preprocess_image(np.array([[[10, 20, 30]]], np.uint8), "caffe")
    np.testing.assert_allclose(caffe[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68])
    torch = data.preprocess_image(white, "torch")[0, 0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(torch, (1 - mean) / std, rtol=1e-5)
    with pytest.raises(ValueError, match="preprocessing"):
        data.preprocess_image(white, "imagenet")


# --- synthetic dataset -----------------------------------------------------------

TINY = dict(num_train=4, num_val=1, num_test=1, size=(48, 64))


def read_tree(root):
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_generate_dataset_is_deterministic(tmp_path):
    synthetic.generate_dataset(tmp_path / "a", **TINY)
    synthetic.generate_dataset(tmp_path / "b", **TINY)
    synthetic.generate_dataset(tmp_path / "c", **TINY, seed=1)

    files = read_tree(tmp_path / "a")
    assert len(files) == 13  # 6 images, 6 labels, class_dict.csv
    assert files == read_tree(tmp_path / "b")
    assert files != read_tree(tmp_path / "c")


def test_synthetic_dataset_loads_with_void_ignored(tmp_path):
    synthetic.generate_dataset(tmp_path, **TINY)

    info = data.load_dataset(tmp_path)

    assert info.class_names == synthetic.CLASS_NAMES[:-1]
    assert info.ignored_name == "Void"
    sizes = {split: len(pairs) for split, pairs in info.splits.items()}
    assert sizes == {"train": 4, "val": 1, "test": 1}
    labels = [data.decode_label_file(info, path) for _, path in info.splits["train"]]
    assert labels[0].shape == (48, 64)
    present = set(np.unique(labels).tolist())
    assert data.IGNORE_INDEX in present
    assert len(present - {data.IGNORE_INDEX}) >= 4


def test_builtin_dataset_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path))

    assert synthetic.builtin_dataset_dir() == tmp_path / "synthetic-shapes-v1"
    other = tmp_path / "other"
    assert synthetic.builtin_dataset_dir(other) == other / "synthetic-shapes-v1"


def test_ensure_builtin_dataset_generates_once(tmp_path, monkeypatch):
    folder = synthetic.ensure_builtin_dataset(
        tmp_path, num_train=2, num_val=1, num_test=1, size=32
    )

    assert folder == tmp_path / "synthetic-shapes-v1"
    assert [path.name for path in tmp_path.iterdir()] == [folder.name]
    info = data.load_dataset(folder)
    assert info.num_classes == 5
    assert data.decode_label_file(info, info.splits["test"][0][1]).shape == (32, 32)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "generate_dataset", fail)
    assert synthetic.ensure_builtin_dataset(tmp_path, **TINY) == folder


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def write_half_then_fail(root, **kwargs):
        (root / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_dataset", write_half_then_fail)

    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_builtin_dataset(tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []


# --- real data -------------------------------------------------------------------


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} not present")
def test_camvid():
    info = data.load_dataset(CAMVID)

    assert info.layout == "index" and info.num_classes == 11
    assert info.class_names[0] == "Sky" and info.ignored_name == "Unlabelled"
    sizes = {split: len(pairs) for split, pairs in info.splits.items()}
    assert sizes == {"train": 367, "val": 101}
    dataset = data.make_eval_dataset(info, "val", preprocessing="caffe")
    image, label = next(iter(dataset))
    assert image.shape == (1, 360, 480, 3) and label.shape == (1, 360, 480)
    assert set(np.unique(label).tolist()) <= {*range(11), data.IGNORE_INDEX}
