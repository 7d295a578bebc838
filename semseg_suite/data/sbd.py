"""SBD, the augmented Pascal VOC training set (Hariharan et al., ICCV 2011).

"Semantic Contours from Inverse Detectors" annotated 11,355 VOC images with class
masks. As in DeepLab and the papers after it, VOC's train split becomes
``train_aug = VOC train + SBD train + SBD val - VOC val`` (10,582 images on the real
data); VOC val stays the val split, untouched. A stem in VOC train keeps VOC's own
label (with its 255 object borders).

The SBD folder is one of:

- SBD's release: ``benchmark_RELEASE/dataset/``, ``dataset/`` or the folder itself
  holding ``img/*.jpg``, ``cls/*.mat``, ``train.txt`` and ``val.txt``. Each
  ``cls/X.mat`` holds a MATLAB struct ``GTcls`` whose ``Segmentation`` is an HxW map
  of class ids 0..20 (no border). The masks are converted once into 1-channel index
  PNGs in a cache folder (``$SEMSEG_SUITE_CACHE`` or ``~/.cache/semseg_suite``, then
  ``sbd/<hash of the SBD folder, .mat names and mtimes>``).
- The common PNG conversion: a ``SegmentationClassAug/`` folder of 1-channel index
  PNGs (ids 0..20, 255 ignored): the folder itself, inside the given folder, or
  inside the VOC tree when the given folder holds the tree. An optional
  ``train_aug.txt`` (next to the PNGs, beside their folder, or in VOC's
  ``ImageSets/Segmentation/``; one stem or image path per line) lists the stems to
  use; else every PNG is used. Images come from VOC's ``JPEGImages/``.

Images are taken from VOC's ``JPEGImages/`` where the stem is there, else from SBD's
``img/``. The VOC loader reads 1-channel index PNGs through its grey keys, so the
PNGs decode with VOC's `DatasetInfo`.
"""

import pathlib

import cv2
import numpy as np

from semseg_suite.data.core import DatasetError, convert_once, log

AUG_FOLDER = "SegmentationClassAug"
AUG_LIST = "train_aug.txt"
LARGEST_CLASS_ID = 20  # VOC's 21 classes; SBD masks have no 255 border
_RELEASE_FILES = ("img", "cls", "train.txt", "val.txt")


def train_aug(tree, sbd_dir, splits):
    """VOC's train pairs with the SBD pairs added (see the module doc).

    Args:
        tree: the VOC2012 folder (holding ``JPEGImages/``).
        sbd_dir: the absolute SBD folder the user gave.
        splits: VOC's split name -> ``(image, label)`` pairs.

    Returns:
        ``(train pairs sorted by stem, note)``: the note says how many images were
        added, how many VOC val ones were excluded and where the labels come from.

    Raises:
        DatasetError: the folder is of neither layout, a listed stem has no mask
            or image, or a .mat file is not an SBD class mask.
    """
    if not sbd_dir.is_dir():
        raise DatasetError(f"{sbd_dir}: SBD folder not found")
    voc_train = {_stem(image): (image, label) for image, label in splits["train"]}
    voc_val = {_stem(image) for image, _ in splits.get("val", ())}
    release = _release(sbd_dir)
    if release is not None:
        stems = _read_list(release / "train.txt") | _read_list(release / "val.txt")
        added = sorted(stems - voc_train.keys() - voc_val)
        masks = [release / "cls" / f"{stem}.mat" for stem in added]
        for mask in masks:
            if not mask.is_file():
                raise DatasetError(f"{mask}: file not found ({mask.stem} is in {release}/train.txt or val.txt)")
        cache = convert_once("sbd", release, masks, lambda out: _convert(masks, out))
        labels = {stem: cache / f"{stem}.png" for stem in added}
        images = release / "img"
        source = f".mat converted to PNG in {cache}"
    else:
        folder = _aug_folder(tree, sbd_dir)
        pngs = {path.stem: path for path in folder.glob("*.png")}
        lists = [path for path in (folder / AUG_LIST, folder.parent / AUG_LIST,
                                   tree / "ImageSets" / "Segmentation" / AUG_LIST) if path.is_file()]
        stems = _read_list(lists[0]) if lists else set(pngs)
        added = sorted(stems - voc_train.keys() - voc_val)
        for stem in added:
            if stem not in pngs:
                raise DatasetError(f"{lists[0]}: {stem} has no {folder.name}/{stem}.png")
        labels = {stem: pngs[stem] for stem in added}
        images = None
        source = f"PNG labels from {folder}" + (f" listed in {lists[0]}" if lists else "")
    pairs = dict(voc_train)
    for stem in added:
        pairs[stem] = (str(_image(tree, images, stem, labels[stem])), str(labels[stem]))
    note = f"SBD: {len(added)} train images added ({len(stems & voc_val)} from VOC val excluded); {source}"
    return tuple(pair for _, pair in sorted(pairs.items())), note


