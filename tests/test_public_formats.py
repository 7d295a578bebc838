"""Pascal VOC, Cityscapes and ADE20K trees written by the tests, read through open_dataset."""

import numpy as np
import pytest
from PIL import Image

from semseg_suite import data
from semseg_suite.data import ade20k, cityscapes, voc

IGNORE = data.IGNORE_INDEX
SHAPE = (12, 16)


def write_rgb(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_index(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw.astype(np.uint8)).save(path)


def eval_labels(info, split):
    return [label[0].numpy() for _, label in data.make_eval_dataset(info, split, preprocessing="tf")]


def one_training_batch(info):
    images, labels = next(iter(data.make_train_dataset(info, "train", batch_size=2, crop_size=(8, 8),
                                                       preprocessing="tf")))
    assert images.shape == (2, 8, 8, 3) and labels.shape == (2, 8, 8)
    values = set(np.unique(labels.numpy()))
    assert values <= set(range(info.num_classes)) | {IGNORE}


# --- Pascal VOC ---------------------------------------------------------------

def voc_raw(seed):
    raw = np.random.default_rng(seed).integers(0, 21, SHAPE)
    raw[0, :], raw[:, 0] = 255, 255  # the object border
    return raw


def write_voc(root, index_stems=()):
    tree = root / "VOCdevkit" / "VOC2012"
    palette = [value for colour in voc.colour_map() for value in colour]
    for split, stems in (("train", ["2007_000001", "2007_000002"]), ("val", ["2007_000003"])):
        lists = tree / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for stem in stems:
            seed = int(stem[-1])
            write_rgb(tree / "JPEGImages" / f"{stem}.jpg", seed)
            path = tree / "SegmentationClass" / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            label = Image.fromarray(voc_raw(seed).astype(np.uint8))
            if stem not in index_stems:  # palette PNG, as VOC ships it
                label = label.convert("P")
                label.putpalette(palette)
            label.save(path)
    return tree


@pytest.mark.parametrize("index_stems", [(), ("2007_000002", "2007_000003")], ids=["palette", "index-pngs"])
def test_voc_palette_and_index_labels_decode_to_class_ids_with_ignored_border(tmp_path, index_stems):
    tree = write_voc(tmp_path, index_stems)
    info = data.open_dataset(tmp_path)  # finds VOCdevkit/VOC2012 inside
    assert info.root == tree and info.layout == "voc" and info.num_classes == 21
    assert info.class_names[0] == "background" and info.class_names[-1] == "tvmonitor"
    assert [len(info.splits[s]) for s in ("train", "val")] == [2, 1]
    np.testing.assert_array_equal(eval_labels(info, "val")[0], voc_raw(3))
    np.testing.assert_array_equal(data.decode_label_file(info, info.splits["train"][1][1]), voc_raw(2))
    one_training_batch(info)


def test_voc_colour_and_grey_keys_do_not_collide():
    colours, values = voc.colour_map(), (*range(21), 255)
    for value in values:  # the grey key (v, v, v) of index v is the colour of no other label value
        owners = [other for other in values if colours[other] == (value, value, value)]
        assert owners == ([0] if value == 0 else []), (value, owners)


def test_voc_missing_label_of_a_listed_stem_names_the_list(tmp_path):
    tree = write_voc(tmp_path)
    (tree / "SegmentationClass" / "2007_000003.png").unlink()
    with pytest.raises(data.DatasetError, match=r"val\.txt: 2007_000003 has no SegmentationClass/2007_000003\.png"):
        data.open_dataset(tmp_path)


def test_voc_sbd_pngs_join_train_but_not_val(tmp_path):
    tree = write_voc(tmp_path)
    write_rgb(tree / "JPEGImages" / "2008_000004.jpg", 4)
    for stem, seed in (("2008_000004", 4), ("2007_000003", 3)):  # SBD-only, and VOC val (excluded from train)
        write_index(tree / "SegmentationClassAug" / f"{stem}.png", voc_raw(seed))
    info = data.open_dataset(tmp_path, sbd=str(tree))  # tests/test_sbd.py covers SBD's own .mat release
    assert [len(info.splits[s]) for s in ("train", "val")] == [3, 1]
    assert info.splits["val"] == data.open_dataset(tmp_path).splits["val"]
    assert any(note.startswith("SBD: 1 train images added (1 from VOC val excluded); PNG labels from")
               for note in info.notes)
    np.testing.assert_array_equal(data.decode_label_file(info, info.splits["train"][2][1]), voc_raw(4))
    one_training_batch(info)


# --- Cityscapes ---------------------------------------------------------------

def write_cityscapes(root):
    raws = {}
    for split, city, stems in (("train", "aachen", ["aachen_000000_000019", "aachen_000001_000019"]),
                               ("val", "frankfurt", ["frankfurt_000000_000294"])):
        for n, stem in enumerate(stems):
            raw = np.random.default_rng(n).integers(0, 34, SHAPE)
            raw[0, :4] = [7, 33, 0, 4]
            raws[stem] = raw
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", n)
            write_index(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
    # the test split's placeholder labels are skipped
    write_rgb(root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png", 9)
    return raws


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    raws = write_cityscapes(tmp_path)
    info = data.open_dataset(tmp_path)
    assert info.layout == "cityscapes" and info.num_classes == 19 and set(info.splits) == {"train", "val"}
    lookup = np.full(34, IGNORE)
    for train_id, (_, label_id, _) in enumerate(cityscapes.CLASSES):
        lookup[label_id] = train_id
    (label,) = eval_labels(info, "val")
    np.testing.assert_array_equal(label, lookup[raws["frankfurt_000000_000294"]])
    assert list(label[0, :4]) == [0, 18, IGNORE, IGNORE]  # 7 road, 33 bicycle, 0 and 4 ignored
    assert info.colors[0] == (128, 64, 128)
    one_training_batch(info)


def test_cityscapes_id_above_33_and_unpaired_image_are_named(tmp_path):
    write_cityscapes(tmp_path)
    label = tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    write_index(label, np.full(SHAPE, 40))
    with pytest.raises(data.DatasetError, match=rf"{label}: value 40 is not in the Cityscapes labelIds"):
        data.open_dataset(tmp_path)
    label.unlink()
    with pytest.raises(data.DatasetError, match="frankfurt_000000_000294_leftImg8bit.png: no label"):
        data.open_dataset(tmp_path)


# --- ADE20K -------------------------------------------------------------------

def write_ade(root, with_info=False):
    tree = root / "ADEChallengeData2016"
    raws = {}
    for theirs, stems in (("training", ["ADE_train_00000001", "ADE_train_00000002"]), ("validation", ["ADE_val_1"])):
        for n, stem in enumerate(stems):
            raw = np.random.default_rng(n).integers(0, 151, SHAPE)
            raw[0, :3] = [0, 1, 150]
            raws[stem] = raw
            write_rgb(tree / "images" / theirs / f"{stem}.jpg", n)
            write_index(tree / "annotations" / theirs / f"{stem}.png", raw)
    if with_info:
        rows = [f"{i}\t0.1\t10\t1\tname{i};synonym" for i in range(1, 151)]
        (tree / "objectInfo150.txt").write_text("\n".join(["Idx\tRatio\tTrain\tVal\tName", *rows]) + "\n")
    return tree, raws


@pytest.mark.parametrize("with_info", [False, True], ids=["built-in-names", "objectInfo150"])
def test_ade20k_zero_is_ignored_and_classes_shift_down(tmp_path, with_info):
    tree, raws = write_ade(tmp_path, with_info)
    info = data.open_dataset(tmp_path)
    assert info.root == tree and info.layout == "ade20k" and info.num_classes == 150
    assert len(set(info.class_names)) == 150
    assert info.class_names[:3] == (("name1", "name2", "name3") if with_info else ("wall", "building", "sky"))
    assert info.class_names[-1] == ("name150" if with_info else "flag")
    (label,) = eval_labels(info, "val")
    expected = np.where(raws["ADE_val_1"] == 0, IGNORE, raws["ADE_val_1"] - 1)
    np.testing.assert_array_equal(label, expected)
    assert list(label[0, :3]) == [IGNORE, 0, 149]
    one_training_batch(info)


def test_ade20k_value_above_150_is_named(tmp_path):
    tree, _ = write_ade(tmp_path)
    label = tree / "annotations" / "validation" / "ADE_val_1.png"
    write_index(label, np.full(SHAPE, 151))
    with pytest.raises(data.DatasetError, match=rf"{label}: value 151 is not in the ADE20K labels"):
        data.open_dataset(tree)


def test_ignore_class_is_refused_where_the_format_fixes_it(tmp_path):
    write_cityscapes(tmp_path / "cs")
    with pytest.raises(data.DatasetError, match="no --ignore-class"):
        data.open_dataset(tmp_path / "cs", ignore_class="road")
    assert ade20k.NUM_CLASSES == len(ade20k.CLASS_NAMES)
