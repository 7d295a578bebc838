"""TFDS datasets: ``tfds:NAME[:CONFIG]`` with an image and a mask feature.

The splits are written once as PNG pairs into a cache folder (``$SEMSEG_SUITE_CACHE``
or ``~/.cache/semseg_suite``, then ``tfds/NAME/CONFIG/VERSION``) in the suite's
index layout (``train/ trainannot/ val/ valannot/ test/ testannot/``), so that every
tool reads them like a folder. The conversion goes to a temporary folder renamed
into place, so an interrupted one leaves nothing half-written.
"""

import difflib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

from semseg_suite.data import folders
from semseg_suite.data.core import IGNORE_INDEX, DatasetError, DatasetInfo, cache_root, pair_files, read_class_table

SIGNATURE = "tfds:NAME[:CONFIG] (a TFDS dataset with an image and a mask feature)"
OPTIONS = ("classes", "tfds_image_key", "tfds_mask_key", "tfds_data_dir")

# TFDS split name -> the suite's split name; other splits are skipped.
_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_META = "semseg_suite_tfds.json"

logger = logging.getLogger("semseg_suite")


def detect(root) -> bool:
    """TFDS datasets are named by their spec, never detected in a folder."""
    return False


def load(name_and_config, options) -> DatasetInfo:
    """Opens ``NAME[:CONFIG]``, converting it to the cache folder the first time.

    Args:
        name_and_config: the spec without its ``tfds:`` prefix.
        options: `formats.DatasetOptions` (classes, tfds_* keys, tfds_data_dir).

    Returns:
        The dataset's `DatasetInfo` (layout ``"tfds"``, index labels).

    Raises:
        DatasetError: unknown dataset, not prepared (offline), ambiguous or missing
            features, or a bad class table or mask value.
    """
    import tensorflow_datasets as tfds  # slow import: only for TFDS specs

    name, _, config = name_and_config.partition(":")
    spec = f"tfds:{name_and_config}"
    if name not in tfds.list_builders():
        close = difflib.get_close_matches(name, sorted(set(tfds.list_builders())), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(f"{spec}: no such TFDS dataset{hint}")
    data_dir = options.tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or str(
        pathlib.Path("~/tensorflow_datasets").expanduser()
    )
    how = (
        f"TFDS looks in {data_dir}; prepare it with `tfds build {name}"
        f"{f' --config {config}' if config else ''}` on a machine with internet, then copy "
        f"the folder there (or give --tfds-data-dir)"
    )
    try:
        builder = tfds.builder(name, config=config or None, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds
        raise DatasetError(f"{spec}: cannot make the TFDS builder ({_first_line(error)}); {how}") from None
    image_key, mask_key = _feature_keys(spec, builder.info.features, options)
    cache = cache_root() / "tfds" / name / (config or builder.info.config_name or "default") / str(
        builder.info.version
    )
    if not (cache / _META).is_file():
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - offline: any network/IO error
            raise DatasetError(f"{spec}: not prepared and cannot download ({_first_line(error)}); {how}") from None
        _materialise(builder, image_key, mask_key, cache)
    meta = json.loads((cache / _META).read_text())
    return _info(spec, cache, meta, builder.info.features[mask_key], options)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _feature_keys(spec, features, options):
    """(image key, mask key): the options', else inferred from the features."""
    import tensorflow_datasets as tfds

    listing = ", ".join(f"{key} ({type(feature).__name__} {getattr(feature, 'shape', '')})"
                        for key, feature in features.items())

    def channels(feature):
        shape = getattr(feature, "shape", ())
        return shape[-1] if len(shape) == 3 else (1 if len(shape) == 2 else None)

    image_like = (tfds.features.Image, tfds.features.Tensor)
    if options.tfds_image_key:
        images = [options.tfds_image_key] if options.tfds_image_key in features else []
    else:
        images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)
                  and channels(feature) == 3 and "image" in key.lower()]
    if options.tfds_mask_key:
        masks = [options.tfds_mask_key] if options.tfds_mask_key in features else []
    else:
        masks = [key for key, feature in features.items() if isinstance(feature, image_like)
                 and not isinstance(feature, tfds.features.ClassLabel) and channels(feature) is not None
                 and key not in images and (channels(feature) == 1 or any(
                     word in key.lower() for word in ("mask", "segmentation", "label")))]
    for what, keys, flag in (("image", images, "--tfds-image-key"), ("mask", masks, "--tfds-mask-key")):
        if len(keys) != 1:
            problem = f"no {what} feature" if not keys else f"{what} feature is ambiguous ({', '.join(keys)})"
            raise DatasetError(f"{spec}: {problem}; give {flag}; features: {listing}")
    return images[0], masks[0]