def _stem(path):
    return pathlib.Path(path).stem


def _release(sbd_dir):
    """SBD's ``dataset/`` folder at or under `sbd_dir`, or None."""
    for folder in (sbd_dir / "benchmark_RELEASE" / "dataset", sbd_dir / "dataset", sbd_dir):
        if all((folder / name).exists() for name in _RELEASE_FILES):
            return folder
    return None


def _aug_folder(tree, sbd_dir):
    """The SegmentationClassAug PNG folder meant by `sbd_dir` (see the module doc)."""
    candidates = [sbd_dir / AUG_FOLDER, sbd_dir]
    if sbd_dir == tree or sbd_dir in tree.parents:
        candidates.insert(0, tree / AUG_FOLDER)
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.png")):
            return folder
    raise DatasetError(
        f"{sbd_dir}: not an SBD folder: neither SBD's release (benchmark_RELEASE/dataset/ with "
        f"{', '.join(_RELEASE_FILES)}) nor a {AUG_FOLDER}/ folder of PNG labels"
    )


def _read_list(path):
    """The stems of a list file: one stem, or an image path and maybe a label path, per line."""
    stems = {pathlib.PurePosixPath(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()}
    if not stems:
        raise DatasetError(f"{path}: empty list")
    return stems


def _image(tree, sbd_images, stem, label):
    """VOC's JPEGImages/STEM.jpg, else SBD's img/STEM.jpg (`sbd_images`, None for the PNG layout)."""
    folders = [folder for folder in (tree / "JPEGImages", sbd_images) if folder is not None]
    for folder in folders:
        if (folder / f"{stem}.jpg").is_file():
            return folder / f"{stem}.jpg"
    raise DatasetError(f"{label}: no image {stem}.jpg in {' or '.join(map(str, folders))}")


def _convert(masks, out):
    """Writes each SBD ``cls/X.mat`` as ``out/X.png``, a 1-channel index PNG."""
    for done, mask in enumerate(masks, 1):
        cv2.imwrite(str(out / f"{mask.stem}.png"), _read_mat(mask))
        if done % 1000 == 0 or done == len(masks):
            log.info("SBD: %d/%d .mat masks converted", done, len(masks))


def _read_mat(path) -> np.ndarray:
    """The class ids of an SBD ``cls/X.mat`` file.

    Args:
        path: the .mat file.

    Returns:
        uint8 (H, W) array of ids in ``0..20``.

    Raises:
        DatasetError: the file is unreadable, has no ``GTcls.Segmentation`` map of
            integers, or holds an id above 20.
    """
    import scipy.io  # only needed to convert SBD's .mat masks

    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except (scipy.io.matlab.MatReadError, OSError, ValueError, NotImplementedError) as error:  # v7.3: HDF5
        raise DatasetError(f"{path}: not a readable .mat file ({error})") from None
    segmentation = np.asarray(getattr(mat.get("GTcls"), "Segmentation", None))
    if segmentation.ndim != 2 or not np.issubdtype(segmentation.dtype, np.integer):
        raise DatasetError(f"{path}: no GTcls.Segmentation map of class ids (not an SBD cls/ mask)")
    bad = segmentation[(segmentation < 0) | (segmentation > LARGEST_CLASS_ID)]
    if bad.size:
        raise DatasetError(f"{path}: Segmentation value {bad[0]} is not a VOC class id (0..{LARGEST_CLASS_ID})")
    return segmentation.astype(np.uint8)
