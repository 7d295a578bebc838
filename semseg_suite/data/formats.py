"""`open_dataset(spec)`: every dataset format behind one call.

A spec is one of:

- a folder, whose format is recognised by what it holds:

  ========== ==================================================================
  colour     ``class_dict.csv`` + ``train/ train_labels/ ...`` (RGB labels)
  index      ``classes.csv`` + ``train/ trainannot/ ...`` (index labels)
  voc        ``JPEGImages/ SegmentationClass/ ImageSets/Segmentation/``
             (Pascal VOC 2012; ``sbd=`` adds the SBD augmented set)
  cityscapes ``leftImg8bit/ gtFine/`` (labelIds mapped to the 19 train ids)
  ade20k     ``images/ annotations/`` with ``training/ validation/``
             (ADE20K SceneParsing, 150 classes, 0 = other is ignored)
  ========== ==================================================================

- ``tfds:NAME[:CONFIG]``: a TensorFlow Datasets dataset with an image and a mask
  feature;
- None with ``images=`` and ``masks=`` (and ``classes=``): a plain pair of folders.

Each format lives in its own module and returns the same `DatasetInfo`.
"""

import dataclasses
import pathlib

from semseg_suite.data import ade20k, cityscapes, folders, plain, tfds_source, voc
from semseg_suite.data.core import DatasetError, DatasetInfo, check_pairs

TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """How to read a dataset, besides where it is; the CLI's data flags.

    Attributes:
        ignore_class: the ignored class (see `folders.load_dataset`), for the
            formats with a class table of their own.
        check_labels: decode every image and label while checking the dataset
            (else only their headers are read).
        check_files: check the files at all; the dataset doctor turns it off to
            report every problem rather than the first.
        classes: a ``name,r,g,b`` class table, for plain folders and TFDS.
        images: plain folders: the image folder.
        masks: plain folders: the mask folder.
        val_fraction: plain folders without split subfolders: share of the pairs
            held out as ``val``, chosen by a hash of the file stem.
        sbd: VOC: the SBD folder whose masks are added to the training split.
        tfds_image_key: TFDS: the image feature (default: inferred).
        tfds_mask_key: TFDS: the mask feature (default: inferred).
        tfds_data_dir: TFDS: where prepared datasets live (default: TFDS's own,
            ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    """

    ignore_class: str | int | None = None
    check_labels: bool = True
    check_files: bool = True
    classes: str | None = None
    images: str | None = None
    masks: str | None = None
    val_fraction: float = 0.1
    sbd: str | None = None
    tfds_image_key: str | None = None
    tfds_mask_key: str | None = None
    tfds_data_dir: str | None = None

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def changed(self) -> dict:
        """The options that differ from the defaults (what a checkpoint stores)."""
        defaults = DatasetOptions()
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(defaults, field.name)
        }


# Folder formats, in the order they are tried: (name, module with detect/load).
FOLDER_FORMATS = (
    ("suite", folders),
    ("voc", voc),
    ("cityscapes", cityscapes),
    ("ade20k", ade20k),
)


def open_dataset(spec=None, options: DatasetOptions | None = None, **overrides) -> DatasetInfo:
    """Opens and checks a dataset of any supported format.

    Args:
        spec: a dataset folder, ``tfds:NAME[:CONFIG]``, or None for plain folders
            (``images=`` and ``masks=``).
        options: `DatasetOptions`; keyword arguments override its fields.

    Returns:
        The checked `DatasetInfo`, whose ``spec`` and ``options`` reopen it.

    Raises:
        DatasetError: the dataset is missing, of no known format or malformed; the
            message names the file and what is wrong.
    """
    options = dataclasses.replace(options or DatasetOptions(), **overrides)
    if spec is not None and options.images is not None and str(spec) == str(options.images):
        spec = None  # plain folders reopened from a checkpoint: their spec is the images folder
    if spec is None:
        if options.images is None or options.masks is None:
            raise DatasetError("no dataset: give a folder, tfds:NAME, or both images= and masks= folders")
        _check_options(options.images, "plain-folders", plain, options)
        info = plain.load(options)
    elif str(spec).startswith(TFDS_PREFIX):
        _check_options(spec, "tfds", tfds_source, options)
        info = tfds_source.load(str(spec)[len(TFDS_PREFIX):], options)
    else:
        if options.images is not None or options.masks is not None:
            raise DatasetError(f"{spec}: give either a dataset folder or images= and masks= folders, not both")
        info = _open_folder(pathlib.Path(spec).expanduser().absolute(), options)
    if options.check_files:
        check_pairs(info, options.check_labels)
    return dataclasses.replace(info, options={**options.changed(), **info.options})


def _open_folder(root, options):
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    for name, module in FOLDER_FORMATS:
        if module.detect(root):
            _check_options(root, name, module, options)
            return module.load(root, options)
    known = "; ".join(f"{name}: {module.SIGNATURE}" for name, module in FOLDER_FORMATS)
    raise DatasetError(f"{root}: not a dataset folder of a known format ({known})")


# Options every format takes; a module's OPTIONS names the others it takes.
_COMMON_OPTIONS = {"ignore_class", "check_labels", "check_files"}


def _check_options(where, name, module, options):
    """Refuses options the format has no use for, so that none is silently dropped."""
    unused = sorted(set(options.changed()) - _COMMON_OPTIONS - set(module.OPTIONS))
    if unused:
        raise DatasetError(f"{where}: a {name} dataset takes no {', '.join(unused)} option")
