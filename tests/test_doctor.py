"""The dataset doctor (python -m semseg_suite.data check) and the statistics cache behind --class-weights."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from test_data import CAMVID, CLASSES, DEFAULT_IDS, PAIRS, PALETTE, VAL_SIZES, label_file, raw_pattern, write_bgr, \
    write_dataset

from semseg_suite import class_weights, data
from semseg_suite.data import __main__ as doctor_cli
from semseg_suite.data import doctor, statistics


def clean_dataset(root):
    """The test_data index dataset, with val/v0.png made unlike train/b2.png (they are written alike)."""
    write_dataset(root, "index")
    write_bgr(root / "val" / "v0.png", PALETTE[raw_pattern(3)])
    return root


def expected_class_pixels(split):
    """NumPy count of each trainable class's pixels in a split of `clean_dataset`."""
    counts = np.zeros(len(CLASSES) - 1, np.int64)
    for index, (image_name, _) in enumerate(PAIRS[split]):
        ids = DEFAULT_IDS[raw_pattern(index, VAL_SIZES.get(image_name, (40, 56)))]
        counts += np.bincount(ids.ravel(), minlength=256)[: len(counts)]
    return counts


def run_doctor(capsys, *argv):
    status = doctor_cli.main(["check", *map(str, argv), "--no-progress"])
    return status, capsys.readouterr().out


def test_a_clean_dataset_is_reported_and_its_statistics_written(tmp_path, capsys):
    root = clean_dataset(tmp_path / "dataset")
    status, out = run_doctor(capsys, root)
    assert status == 0, out
    assert "problems 0" in out and "problem  " not in out
    info = data.open_dataset(root)
    for split in ("train", "val"):
        stats = statistics.load_cached(info, split)
        assert stats is not None and stats.pairs == len(PAIRS[split])
        np.testing.assert_array_equal(stats.class_pixels, expected_class_pixels(split))
    train = statistics.load_cached(info, "train")
    assert train.image_sizes == {"40x56": 4} and train.image_modes == {"RGB": 4}
    # the class table row: Sky's share of the train pixels, and in how many images it is
    share = 100 * train.class_pixels[0] / train.class_pixels.sum()
    assert any(line.split()[:3] == ["Sky", f"{share:.2f}%", "(4)"] for line in out.splitlines()), out
    # the weights CSVs are --class-weights files equal to the computed weights
    for method in class_weights.METHODS:
        written = [path for path in statistics.stats_dir(info).iterdir() if path.name.startswith(f"weights-{method}-")]
        assert len(written) == 1
        np.testing.assert_allclose(class_weights.read_weights_file(written[0], info.class_names),
                                   class_weights.class_weights(method, info), rtol=1e-5)
    plot = next(statistics.stats_dir(info).glob("class-frequencies-*.png"))
    assert cv2.imread(str(plot)).shape[2] == 3


def test_every_problem_is_listed_with_its_file_and_the_status_is_1(tmp_path, capsys):
    root = write_dataset(tmp_path / "dataset", "index")  # val/v0.png is byte-identical to train/b2.png
    truncated = root / "train" / "b.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    unknown = label_file(root, "index", "train", "a.png")
    raw = cv2.imread(str(unknown), cv2.IMREAD_UNCHANGED)
    raw[0, :3] = 7
    cv2.imwrite(str(unknown), raw)
    resized = label_file(root, "index", "val", "v1.png")
    cv2.imwrite(str(resized), np.zeros((20, 32), np.uint8))
    empty = label_file(root, "index", "train", "c.png")
    cv2.imwrite(str(empty), np.full((40, 56), 3, np.uint8))  # only the void class
    status, out = run_doctor(capsys, root)
    assert status == 1
    problems = [line.removeprefix("problem  ") for line in out.splitlines() if line.startswith("problem  ")]
    assert f"problems {len(problems)}" in out
    assert sorted(problems) == sorted([
        f"{truncated}: truncated image file",
        f"{unknown}: value 7 is not in classes.csv (3 pixels)",
        f"{resized}: label is 20x32 (HxW), its image v1.png is 24x32",
        f"{root / 'val' / 'v0.png'}: the same image as {root / 'train' / 'b2.png'} (train); "
        "the train and val splits overlap",
    ])
    assert f"empty    train: 1 label(s) without a valid pixel (first: {empty})" in out
    # training stops at the first of them, before any step
    with pytest.raises(data.DatasetError):
        data.open_dataset(root)


