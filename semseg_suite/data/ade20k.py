"""ADE20K SceneParsing (Zhou et al., CVPR 2017): the 150-class MIT Scene Parsing benchmark.

Tree: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
``annotations/{training,validation}/*.png`` (the folder itself or its parent).
Labels hold 0 = "other objects" and 1..150 = the classes. As in the benchmark and
mmsegmentation's ``reduce_zero_label=True``, 0 is ignored and class k becomes train id
k - 1; values above 150 are invalid. Class names come from ``objectInfo150.csv`` /
``objectInfo150.txt`` at the root when present (first name of each row), else from
the built-in list of the benchmark's 150 names, in its order. Colours: a fixed
palette generated from a seed (the benchmark defines none for training).
"""

import csv

import numpy as np

from semseg_suite.data.core import IGNORE_INDEX, DatasetError, DatasetInfo, pair_files

SIGNATURE = "images/ annotations/ with training/ validation/ (ADEChallengeData2016)"
OPTIONS = ()
NUM_CLASSES = 150
SPLITS = {"training": "train", "validation": "val"}
# The benchmark's class names (objectInfo150), first synonym, in label order 1..150;
# checked name by name against mmsegmentation's ADE20KDataset (mmseg/datasets/ade.py).
CLASS_NAMES = tuple(name.replace("_", " ") for name in """
wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table mountain plant
curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock wardrobe lamp
bathtub railing cushion base box column signboard chest_of_drawers counter sand sink skyscraper fireplace refrigerator
grandstand path stairs runway case pool_table pillow screen_door stairway river bridge bookcase blind coffee_table
toilet flower book hill bench countertop stove palm kitchen_island computer swivel_chair boat bar arcade_machine hovel
bus towel light truck tower chandelier awning streetlight booth television_receiver airplane dirt_track apparel pole
land bannister escalator ottoman bottle buffet poster stage van ship fountain conveyer_belt canopy washer plaything
swimming_pool stool barrel basket waterfall tent bag minibike cradle oven ball food step tank trade_name microwave pot
animal bicycle lake dishwasher screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier crt_screen
plate monitor bulletin_board shower radiator glass clock flag
""".split())  # fmt: skip
_INFO_FILES = ("objectInfo150.csv", "objectInfo150.txt")


def _tree(root):
    """The folder holding images/ and annotations/: root or root/ADEChallengeData2016."""
    for folder in (root, root / "ADEChallengeData2016"):
        if all((folder / kind / split).is_dir() for kind in ("images", "annotations") for split in SPLITS):
            return folder
    return None


def detect(root) -> bool:
    return _tree(root) is not None


def load(root, options) -> DatasetInfo:
    """Reads an ADE20K SceneParsing tree (see the module doc)."""
    if options.ignore_class is not None:
        raise DatasetError(f"{root}: ADE20K ignores label 0 (other objects); no --ignore-class")
    tree = _tree(root)
    splits = {
        ours: pair_files(tree / "images" / theirs, tree / "annotations" / theirs) for theirs, ours in SPLITS.items()
    }
    names, source = _class_names(tree)
    colors = np.random.default_rng(150).integers(0, 256, size=(NUM_CLASSES, 3))
    return DatasetInfo(
        root=tree,
        layout="ade20k",
        class_names=names,
        colors=tuple(tuple(int(v) for v in color) for color in colors),
        ignored_name="other objects",
        ignored_value=0,
        splits=splits,
        label_map=((0, IGNORE_INDEX), *((raw, raw - 1) for raw in range(1, NUM_CLASSES + 1))),
        label_encoding="index",
        class_table="the ADE20K labels 0..150",
        spec=str(tree),
        notes=(f"label 0 (other objects) ignored, label k is class k-1 (reduce_zero_label); names from {source}",),
    )


def _class_names(tree):
    """(150 names, where they came from): objectInfo150 at the root, else the built-in list."""
    for name in _INFO_FILES:
        path = tree / name
        if path.is_file():
            text = path.read_text(encoding="utf-8-sig")
            dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
            rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
            try:
                names = tuple(row["Name"].split(";")[0].strip() for row in rows)
            except KeyError:
                raise DatasetError(f"{path}: expected a Name column, got {list(rows[0]) if rows else []}") from None
            if len(names) != NUM_CLASSES:
                raise DatasetError(f"{path}: {len(names)} classes, expected {NUM_CLASSES}")
            return names, path.name
    return CLASS_NAMES, "the built-in list"
