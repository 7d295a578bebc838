"""The suite's two folder layouts, recognised by their class table.

- colour (the old Semantic-Segmentation-Suite layout): ``train/ train_labels/ val/
  val_labels/ test/ test_labels/ class_dict.csv``. Labels are RGB images whose
  colours are the ``name,r,g,b`` rows of ``class_dict.csv``.
- index (the SegNet CamVid layout): ``train/ trainannot/ val/ valannot/ test/
  testannot/ classes.csv``. Labels are single-channel images whose values are row
  indices of ``classes.csv``.

Only ``train`` is required. Images and labels pair by file stem: image ``a.jpg``
goes with label ``a.png`` or ``a_L.png``, never by position in a sorted listing.

One class may be ignored (by default the one named void, unlabelled or unlabeled).
It is removed from the trainable classes, which keep their CSV order with
contiguous ids ``0..C-1``, and its pixels become ``IGNORE_INDEX``.
"""

import dataclasses
import pathlib

from semseg_suite.data.core import (
    IGNORE_INDEX,
    SPLITS,
    VOID_NAMES,
    DatasetError,
    DatasetInfo,
    check_pairs,
    pair_files,
    read_class_table,
)


@dataclasses.dataclass(frozen=True)
class _Layout:
    csv_name: str
    label_suffix: str  # the label folder of split S is S + label_suffix
    encoding: str  # colour: RGB labels, index: class-index labels


_LAYOUTS = {
    "colour": _Layout("class_dict.csv", "_labels", "colour"),
    "index": _Layout("classes.csv", "annot", "index"),
}


SIGNATURE = "class_dict.csv or classes.csv beside train/"
OPTIONS = ()


def detect(root) -> bool:
    """Whether the folder holds one of the two layouts' class tables."""
    return any((root / layout.csv_name).is_file() for layout in _LAYOUTS.values())


def load(root, options) -> DatasetInfo:
    """The dataset of `root` for `formats.open_dataset`, which checks its files."""
    return _find(root, options.ignore_class)


def load_dataset(root, ignore_class=None, check_labels=True) -> DatasetInfo:
    """Finds, pairs and validates a dataset folder.

    Args:
        root: dataset folder in the colour or the index layout (see module doc).
        ignore_class: the class whose pixels are ignored. None: a class named void,
            unlabelled or unlabeled (any case) if there is one, else the raw label
            value 255. A str: that class name. An int below the number of CSV rows:
            that row. A larger int: that raw index-label value.
        check_labels: decode every label to check its size and values. Without it
            only image headers are read, and bad label values surface as a tf.data
            error during iteration.

    Returns:
        The dataset's `DatasetInfo`.

    Raises:
        DatasetError: the folder, class table, a split or a file is missing,
            unpaired, unreadable, of the wrong size or holds an unknown label value.
    """
    info = _find(root, ignore_class)
    check_pairs(info, check_labels)
    return info


def _find(root, ignore_class):
    """The `DatasetInfo` of a folder, its pairs found but their files not read."""
    root = pathlib.Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    layout_name = _detect_layout(root)
    layout = _LAYOUTS[layout_name]
    csv_path = root / layout.csv_name
    names, colors = read_class_table(csv_path)
    ignored_value = resolve_ignored(csv_path, names, ignore_class)
    trainable = [row for row in range(len(names)) if row != ignored_value]
    if len(trainable) >= IGNORE_INDEX:
        raise DatasetError(f"{csv_path}: more than {IGNORE_INDEX - 1} classes")
    return DatasetInfo(
        root=root,
        layout=layout_name,
        class_names=tuple(names[row] for row in trainable),
        colors=tuple(colors[row] for row in trainable),
        ignored_name=names[ignored_value] if ignored_value < len(names) else None,
        ignored_value=ignored_value,
        splits={
            split: pair_files(root / split, root / f"{split}{layout.label_suffix}")
            for split in _present_splits(root, layout)
        },
        label_map=label_map(layout.encoding, colors, trainable, ignored_value),
        label_encoding=layout.encoding,
        class_table=layout.csv_name,
        spec=str(root),
    )


def _detect_layout(root):
    """Returns the layout whose class table the folder holds."""
    found = [
        name for name, layout in _LAYOUTS.items() if (root / layout.csv_name).is_file()
    ]
    tables = " or ".join(layout.csv_name for layout in _LAYOUTS.values())
    if not found:
        raise DatasetError(f"{root}: no class table ({tables})")
    if len(found) > 1:
        raise DatasetError(f"{root}: both {tables} present; keep one")
    return found[0]


def resolve_ignored(csv_path, names, ignore_class):
    """Returns the ignored CSV row, or a raw label value >= len(names)."""
    if ignore_class is None:
        voids = [row for row, name in enumerate(names) if name.lower() in VOID_NAMES]
        return voids[0] if voids else IGNORE_INDEX
    if isinstance(ignore_class, str):
        if ignore_class not in names:
            raise DatasetError(
                f"{csv_path}: no class named {ignore_class!r}; "
                f"classes: {', '.join(names)}"
            )
        return names.index(ignore_class)
    if not 0 <= ignore_class <= 255:
        raise ValueError(
            f"ignore_class must be a class name or 0..255, got {ignore_class}"
        )
    return ignore_class


def label_map(encoding, colors, trainable, ignored_value):
    """(raw key, train id) pairs of every valid raw label value, sorted by key."""
    if encoding == "colour":
        keys = [r << 16 | g << 8 | b for r, g, b in colors]
    else:
        keys = list(range(len(colors)))
    train_ids = {row: train_id for train_id, row in enumerate(trainable)}
    pairs = [(key, train_ids.get(row, IGNORE_INDEX)) for row, key in enumerate(keys)]
    if encoding == "index" and ignored_value >= len(colors):
        pairs.append((ignored_value, IGNORE_INDEX))
    return tuple(sorted(pairs))


def _present_splits(root, layout):
    """Names of the splits with both folders; raises if one of a pair is missing."""
    present = []
    for split in SPLITS:
        folders = root / split, root / f"{split}{layout.label_suffix}"
        exists = [folder.is_dir() for folder in folders]
        if exists[0] != exists[1]:
            missing, found = folders if not exists[0] else folders[::-1]
            raise DatasetError(f"{missing}: missing, but {found.name}/ exists")
        if exists[0]:
            present.append(split)
    if "train" not in present:
        raise DatasetError(f"{root / 'train'}: missing train split")
    return present


