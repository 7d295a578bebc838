"""Plain image and mask folders: ``--images DIR --masks DIR [--classes FILE]``.

Images and masks pair by file stem. If both folders hold ``train/`` (and ``val/``,
``test/``) subfolders those are the splits; else every pair is in ``train`` except
``val_fraction`` of them, chosen by a stable hash of the stem, held out as ``val``.

The mask encoding is detected from the files (PIL mode) and must be the same for all:

- ``P`` (palette): colour labels; class i is palette colour i.
- ``L`` holding only 0 and 255, without a class
  table or with a 2-class one: binary masks, 0 -> background (0), 255 -> foreground
  (1). Here 255 is NOT the ignored value.
- other ``L``: index labels; 255 is ignored by default, as in the suite's index layout.
- ``RGB``: colour labels against the ``--classes`` colours (required).
- ``I;16`` (16-bit grey PNGs, ``I`` in older Pillow): converted once to 8-bit copies
  in a cache folder (``$SEMSEG_SUITE_CACHE`` or ``~/.cache/semseg_suite``, then
  ``masks16/<hash of the mask folder, file names and mtimes>``), then read as ``L``
  masks (binary or index as above). A value above 255 does not fit and is refused.
"""

import hashlib
import pathlib

import cv2
import numpy as np
from PIL import Image

from semseg_suite.data import folders
from semseg_suite.data.core import SPLITS, DatasetError, DatasetInfo, convert_once, pair_files, read_class_table

SIGNATURE = "--images DIR --masks DIR (pairs by file stem) [--classes FILE]"
OPTIONS = ("images", "masks", "classes", "val_fraction")


def detect(root) -> bool:
    """Plain folders are given by --images/--masks, never detected."""
    return False


