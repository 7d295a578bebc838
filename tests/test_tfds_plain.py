"""TFDS datasets (through tfds.testing.mock_data) and plain image/mask folders."""

import csv
import importlib.util
import pathlib

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from semseg_suite import data, export
from semseg_suite.data import core

ROOT = pathlib.Path(__file__).resolve().parents[1]
PET = "oxford_iiit_pet"  # features: image (H, W, 3) and segmentation_mask (H, W, 1)


def _train_script():
    spec = importlib.util.spec_from_file_location("train_script_tfds", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path / "cache"))
    yield
    keras.backend.clear_session()


def _examples(split, count=4, size=40):
    """Mock examples: masks in 0..2, every other one 3 rows taller than its image."""
    rng = np.random.default_rng(len(split))
    examples = []
    for index in range(count):
        height, width = size + index, size
        mask_height = height if index % 2 else height + 3
        examples.append({
            "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "segmentation_mask": rng.integers(0, 3, (mask_height, width, 1), dtype=np.uint8),
        })
    return examples


def _as_dataset(store):
    def as_dataset(builder, split=None, **kwargs):
        examples = store.setdefault(str(split), _examples(str(split)))
        signature = {"image": tf.TensorSpec((None, None, 3), tf.uint8),
                     "segmentation_mask": tf.TensorSpec((None, None, 1), tf.uint8)}
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    return as_dataset


def _write_classes(path, rows):
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["name", "r", "g", "b"])
        writer.writerows(rows)
    return path


def test_tfds_is_converted_once_with_masks_resized(tmp_path):
    store = {}
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset(store)):
        info = data.open_dataset(f"tfds:{PET}")
    assert info.layout == "tfds" and info.spec == f"tfds:{PET}" and info.label_encoding == "index"
    assert info.class_names == ("class_0", "class_1", "class_2")
    assert set(info.splits) == {"train", "val", "test"}
    assert any("6 mask(s) resized" in note for note in info.notes), info.notes
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        for (image_path, label_path), example in zip(info.splits[split], store[tfds_split]):
            image = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(image, example["image"])
            expected = cv2.resize(example["segmentation_mask"][..., 0], image.shape[1::-1],
                                  interpolation=cv2.INTER_NEAREST)
            np.testing.assert_array_equal(core.decode_label_file(info, label_path), expected)
    # Reused: a second open needs no as_dataset (it would raise).
    def fail(*args, **kwargs):
        raise AssertionError("converted twice")

    with tfds.testing.mock_data(as_dataset_fn=fail):
        again = data.open_dataset(f"tfds:{PET}")
    assert again.splits == info.splits
    assert not [p for p in (tmp_path / "cache" / "tfds" / PET / "default").iterdir() if p.name.startswith(".")]


def test_tfds_unknown_name_and_bad_keys(tmp_path):
    with pytest.raises(data.DatasetError, match=rf"tfds:oxford_iiit_pets: no such TFDS dataset.*{PET}"):
        data.open_dataset("tfds:oxford_iiit_pets")
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset({})):
        with pytest.raises(data.DatasetError, match="no mask feature; give --tfds-mask-key; features: .*image"):
            data.open_dataset(f"tfds:{PET}", tfds_mask_key="nope")


def test_tfds_not_prepared_offline_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DatasetError, match=rf"not prepared.*{tmp_path / 'tfds'}.*tfds build {PET}"):
        data.open_dataset(f"tfds:{PET}", tfds_data_dir=str(tmp_path / "tfds"))


