"""Cityscapes (Cordts et al., CVPR 2016): fine annotations mapped to the 19 train ids.

Tree: ``leftImg8bit/{train,val}/CITY/X_leftImg8bit.png`` with
``gtFine/{train,val}/CITY/X_gtFine_labelIds.png``. The labelIds 0..33 map to the 19
classes of the official benchmark (cityscapesScripts ``labels.py``: road 7,
sidewalk 8, ..., bicycle 33); every other id is ignored, ids above 33 are invalid.
The test split is skipped: its public labels are placeholders.
"""

from semseg_suite.data.core import IGNORE_INDEX, DatasetError, DatasetInfo

SIGNATURE = "leftImg8bit/ gtFine/"
OPTIONS = ()

# name, labelId, official colour (cityscapesScripts labels.py), in train-id order.
CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)), ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)  # fmt: skip
NUM_LABEL_IDS = 34  # labelIds 0..33
_IMAGE_SUFFIX, _LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def detect(root) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def load(root, options) -> DatasetInfo:
    """Reads a Cityscapes tree (see the module doc); no options besides check_labels."""
    if options.ignore_class is not None:
        raise DatasetError(f"{root}: Cityscapes ignores every labelId outside its 19 classes; no --ignore-class")
    splits = {}
    for split in ("train", "val"):
        if (root / "leftImg8bit" / split).is_dir():
            splits[split] = _pairs(root, split)
    if "train" not in splits:
        raise DatasetError(f"{root / 'leftImg8bit' / 'train'}: missing train split")
    train_ids = {label_id: train_id for train_id, (_, label_id, _) in enumerate(CLASSES)}
    return DatasetInfo(
        root=root,
        layout="cityscapes",
        class_names=tuple(name for name, _, _ in CLASSES),
        colors=tuple(color for _, _, color in CLASSES),
        ignored_name=None,
        ignored_value=IGNORE_INDEX,
        splits=splits,
        label_map=tuple((raw, train_ids.get(raw, IGNORE_INDEX)) for raw in range(NUM_LABEL_IDS)),
        label_encoding="index",
        class_table="the Cityscapes labelIds 0..33",
        spec=str(root),
        notes=("gtFine labelIds mapped to the 19 train ids, the other 15 ids ignored; test split skipped "
               "(its public labels are placeholders)",),
    )


def _pairs(root, split):
    """(image, label) pairs of a split, paired by the stem before the suffixes."""
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    images = {p.name[: -len(_IMAGE_SUFFIX)]: p for p in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))}
    labels = {p.name[: -len(_LABEL_SUFFIX)]: p for p in sorted(label_dir.glob(f"*/*{_LABEL_SUFFIX}"))}
    if not images:
        raise DatasetError(f"{image_dir}: no CITY/*{_IMAGE_SUFFIX} images")
    for stem, image in images.items():
        if stem not in labels:
            raise DatasetError(f"{image}: no label {stem}{_LABEL_SUFFIX} in {label_dir / image.parent.name}")
    for stem, label in labels.items():
        if stem not in images:
            raise DatasetError(f"{label}: no image {stem}{_IMAGE_SUFFIX} in {image_dir / label.parent.name}")
    return tuple((str(images[stem]), str(labels[stem])) for stem in sorted(images))