def load(options) -> DatasetInfo:
    """Pairs and splits the images and masks of `options` and finds the mask encoding.

    `formats.open_dataset` then checks the files.

    Args:
        options: `formats.DatasetOptions` with images, masks, maybe classes,
            val_fraction and ignore_class.

    Returns:
        The dataset's `DatasetInfo` (layout ``"folders"``); its options hold the
        folders as absolute paths. The label paths of 16-bit masks point to their
        8-bit copies.

    Raises:
        DatasetError: a folder is missing, masks are unpaired or of mixed modes,
            RGB masks come without --classes, or a 16-bit mask holds a value
            above 255.
    """
    images, masks = (pathlib.Path(path).expanduser().absolute() for path in (options.images, options.masks))
    for folder in (images, masks):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found")
    notes = []
    split_dirs = [split for split in SPLITS if (images / split).is_dir() and (masks / split).is_dir()]
    if "train" in split_dirs:
        splits = {split: pair_files(images / split, masks / split) for split in split_dirs}
        notes.append(f"splits from subfolders: {', '.join(split_dirs)}")
    else:
        pairs = pair_files(images, masks)
        val = tuple(pair for pair in pairs if _in_val(pair[0], options.val_fraction))
        train = tuple(pair for pair in pairs if pair not in val)
        splits = {"train": train, **({"val": val} if val else {})}
        notes.append(f"no split subfolders: {len(val)} of {len(pairs)} pairs held out as val "
                     f"(val_fraction {options.val_fraction}, by a hash of the stem)")
    csv_path = pathlib.Path(options.classes).expanduser().absolute() if options.classes else None
    names, colors = read_class_table(csv_path) if csv_path else (None, None)
    all_masks = [label for split_pairs in splits.values() for _, label in split_pairs]
    mode, largest, values, palette = _survey(all_masks)
    if mode == "I;16":
        cache = convert_once("masks16", masks, all_masks, lambda tmp: _to_8_bit(masks, all_masks, tmp))
        splits = {split: tuple((image, str(cache / pathlib.Path(label).relative_to(masks)))
                               for image, label in split_pairs) for split, split_pairs in splits.items()}
        notes.append(f"16-bit masks converted to 8-bit copies in {cache}")
        mode = "L"
    table = csv_path.name if csv_path else "the mask values"
    ignored = None
    if mode == "P":
        encoding = "colour"
        count = len(names) if names else largest + 1
        palette_colors = [tuple(palette[3 * i:3 * i + 3]) for i in range(count)]
        if names is None:
            names = [f"class_{index}" for index in range(count)]
        colors = palette_colors
        notes.append(f"palette masks: class i = palette colour i ({count} classes)")
        table = f"the palette colours of {csv_path.name if csv_path else 'the masks'}"
    elif mode == "L" and values <= {0, 255} and (names is None or len(names) == 2):
        encoding = "binary"
        names = names or ["background", "foreground"]
        colors = colors or [(0, 0, 0), (255, 255, 255)]
        notes.append("binary masks: 0 -> background (0), 255 -> foreground (1); 255 is not ignored")
    elif mode == "L":
        encoding = "index"
        if names is None:
            names = [f"class_{index}" for index in range(max(v for v in values if v != 255) + 1)] or ["class_0"]
            colors = [_colour(index) for index in range(len(names))]
        notes.append("index masks")
    elif mode == "RGB":
        if names is None:
            raise DatasetError(f"{masks}: RGB masks need --classes (a name,r,g,b CSV of their colours)")
        encoding = "colour"
        notes.append("RGB masks: colours looked up in the class table")
    else:
        raise DatasetError(f"{all_masks[0]}: mask mode {mode} not supported (P, L, I;16 or RGB)")
    if encoding == "binary":
        trainable, ignored = [0, 1], 255 if options.ignore_class is None else options.ignore_class
        label_map = ((0, 0), (255, 1))
        encoding = "index"
    else:
        ignored = folders.resolve_ignored(csv_path or masks, names, options.ignore_class)
        trainable = [row for row in range(len(names)) if row != ignored]
        label_map = folders.label_map(encoding, colors, trainable, ignored)
    if not names:
        raise DatasetError(f"{masks}: no classes")
    return DatasetInfo(
        root=images,
        layout="folders",
        class_names=tuple(names[row] for row in trainable),
        colors=tuple(tuple(colors[row]) for row in trainable),
        ignored_name=names[ignored] if ignored is not None and ignored < len(names) else None,
        ignored_value=ignored if ignored is not None else 255,
        splits=splits,
        label_map=label_map,
        label_encoding=encoding,
        class_table=table,
        spec=str(images),
        options={"images": str(images), "masks": str(masks), **({"classes": str(csv_path)} if csv_path else {})},
        notes=tuple(notes),
    )


def _in_val(image_path, fraction):
    """Whether a pair is in val: a stable hash of the stem below `fraction`."""
    digest = hashlib.sha1(pathlib.Path(image_path).stem.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _survey(paths):
    """(mode, largest value, set of values, palette) over masks of one PIL mode."""
    mode, largest, values, palette = None, 0, set(), None
    for path in paths:
        try:
            with Image.open(path) as image:
                this = image.mode
                array = np.asarray(image)
                if this == "P" and palette is None:
                    palette = image.getpalette() or []
        except OSError:
            raise DatasetError(f"{path}: not a readable image") from None
        if this in ("I;16", "I"):
            this = "I;16"
            if array.max(initial=0) > 255:
                raise DatasetError(f"{path}: 16-bit mask value {array.max()} does not fit the suite's 8-bit labels "
                                   "(ids 0..254, 255 ignored)")
        if mode is None:
            mode = this
        elif this != mode:
            raise DatasetError(f"{path}: mask mode {this}, the other masks are {mode}")
        if this != "RGB":
            values.update(int(v) for v in np.unique(array))
            largest = max(largest, int(array.max(initial=0)))
    return mode, largest, values, palette


def _to_8_bit(masks, paths, out):
    """Writes 8-bit copies of 16-bit masks (values already checked) under `out`, as laid out under `masks`."""
    for path in paths:
        copy = out / pathlib.Path(path).relative_to(masks)
        copy.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(copy), cv2.imread(path, cv2.IMREAD_UNCHANGED).astype(np.uint8))


def _colour(index):
    """A display colour for class `index` (no class table given)."""
    rng = np.random.default_rng(index)
    return tuple(int(value) for value in rng.integers(0, 256, 3))
