"""Bad dataset files: each is one DatasetError line naming the file, or read and said in one INFO line."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_data import HEIGHT, WIDTH, PALETTE, label_file, raw_pattern, write_dataset

from semseg_suite import data


@pytest.fixture
def index_root(tmp_path):
    return write_dataset(tmp_path / "dataset", "index")


def one_line_error(root, match):
    with pytest.raises(data.DatasetError) as error:
        data.open_dataset(root)
    message = str(error.value)
    assert "\n" not in message and match in message, message
    return message


def test_empty_split_folder_names_it(index_root):
    for path in (index_root / "val").iterdir():
        path.unlink()
    for path in (index_root / "valannot").iterdir():
        path.unlink()
    one_line_error(index_root, f"{index_root / 'val'}: no images")


def test_jpeg_label_is_refused_as_lossy(index_root):
    label = label_file(index_root, "index", "val", "v0.png")
    Image.open(label).save(label.with_suffix(".jpg"))
    label.unlink()
    one_line_error(index_root, f"{label.with_suffix('.jpg')}: labels must be lossless (PNG)")


@pytest.mark.parametrize("name", ["b.png", "a.jpg"])
def test_truncated_image_is_refused(index_root, name):
    path = index_root / "train" / name
    if name.endswith(".jpg"):  # a larger JPEG, so that half of it still has a full header
        Image.fromarray(np.tile(PALETTE[raw_pattern(0)], (1, 1, 1))).save(path, quality=95)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    one_line_error(index_root, f"{path}: truncated image file")


def test_truncated_label_is_refused(index_root):
    path = label_file(index_root, "index", "train", "b_L.png")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    one_line_error(index_root, f"{path}: ")


@pytest.mark.parametrize("which", ["image", "label"])
def test_zero_byte_file_is_refused(index_root, which):
    path = index_root / "train" / "b.png" if which == "image" else label_file(index_root, "index", "train", "b_L.png")
    path.write_bytes(b"")
    message = one_line_error(index_root, f"{path}: ")
    assert "not a readable image" in message or "0 bytes" in message


def test_file_with_an_image_extension_that_is_not_an_image(index_root):
    path = index_root / "train" / "b.png"
    path.write_text("a text file named like an image")
    one_line_error(index_root, f"{path}: not a readable image")


def test_non_image_files_are_skipped_with_one_info_line(index_root, caplog):
    (index_root / "train" / "notes.txt").write_text("where these images come from")
    (index_root / "train" / "Thumbs.db").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.INFO, logger="semseg_suite"):
        info = data.open_dataset(index_root)
    assert len(info.splits["train"]) == 4
    lines = [r.getMessage() for r in caplog.records if "non-image" in r.getMessage()]
    assert lines == [f"{index_root / 'train'}: skipped 2 non-image entries (Thumbs.db, notes.txt)"]


@pytest.mark.parametrize("mode, name", [
    ("L", "grayscale"), ("RGBA", "RGBA"), ("P", "palette"), ("I;16", "16-bit grayscale"), ("CMYK", "CMYK"),
])
def test_non_rgb_images_are_read_as_rgb_and_said_once(index_root, caplog, mode, name):
    rgb = PALETTE[raw_pattern(0)]
    path = index_root / "train" / ("b.jpg" if mode == "CMYK" else "b.png")
    (index_root / "train" / "b.png").unlink()
    if mode == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
        expected = np.repeat(rgb[..., :1], 3, axis=-1)
    else:
        Image.fromarray(rgb).convert(mode).save(path, quality=100) if mode == "CMYK" else \
            Image.fromarray(rgb).convert(mode).save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
    with caplog.at_level(logging.INFO, logger="semseg_suite"):
        info = data.open_dataset(index_root)
    assert any(f"1 {name} image(s) are read as 8-bit RGB" in r.getMessage() for r in caplog.records)
    decoded = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False).numpy()
    assert decoded.shape == (HEIGHT, WIDTH, 3) and decoded.dtype == np.uint8
    tolerance = 48 if mode == "CMYK" else 0  # PIL and libjpeg convert CMYK slightly differently
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= tolerance
    batch = next(iter(data.make_eval_dataset(info, "train", preprocessing="tf")))
    assert batch[0].shape[-1] == 3


def test_class_table_with_too_many_classes(index_root):
    rows = [f"c{i}, {i % 256}, {i // 256}, 0" for i in range(300)]
    (index_root / "classes.csv").write_text("\n".join(["name,r,g,b", *rows]) + "\n")
    one_line_error(index_root, "more than 254 classes")


def test_dataset_of_no_known_format_lists_the_formats(tmp_path):
    (tmp_path / "stuff").mkdir()
    message = one_line_error(tmp_path / "stuff", "not a dataset folder of a known format")
    assert "classes.csv" in message


def test_crop_larger_than_every_image_even_scaled_is_refused(index_root):
    info = data.open_dataset(index_root)
    data.check_crop(info, (HEIGHT, WIDTH))  # the largest size itself is fine
    data.check_crop(info, (2 * HEIGHT, 2 * WIDTH), max_scale=2.0)  # reachable by the random rescale
    with pytest.raises(data.DatasetError) as error:
        data.check_crop(info, (HEIGHT + 1, WIDTH), max_scale=1.0)
    assert str(error.value) == (
        f"{index_root / 'train'}: crop {HEIGHT + 1}x{WIDTH} is larger than every train image (largest "
        f"{HEIGHT}x{WIDTH}), so every crop would be padded; use a crop of at most {HEIGHT}x{WIDTH}"
    )