def _plain_tree(root, masks, ext=".png"):
    """Writes images/ and masks/ with a random RGB image of each mask's (a PIL image) size."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        width, height = mask.size
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
        mask.save(root / "masks" / f"{stem}{ext}")
    return root / "images", root / "masks"


def _decoded(info):
    return [core.decode_label_file(info, label) for split in info.splits.values() for _, label in split]


def test_plain_index_and_binary_masks(tmp_path):
    rng = np.random.default_rng(1)
    index = {f"i{n}": rng.integers(0, 3, (8, 8), dtype=np.uint8) for n in range(3)}
    index["i0"][0, 0] = 255
    images, masks = _plain_tree(tmp_path / "index", {k: Image.fromarray(v) for k, v in index.items()})
    info = data.open_dataset(images=str(images), masks=str(masks), val_fraction=0.0)
    assert info.class_names == ("class_0", "class_1", "class_2") and info.layout == "folders"
    expected = [np.where(v == 255, 255, v) for _, v in sorted(index.items())]
    for got, want in zip(_decoded(info), expected):
        np.testing.assert_array_equal(got, want)
    binary = {f"b{n}": rng.choice(np.array([0, 255], np.uint8), (8, 8)) for n in range(3)}
    images, masks = _plain_tree(tmp_path / "binary", {k: Image.fromarray(v) for k, v in binary.items()})
    info = data.open_dataset(images=str(images), masks=str(masks), val_fraction=0.0)
    assert info.class_names == ("background", "foreground")
    assert any("255 is not ignored" in note for note in info.notes)
    for got, (_, want) in zip(_decoded(info), sorted(binary.items())):
        np.testing.assert_array_equal(got, want // 255)
    # the stored options reopen it from anywhere (absolute paths)
    assert pathlib.Path(info.options["images"]).is_absolute()
    assert data.open_dataset(info.spec, **info.options).splits == info.splits


def test_plain_16_bit_masks_convert_once_to_the_ids_of_8_bit_ones(tmp_path):
    rng = np.random.default_rng(4)
    index = {f"w{n}": rng.integers(0, 3, (8, 8), dtype=np.uint8) for n in range(3)}
    index["w0"][0, 0] = 255
    infos = {}
    for bits in (8, 16):
        images, masks = _plain_tree(tmp_path / f"bits{bits}", {k: Image.fromarray(v) for k, v in index.items()})
        if bits == 16:
            for stem, array in index.items():
                cv2.imwrite(str(masks / f"{stem}.png"), array.astype(np.uint16))
            with Image.open(masks / "w1.png") as mask:
                assert mask.mode == "I;16"
        infos[bits] = data.open_dataset(images=str(images), masks=str(masks), val_fraction=0.0)
    assert infos[16].class_names == infos[8].class_names == ("class_0", "class_1", "class_2")
    for got, want, (_, raw) in zip(_decoded(infos[16]), _decoded(infos[8]), sorted(index.items())):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, raw)
    (cache,) = (tmp_path / "cache" / "masks16").iterdir()
    assert any(note == f"16-bit masks converted to 8-bit copies in {cache}" for note in infos[16].notes)
    assert all(label.startswith(f"{cache}/") for _, label in infos[16].splits["train"])
    written = {path: path.stat().st_mtime_ns for path in cache.iterdir()}
    again = data.open_dataset(infos[16].spec, **infos[16].options)
    assert again.splits == infos[16].splits and {p: p.stat().st_mtime_ns for p in cache.iterdir()} == written
    too_large = index["w2"].astype(np.uint16)
    too_large[3, 3] = 300
    cv2.imwrite(str(masks / "w2.png"), too_large)
    message = rf"{masks / 'w2.png'}: 16-bit mask value 300 does not fit the suite's 8-bit labels \(ids 0\.\.254, 255"
    with pytest.raises(data.DatasetError, match=message):
        data.open_dataset(images=str(images), masks=str(masks), val_fraction=0.0)


def test_plain_palette_and_rgb_masks(tmp_path):
    rng = np.random.default_rng(2)
    colours = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
    arrays = {f"p{n}": rng.integers(0, 3, (8, 8), dtype=np.uint8) for n in range(3)}
    palette_masks = {}
    for stem, array in arrays.items():
        image = Image.fromarray(array, mode="P")
        image.putpalette([value for colour in colours for value in colour] + [0] * (768 - 9))
        palette_masks[stem] = image
    images, masks = _plain_tree(tmp_path / "palette", palette_masks)
    info = data.open_dataset(images=str(images), masks=str(masks), val_fraction=0.0)
    assert info.label_encoding == "colour" and info.colors == tuple(colours)
    for got, (_, want) in zip(_decoded(info), sorted(arrays.items())):
        np.testing.assert_array_equal(got, want)
    rgb = {stem: Image.fromarray(np.array(colours, np.uint8)[array]) for stem, array in arrays.items()}
    images, masks = _plain_tree(tmp_path / "rgb", rgb)
    with pytest.raises(data.DatasetError, match="RGB masks need --classes"):
        data.open_dataset(images=str(images), masks=str(masks))
    classes = _write_classes(tmp_path / "classes.csv", [("sky", 0, 0, 0), ("red", 200, 10, 10), ("green", 10, 200, 10)])
    info = data.open_dataset(images=str(images), masks=str(masks), classes=str(classes), val_fraction=0.0)
    assert info.class_names == ("sky", "red", "green")
    for got, (_, want) in zip(_decoded(info), sorted(arrays.items())):
        np.testing.assert_array_equal(got, want)


def test_plain_mixed_modes_refused_and_splits(tmp_path):
    masks = {"a": Image.fromarray(np.zeros((8, 8), np.uint8)), "b": Image.fromarray(np.zeros((8, 8, 3), np.uint8))}
    images, mask_dir = _plain_tree(tmp_path / "mixed", masks)
    with pytest.raises(data.DatasetError, match=r"b\.png: mask mode RGB, the other masks are L"):
        data.open_dataset(images=str(images), masks=str(mask_dir))
    many = {f"s{n:03d}": Image.fromarray(np.full((8, 8), n % 2, np.uint8)) for n in range(200)}
    images, mask_dir = _plain_tree(tmp_path / "many", many)
    first = data.open_dataset(images=str(images), masks=str(mask_dir), val_fraction=0.25, check_labels=False)
    second = data.open_dataset(images=str(images), masks=str(mask_dir), val_fraction=0.25, check_labels=False)
    assert first.splits == second.splits
    assert 30 <= len(first.splits["val"]) <= 70 and len(first.splits["val"]) + len(first.splits["train"]) == 200
    smaller = data.open_dataset(images=str(images), masks=str(mask_dir), val_fraction=0.1, check_labels=False)
    assert set(smaller.splits["val"]) <= set(first.splits["val"])
    none = data.open_dataset(images=str(images), masks=str(mask_dir), val_fraction=0.0, check_labels=False)
    assert set(none.splits) == {"train"}
    root = tmp_path / "split"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / split / f"{split}1.png")
        Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "masks" / split / f"{split}1.png")
    info = data.open_dataset(images=str(root / "images"), masks=str(root / "masks"))
    assert {split: [pathlib.Path(p).name for p, _ in pairs] for split, pairs in info.splits.items()} == {
        "train": ["train1.png"], "val": ["val1.png"]}


def test_train_one_epoch_on_tfds_and_plain_folders(tmp_path):
    train = _train_script()
    classes = _write_classes(tmp_path / "pet.csv", [("a", 0, 0, 0), ("b", 255, 0, 0), ("c", 0, 255, 0)])
    common = ["--model", "SegNet-Basic", "--batch_size", "2", "--crop-height", "32", "--crop-width", "32",
              "--num-epochs", "1", "--classes", str(classes)]
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset({})):
        out = tmp_path / "tfds_run"
        assert train.main([*common, "--dataset", f"tfds:{PET}", "--checkpoint-dir", str(out)]) == 0
        meta = export.read_metadata(out / "best.h5")
        assert meta["dataset"] == f"tfds:{PET}"
        reopened = data.open_dataset(meta["dataset"], **meta.get("dataset_options", {}))
        assert reopened.class_names == ("a", "b", "c")
    with (out / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_miou"]) <= 1.0
    rng = np.random.default_rng(3)
    root = tmp_path / "plain"
    masks = {f"m{n}": Image.fromarray(rng.integers(0, 3, (40, 40), dtype=np.uint8)) for n in range(6)}
    images, mask_dir = _plain_tree(root, masks)
    out = tmp_path / "plain_run"
    argv = [*common, "--images", str(images), "--masks", str(mask_dir), "--val-fraction", "0.5",
            "--checkpoint-dir", str(out)]
    assert train.main(argv) == 0
    meta = export.read_metadata(out / "best.h5")
    reopened = data.open_dataset(meta["dataset"], **meta.get("dataset_options", {}))
    assert reopened.class_names == ("a", "b", "c") and reopened.layout == "folders"
    with (out / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_miou"]) <= 1.0
