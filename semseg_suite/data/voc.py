"""Pascal VOC 2012 segmentation (Everingham et al., IJCV 2010): 21 classes, 255 border ignored.

Tree: ``JPEGImages/ SegmentationClass/ ImageSets/Segmentation/{train,val}.txt`` (the
folder itself, or ``VOC2012/`` / ``VOCdevkit/VOC2012/`` inside it). Labels are palette
PNGs in VOC's bit-interleaved colour map; they decode to RGB through their palette
and map back to class ids by colour, index 255 (the object borders, colour
224,224,192) to IGNORE_INDEX. 1-channel index PNGs (the common SegmentationClassAug
conversion) read through the same table as grey triples (v, v, v): no class colour of
the map is grey except background (0, 0, 0) and car (128, 128, 128), whose grey values
0 and 128 are not other classes' ids, so the two encodings cannot be confused.

``sbd=DIR`` adds the SBD augmented set to the train split (`semseg_suite.data.sbd`);
its masks are 1-channel index PNGs, read as above.
"""

import pathlib

from semseg_suite.data import sbd
from semseg_suite.data.core import IGNORE_INDEX, DatasetError, DatasetInfo

SIGNATURE = "JPEGImages/ SegmentationClass/ ImageSets/Segmentation/ (VOC2012)"
OPTIONS = ("sbd",)
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def colour_map(count=256):
    """VOC's colour of each palette index: the index's bits interleaved into R, G, B."""
    colours = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= (value >> 1 & 1) << shift
            b |= (value >> 2 & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def _tree(root):
    for folder in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if all((folder / name).is_dir() for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")):
            return folder
    return None


def detect(root) -> bool:
    return _tree(root) is not None


def load(root, options) -> DatasetInfo:
    """Reads a VOC 2012 tree, with SBD added to train if ``options.sbd`` (see the module doc)."""
    if options.ignore_class is not None:
        raise DatasetError(f"{root}: VOC ignores its 255 object borders; no --ignore-class")
    tree = _tree(root)
    lists = tree / "ImageSets" / "Segmentation"
    splits = {
        split: _pairs(tree, lists / f"{split}.txt") for split in ("train", "val") if (lists / f"{split}.txt").is_file()
    }
    if "train" not in splits:
        raise DatasetError(f"{lists / 'train.txt'}: missing train list")
    notes = ["palette PNG labels read by colour; index 255 (object borders) ignored"]
    reopen = {}
    if options.sbd is not None:
        sbd_dir = pathlib.Path(options.sbd).expanduser().absolute()
        splits["train"], note = sbd.train_aug(tree, sbd_dir, splits)
        notes.append(note)
        reopen["sbd"] = str(sbd_dir)
    colours = colour_map()
    keys = {}
    for value in (*range(len(CLASS_NAMES)), IGNORE_INDEX):
        train_id = value if value < len(CLASS_NAMES) else IGNORE_INDEX
        for r, g, b in (colours[value], (value, value, value)):
            keys[r << 16 | g << 8 | b] = train_id  # never collide: see the module doc and its test
    return DatasetInfo(
        root=tree,
        layout="voc",
        class_names=CLASS_NAMES,
        colors=tuple(colours[: len(CLASS_NAMES)]),
        ignored_name=None,
        ignored_value=IGNORE_INDEX,
        splits=splits,
        label_map=tuple(sorted(keys.items())),
        label_encoding="colour",
        class_table="the VOC colour map (or index values 0..20, 255)",
        spec=str(tree),
        options=reopen,
        notes=tuple(notes),
    )


def _pairs(tree, list_file):
    """(JPEGImages/X.jpg, SegmentationClass/X.png) for each stem X of a split list."""
    stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not stems:
        raise DatasetError(f"{list_file}: empty split list")
    pairs = []
    for stem in stems:
        image, label = tree / "JPEGImages" / f"{stem}.jpg", tree / "SegmentationClass" / f"{stem}.png"
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"{list_file}: {stem} has no {path.parent.name}/{path.name}")
        pairs.append((str(image), str(label)))
    return tuple(pairs)