def _materialise(builder, image_key, mask_key, cache):
    """Writes the splits as PNG pairs into `cache` through a temporary folder."""
    import tensorflow_datasets as tfds

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    notes, resized, largest = [], 0, 0
    try:
        names = list(builder.info.splits) or list(_SPLITS)
        for tfds_split in names:
            split = _SPLITS.get(tfds_split)
            if split is None:
                notes.append(f"TFDS split {tfds_split!r} skipped (only train, validation, test are used)")
                continue
            image_dir, mask_dir = tmp / split, tmp / f"{split}annot"
            image_dir.mkdir()
            mask_dir.mkdir()
            dataset = builder.as_dataset(split=tfds_split)
            for index, example in enumerate(tfds.as_numpy(dataset)):
                image = np.asarray(example[image_key])
                mask = np.asarray(example[mask_key])
                mask = mask[..., 0] if mask.ndim == 3 else mask
                if mask.size and (mask.min() < 0 or mask.max() > 255):
                    raise DatasetError(f"tfds {builder.name} {tfds_split}[{index}]: mask values outside 0..255")
                mask = mask.astype(np.uint8)
                if mask.shape != image.shape[:2]:
                    mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                    resized += 1
                largest = max(largest, int(mask.max()) if mask.size else 0)
                stem = f"{index:06d}"
                cv2.imwrite(str(image_dir / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(mask_dir / f"{stem}.png"), mask)
        if resized:
            notes.append(f"{resized} mask(s) resized nearest-neighbour to their image's size")
        meta = {"largest_mask_value": largest, "notes": notes, "image_key": image_key, "mask_key": mask_key}
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        os.rename(tmp, cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("%s: converted to %s", builder.name, cache)


def _info(spec, cache, meta, mask_feature, options):
    """The `DatasetInfo` of a converted cache folder."""
    notes = [f"converted to PNG pairs in {cache}", *meta["notes"]]
    if options.classes:
        csv_path = pathlib.Path(options.classes).expanduser().absolute()
        names, colors = read_class_table(csv_path)
        table = csv_path.name
    elif getattr(mask_feature, "names", None):
        names = list(mask_feature.names)
        colors = [_colour(index) for index in range(len(names))]
        csv_path, table = spec, f"{spec} metadata"
    else:
        count = min(meta["largest_mask_value"] + 1, IGNORE_INDEX)
        names = [f"class_{index}" for index in range(count)]
        colors = [_colour(index) for index in range(count)]
        csv_path, table = spec, f"{spec} classes class_0..class_{count - 1}"
        notes.append(f"no class names: class_0..class_{count - 1} from the largest mask value seen")
    ignored = folders.resolve_ignored(csv_path, names, options.ignore_class)
    trainable = [row for row in range(len(names)) if row != ignored]
    splits = {split: pair_files(cache / split, cache / f"{split}annot")
              for split in _SPLITS.values() if (cache / split).is_dir() and any((cache / split).iterdir())}
    if "train" not in splits:
        raise DatasetError(f"{spec}: no train split")
    return DatasetInfo(
        root=cache,
        layout="tfds",
        class_names=tuple(names[row] for row in trainable),
        colors=tuple(tuple(colors[row]) for row in trainable),
        ignored_name=names[ignored] if ignored < len(names) else None,
        ignored_value=ignored,
        splits=splits,
        label_map=folders.label_map("index", colors, trainable, ignored),
        label_encoding="index",
        class_table=table,
        spec=spec,
        options={"classes": str(csv_path)} if options.classes else {},
        notes=tuple(notes),
    )


def _colour(index):
    """A distinct display colour for class `index` (no class table given)."""
    rng = np.random.default_rng(index)
    return tuple(int(value) for value in rng.integers(0, 256, 3))