def test_an_absent_class_is_named_per_split(tmp_path, capsys):
    root = clean_dataset(tmp_path / "dataset")
    for _, label_name in PAIRS["val"]:
        path = label_file(root, "index", "val", label_name)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), np.where(raw == 2, 0, raw).astype(np.uint8))  # no Car in val
    status, out = run_doctor(capsys, root)
    assert status == 0 and "absent   val: Car" in out and "absent   train" not in out


def test_class_weights_read_no_label_the_second_time_and_see_a_changed_file(tmp_path, monkeypatch):
    root = clean_dataset(tmp_path / "dataset")
    info = data.open_dataset(root)
    first = class_weights.class_weights("median-frequency", info)

    def no_reading(*args):
        raise AssertionError("a label was read although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(statistics, "read_pair", no_reading)
        np.testing.assert_array_equal(class_weights.class_weights("median-frequency", info), first)
    # a label rewritten (new content, new mtime) is read again
    path = label_file(root, "index", "train", "b_L.png")
    cv2.imwrite(str(path), np.zeros((40, 56), np.uint8))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    info = data.open_dataset(root)
    fresh = class_weights.class_weights("median-frequency", info)
    assert not np.allclose(fresh, first)
    np.testing.assert_array_equal(statistics.load_cached(info, "train").class_pixels[0],
                                  expected_class_pixels("train")[0] + (DEFAULT_IDS[raw_pattern(0)] != 0).sum())


def test_another_ignore_class_is_cached_apart(tmp_path):
    root = clean_dataset(tmp_path / "dataset")
    default = data.open_dataset(root)
    car_ignored = data.open_dataset(root, ignore_class="Car")
    assert statistics.stats_file(default) != statistics.stats_file(car_ignored)
    assert len(class_weights.class_weights("enet", car_ignored)) == len(car_ignored.class_names) == 3


def test_a_read_only_dataset_is_not_written_into(tmp_path, monkeypatch):
    root = clean_dataset(tmp_path / "dataset")
    monkeypatch.delenv(statistics.STATS_DIR_ENV)
    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path / "cache"))
    before = sorted(path.relative_to(root) for path in root.rglob("*"))
    os.chmod(root, 0o555)
    try:
        report = doctor.examine(data.open_dataset(root), progress=False)
    finally:
        os.chmod(root, 0o755)
    assert sorted(path.relative_to(root) for path in root.rglob("*")) == before
    assert report.written and all(tmp_path / "cache" / "stats" in path.parents for path in report.written)
    # a writable one keeps them beside it, in a hidden folder the loaders skip
    writable = doctor.examine(data.open_dataset(root), progress=False)
    assert all(path.parent == root / ".semseg_suite" for path in writable.written)
    assert data.open_dataset(root).splits == data.open_dataset(root).splits


def test_a_dataset_that_cannot_be_opened_is_one_error_line(tmp_path, capsys):
    status = doctor_cli.main(["check", str(tmp_path / "nowhere"), "--no-progress"])
    assert status == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: dataset folder not found"


def test_plain_folders_are_checked_like_the_rest(tmp_path, capsys):
    root = clean_dataset(tmp_path / "dataset")
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(root / "train", images)
    shutil.copytree(root / "trainannot", masks)
    (masks / "b_L.png").rename(masks / "b.png")
    status, out = run_doctor(capsys, "--images", images, "--masks", masks, "--val-fraction", "0")
    assert status == 0 and "train          4" in out, out


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} not present")
def test_camvid_pixel_shares_match_its_readme(capsys):
    status, out = run_doctor(capsys, CAMVID)
    assert status == 0, out
    info = data.open_dataset(CAMVID)
    splits = {split: statistics.load_cached(info, split) for split in ("train", "val")}
    assert {split: stats.pairs for split, stats in splits.items()} == {"train": 367, "val": 101}
    assert all(stats.image_sizes == {"360x480": stats.pairs} for stats in splits.values())
    pixels = sum(stats.class_pixels for stats in splits.values())
    void = sum(stats.ignored_pixels for stats in splits.values())
    shares = 100 * np.append(pixels, void) / (pixels.sum() + void)
    # the README's "Pixel share of each class over train+val, in index order", to 0.1
    # (it gives Fence's 1.548% as 1.6, hence 0.06 rather than 0.05)
    readme = [15.2, 23.8, 0.9, 31.1, 5.4, 11.2, 1.1, 1.6, 5.0, 0.6, 0.7, 3.5]
    np.testing.assert_allclose(shares, readme, atol=0.06)
    assert json.loads(statistics.stats_file(info).read_text())["classes"] == list(info.class_names)
