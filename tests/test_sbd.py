"""The SBD augmented set (`--sbd`) added to a tiny Pascal VOC tree written by the tests."""

import logging
import pathlib

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from semseg_suite import data
from semseg_suite.data import voc

SHAPE = (16, 16)
VOC_TRAIN = ("2007_000001", "2007_000002")
VOC_VAL = ("2007_000003",)
SBD_TRAIN = ("2007_000002", "2007_000003", "2008_000004", "2008_000005")  # one VOC train, one VOC val stem
SBD_VAL = ("2008_000006",)
IN_JPEG_IMAGES = "2008_000005"  # an SBD-only stem whose image VOC's JPEGImages/ also has
TRAIN_AUG = ("2007_000001", "2007_000002", "2008_000004", "2008_000005", "2008_000006")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEG_SUITE_CACHE", str(tmp_path / "cache"))


def ids(stem, border=False):
    """The class ids written for `stem`: random in 0..20, maybe with VOC's 255 border."""
    raw = np.random.default_rng(int(stem[-4:])).integers(0, 21, SHAPE).astype(np.uint8)
    if border:
        raw[0, :] = 255
    return raw


def write_rgb(path, stem):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(int(stem[-4:])).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)).save(path)


def write_voc(root):
    """VOC train/val with palette labels, and the JPEG of one SBD-only stem; returns the VOC2012 folder."""
    tree = root / "VOCdevkit" / "VOC2012"
    lists = tree / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (tree / "SegmentationClass").mkdir()
    palette = [value for colour in voc.colour_map() for value in colour]
    for split, stems in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (lists / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for stem in stems:
            write_rgb(tree / "JPEGImages" / f"{stem}.jpg", stem)
            label = Image.fromarray(ids(stem, border=True)).convert("P")
            label.putpalette(palette)
            label.save(tree / "SegmentationClass" / f"{stem}.png")
    write_rgb(tree / "JPEGImages" / f"{IN_JPEG_IMAGES}.jpg", IN_JPEG_IMAGES)
    return tree


def write_mat(path, segmentation):
    """A cls/X.mat as SBD ships it: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    boundaries = np.empty((21, 1), dtype=object)
    for row in range(21):
        boundaries[row, 0] = scipy.sparse.csc_matrix(segmentation.shape, dtype=bool)
    categories = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    gt = {"Segmentation": segmentation, "Boundaries": boundaries, "CategoriesPresent": categories}
    scipy.io.savemat(path, {"GTcls": gt})


def write_release(root):
    """SBD's release tree ``benchmark_RELEASE/dataset/``; returns the dataset folder."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    for name, stems in (("train.txt", SBD_TRAIN), ("val.txt", SBD_VAL)):
        (dataset / name).write_text("\n".join(stems) + "\n")
        for stem in stems:
            write_rgb(dataset / "img" / f"{stem}.jpg", stem)
            write_mat(dataset / "cls" / f"{stem}.mat", ids(stem))
    return dataset


def stems(pairs):
    return [pathlib.Path(image).stem for image, _ in pairs]


def test_savemat_struct_reads_back_as_the_real_sbd_files_do(tmp_path):
    write_mat(tmp_path / "x.mat", ids("0001"))
    gt = scipy.io.loadmat(tmp_path / "x.mat", struct_as_record=False, squeeze_me=True)["GTcls"]
    assert isinstance(gt, scipy.io.matlab.mat_struct) and gt.Segmentation.dtype == np.uint8
    np.testing.assert_array_equal(gt.Segmentation, ids("0001"))


@pytest.mark.parametrize("where", ["", "benchmark_RELEASE", "benchmark_RELEASE/dataset"])
def test_release_adds_train_aug_with_labels_converted_once(tmp_path, caplog, where):
    tree = write_voc(tmp_path / "voc")
    dataset = write_release(tmp_path / "sbd")
    with caplog.at_level(logging.INFO, logger="semseg_suite"):
        info = data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd" / where))
    assert "SBD: 3/3 .mat masks converted" in caplog.text
    plain_voc = data.open_dataset(tmp_path / "voc")
    assert stems(info.splits["train"]) == list(TRAIN_AUG)  # VOC train + SBD train + SBD val - VOC val
    assert info.splits["val"] == plain_voc.splits["val"]
    pairs = dict(zip(stems(info.splits["train"]), info.splits["train"]))
    assert pairs["2007_000002"] == plain_voc.splits["train"][1]  # in VOC train: VOC's own label, once
    assert pairs[IN_JPEG_IMAGES][0] == str(tree / "JPEGImages" / f"{IN_JPEG_IMAGES}.jpg")
    assert pairs["2008_000004"][0] == str(dataset / "img" / "2008_000004.jpg")
    for stem in ("2008_000004", "2008_000005", "2008_000006"):
        np.testing.assert_array_equal(data.decode_label_file(info, pairs[stem][1]), ids(stem))
    np.testing.assert_array_equal(data.decode_label_file(info, pairs["2007_000002"][1]), ids("2007_000002", True))
    (note,) = [note for note in info.notes if note.startswith("SBD:")]
    cache = tmp_path / "cache" / "sbd"
    assert note.startswith("SBD: 3 train images added (1 from VOC val excluded); .mat converted to PNG in ")
    (folder,) = cache.iterdir()  # the finished folder only, no temporary one
    assert str(folder) in note and sorted(p.name for p in folder.iterdir()) == [f"{s}.png" for s in TRAIN_AUG[2:]]
    written = {path: path.stat().st_mtime_ns for path in folder.iterdir()}
    again = data.open_dataset(info.spec, **info.options)  # reopens from the recorded (absolute) sbd path
    assert again.splits == info.splits and info.options["sbd"] == str(tmp_path / "sbd" / where)
    assert {path: path.stat().st_mtime_ns for path in folder.iterdir()} == written
    labels = [label[0].numpy() for _, label in data.make_eval_dataset(info, "train", preprocessing="tf")]
    np.testing.assert_array_equal(labels[TRAIN_AUG.index("2008_000006")], ids("2008_000006"))


def test_interrupted_conversion_leaves_no_cache_folder(tmp_path, monkeypatch):
    write_voc(tmp_path / "voc")
    write_release(tmp_path / "sbd")
    loadmat, calls = scipy.io.loadmat, []

    def fail_on_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return loadmat(*args, **kwargs)

    monkeypatch.setattr(scipy.io, "loadmat", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    assert list((tmp_path / "cache" / "sbd").iterdir()) == []
    monkeypatch.setattr(scipy.io, "loadmat", loadmat)
    info = data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    assert stems(info.splits["train"]) == list(TRAIN_AUG)


def write_aug_pngs(folder, tree, with_list):
    """SegmentationClassAug PNGs (with a 255 pixel) of every SBD stem, their JPEGs in VOC's JPEGImages/."""
    folder.mkdir(parents=True)
    for stem in SBD_TRAIN + SBD_VAL:
        write_rgb(tree / "JPEGImages" / f"{stem}.jpg", stem)
        raw = ids(stem)
        raw[0, 0] = 255
        Image.fromarray(raw).save(folder / f"{stem}.png")
    (folder / "2009_000007.png").write_bytes((folder / "2008_000004.png").read_bytes())  # not in the list
    write_rgb(tree / "JPEGImages" / "2009_000007.jpg", "2009_000007")
    if with_list:  # DrSleep's format: image and label paths
        lines = [f"/JPEGImages/{stem}.jpg /SegmentationClassAug/{stem}.png" for stem in SBD_TRAIN + SBD_VAL]
        (folder / "train_aug.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("where", ["voc-tree", "folder", "elsewhere-with-list"])
def test_segmentation_class_aug_pngs(tmp_path, where):
    tree = write_voc(tmp_path / "voc")
    folder = (tmp_path / "aug" if where.startswith("elsewhere") else tree) / "SegmentationClassAug"
    write_aug_pngs(folder, tree, with_list=where.endswith("list"))
    sbd = {"voc-tree": tmp_path / "voc", "folder": folder, "elsewhere-with-list": tmp_path / "aug"}[where]
    info = data.open_dataset(tmp_path / "voc", sbd=str(sbd))
    expected = sorted({*TRAIN_AUG, *(() if where.endswith("list") else ("2009_000007",))})
    assert stems(info.splits["train"]) == expected
    pairs = dict(zip(stems(info.splits["train"]), info.splits["train"]))
    assert pairs["2008_000004"] == (str(tree / "JPEGImages" / "2008_000004.jpg"), str(folder / "2008_000004.png"))
    raw = ids("2008_000006")
    raw[0, 0] = 255
    np.testing.assert_array_equal(data.decode_label_file(info, pairs["2008_000006"][1]), raw)
    assert any(note.startswith("SBD: ") and f"PNG labels from {folder}" in note for note in info.notes)


def test_bad_sbd_folders_and_files_are_named(tmp_path):
    write_voc(tmp_path / "voc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetError, match=rf"^{tmp_path / 'empty'}: not an SBD folder: neither SBD's release"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "empty"))
    with pytest.raises(data.DatasetError, match=rf"{tmp_path / 'none'}: SBD folder not found"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "none"))
    dataset = write_release(tmp_path / "sbd")
    bad = dataset / "cls" / "2008_000004.mat"
    scipy.io.savemat(bad, {"GTinst": {"Segmentation": ids("0004")}})
    with pytest.raises(data.DatasetError, match=rf"^{bad}: no GTcls.Segmentation map of class ids"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    write_mat(bad, np.full(SHAPE, 21, np.uint8))
    with pytest.raises(data.DatasetError, match=rf"^{bad}: Segmentation value 21 is not a VOC class id \(0\.\.20\)"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    bad.write_bytes(b"not a mat file")
    with pytest.raises(data.DatasetError, match=rf"^{bad}: not a readable .mat file"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    write_mat(bad, np.zeros((12, 16), np.uint8))
    with pytest.raises(data.DatasetError, match=r"2008_000004\.png: label is 12x16 \(HxW\), its image 2008_000004.jpg"):
        data.open_dataset(tmp_path / "voc", sbd=str(tmp_path / "sbd"))
    assert not [path for path in (tmp_path / "cache" / "sbd").iterdir() if path.name.startswith(".")]
