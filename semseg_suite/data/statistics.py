"""Class and image statistics of a dataset's splits, computed once and cached.

`split_statistics(info, split)` reads every pair of a split (`scan`) and keeps the
result as JSON. The cache is keyed by the split's file list with each file's size and
modification time, and by the classes and label mapping, so an added, removed or
rewritten file, or another ``--ignore-class``, recomputes it. ``--class-weights`` and
the dataset doctor (``python -m semseg_suite.data check``) both use it.

Where the cache goes (`stats_dir`):

1. ``$SEMSEG_SUITE_STATS_DIR/<dataset>-<hash>/`` when that variable is set;
2. else ``.semseg_suite/`` inside the dataset folder, if the folder is writable
   (its owner-write permission bit is set: a dataset marked read-only is never
   written into, whoever runs);
3. else ``<cache>/stats/<dataset>-<hash>/`` (``$SEMSEG_SUITE_CACHE`` or
   ``~/.cache/semseg_suite``; TFDS datasets always go here).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import stat
import uuid

import numpy as np
import tqdm

from semseg_suite.data.core import IGNORE_INDEX, DatasetError, DatasetInfo, cache_root, log, read_pair

STATS_DIR_ENV = "SEMSEG_SUITE_STATS_DIR"
_FORMAT = 1  # bump when the JSON layout changes: older files are then recomputed


@dataclasses.dataclass(frozen=True)
class SplitStatistics:
    """What reading every pair of a split found.

    Attributes:
        pairs: number of image/label pairs.
        class_pixels: int64 (C,) pixels of each class.
        image_pixels: int64 (C,) for each class, the valid pixels of all images in
            which it appears (the denominator of median-frequency balancing).
        class_images: int64 (C,) number of images in which each class appears.
        ignored_pixels: pixels labelled IGNORE_INDEX.
        image_sizes: ``"HxW"`` -> number of images of that size.
        image_modes: PIL mode (``"RGB"``, ``"L"``, ...) -> number of images.
        empty_labels: labels without a single valid pixel (first few in
            `empty_examples`).
        empty_examples: up to 5 label files without a valid pixel.
        problems: one ``"<path>: <what is wrong>"`` line per problem found.
    """

    pairs: int
    class_pixels: np.ndarray
    image_pixels: np.ndarray
    class_images: np.ndarray
    ignored_pixels: int
    image_sizes: dict
    image_modes: dict
    empty_labels: int
    empty_examples: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def valid_pixels(self) -> int:
        """Pixels of the trainable classes."""
        return int(self.class_pixels.sum())

    def to_json(self) -> dict:
        fields = dataclasses.asdict(self)
        for name in ("class_pixels", "image_pixels", "class_images"):
            fields[name] = getattr(self, name).tolist()
        fields["empty_examples"], fields["problems"] = list(self.empty_examples), list(self.problems)
        return fields

    @classmethod
    def from_json(cls, fields: dict) -> "SplitStatistics":
        arrays = {name: np.asarray(fields[name], np.int64) for name in ("class_pixels", "image_pixels", "class_images")}
        tuples = {name: tuple(fields[name]) for name in ("empty_examples", "problems")}
        return cls(**{**fields, **arrays, **tuples})


def scan(info: DatasetInfo, split: str, workers: int | None = None, progress: bool | None = False):
    """Reads every pair of a split in full, on a thread pool.

    Args:
        info: the dataset.
        split: the split to read.
        workers: threads (default: Python's ThreadPoolExecutor default).
        progress: show a progress bar on stderr; None shows it on a terminal only.

    Returns:
        ``(SplitStatistics, digests)``: the statistics, every problem included, and
        ``image path -> SHA-1 of its bytes`` (to find the same image in two splits).
    """
    pairs = info.splits[split]
    num_classes = info.num_classes

    def read(pair):
        reading = read_pair(info, pair)
        try:
            digest = hashlib.sha1(pathlib.Path(pair[0]).read_bytes()).hexdigest()
        except OSError:
            digest = None  # unreadable: read_pair has reported it
        counts = None
        if reading.train_ids is not None:
            # ids are 0..C-1 or IGNORE_INDEX: count all, keep the classes and the void
            counts = np.bincount(reading.train_ids.ravel(), minlength=IGNORE_INDEX + 1)
        return reading, digest, counts

    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    class_images = np.zeros(num_classes, np.int64)
    ignored = 0
    sizes, modes = collections.Counter(), collections.Counter()
    empty, problems, digests = [], [], {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        readings = pool.map(read, pairs)
        bar = tqdm.tqdm(readings, total=len(pairs), desc=f"reading {split}", unit="pair",
                        disable=None if progress is None else not progress, leave=False)
        for pair, (reading, digest, counts) in zip(pairs, bar):
            problems += reading.problems
            if reading.image_size is not None:
                sizes["{}x{}".format(*reading.image_size)] += 1
                modes[reading.mode] += 1
            if digest is not None:
                digests[pair[0]] = digest
            if counts is None:
                continue
            per_class = counts[:num_classes]
            class_pixels += per_class
            image_pixels += np.where(per_class > 0, per_class.sum(), 0)
            class_images += per_class > 0
            ignored += int(counts[IGNORE_INDEX])
            if not per_class.any():
                empty.append(pair[1])
    stats = SplitStatistics(
        pairs=len(pairs),
        class_pixels=class_pixels,
        image_pixels=image_pixels,
        class_images=class_images,
        ignored_pixels=ignored,
        image_sizes=dict(sizes.most_common()),
        image_modes=dict(modes.most_common()),
        empty_labels=len(empty),
        empty_examples=tuple(empty[:5]),
        problems=tuple(problems),
    )
    return stats, digests


def split_statistics(info: DatasetInfo, split: str = "train") -> SplitStatistics:
    """A split's statistics: from the cache if its files are unchanged, else read and cached.

    Raises:
        DatasetError: a pair of the split has a problem (the first one is named).
    """
    cached = load_cached(info, split)
    if cached is None:
        log.info("Reading every label of %s [%s] for its class statistics", info.spec or info.root, split)
        cached, _ = scan(info, split)
        store(info, {split: cached})
    if cached.problems:
        raise DatasetError(cached.problems[0])
    return cached


def load_cached(info: DatasetInfo, split: str) -> SplitStatistics | None:
    """The cached statistics of a split, or None if there are none or its files changed."""
    path = stats_file(info)
    try:
        entry = json.loads(path.read_text())["splits"][split]
        if entry["key"] != _files_key(info.splits[split]):
            return None
        return SplitStatistics.from_json(entry["statistics"])
    except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable, or another format: recompute
        return None


def store(info: DatasetInfo, statistics: dict) -> pathlib.Path | None:
    """Adds ``{split: SplitStatistics}`` to the dataset's cache file, atomically.

    Returns:
        The cache file, or None if it cannot be written (logged; nothing else fails).
    """
    path = stats_file(info)
    try:
        content = json.loads(path.read_text())
        if content.get("format") != _FORMAT:
            raise ValueError("another format")
    except (OSError, ValueError):
        content = {"format": _FORMAT, "dataset": info.spec or str(info.root), "classes": list(info.class_names),
                   "splits": {}}
    for split, stats in statistics.items():
        content["splits"][split] = {"key": _files_key(info.splits[split]), "statistics": stats.to_json()}
    try:
        write_atomic(path, json.dumps(content, indent=1).encode())
    except OSError as error:
        log.warning("%s: cannot cache the dataset statistics (%s)", path, error.strerror or error)
        return None
    return path


def stats_dir(info: DatasetInfo) -> pathlib.Path:
    """The folder of a dataset's cached statistics (see the module doc)."""
    root = pathlib.Path(info.root)
    name = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"
    if os.environ.get(STATS_DIR_ENV):
        return pathlib.Path(os.environ[STATS_DIR_ENV]).expanduser().absolute() / name
    if info.layout != "tfds" and _writable(root):
        return root / ".semseg_suite"
    return cache_root() / "stats" / name


def stats_file(info: DatasetInfo) -> pathlib.Path:
    """The JSON cache of `info`'s statistics; one per class mapping of the dataset."""
    mapping = json.dumps([info.class_names, info.label_map, info.label_encoding])
    return stats_dir(info) / f"stats-{hashlib.sha1(mapping.encode()).hexdigest()[:12]}.json"


def write_atomic(path: pathlib.Path, content: bytes) -> None:
    """Writes a file through a temporary file renamed into place: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        # os.open, not mkstemp: the file gets the umask's permissions, as any other file
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _files_key(pairs) -> str:
    """SHA-1 of a split's file paths, sizes and modification times."""
    digest = hashlib.sha1()
    for pair in pairs:
        for path in pair:
            try:
                status = os.stat(path)
                digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _writable(folder: pathlib.Path) -> bool:
    try:
        return bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)
    except OSError:
        return False
