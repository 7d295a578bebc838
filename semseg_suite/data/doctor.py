"""The dataset doctor: ``python -m semseg_suite.data check DATASET``.

Opens a dataset of any format without stopping at its first bad file, reads every
image and label once (`statistics.scan`, in parallel), and reports per split: pair
counts, image sizes and modes, the label encoding, each class's share of the valid
pixels and the number of images it appears in, the classes a split lacks, labels
without a valid pixel, the same image in two splits, and every problem found with its
file. It writes, beside the dataset (`statistics.stats_dir`): the statistics cache
that ``--class-weights`` reads (instant the second time), the median-frequency and
ENet weights of the training split as ``name,weight`` CSVs (a ``--class-weights
FILE``), and a bar plot of the class frequencies.
"""

import collections
import dataclasses
import io
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from semseg_suite import class_weights
from semseg_suite.data import statistics
from semseg_suite.data.core import DatasetInfo, describe


@dataclasses.dataclass(frozen=True)
class Report:
    """What the doctor found.

    Attributes:
        info: the dataset.
        splits: split -> its `statistics.SplitStatistics`.
        problems: every problem, one ``"<path>: <what is wrong>"`` line each: the
            splits' own and images found in two splits.
        weights: ``"median-frequency"`` / ``"enet"`` -> (C,) weights of the training
            split (empty if it has problems or no valid pixel).
        duplicates: split -> number of images that repeat an earlier image of the
            same split (byte for byte).
        written: the files written (statistics, weights, plot).
    """

    info: DatasetInfo
    splits: dict
    problems: tuple[str, ...]
    weights: dict
    duplicates: dict
    written: tuple[pathlib.Path, ...] = ()


def examine(info: DatasetInfo, workers: int | None = None, progress: bool | None = None,
            write: bool = True) -> Report:
    """Reads every pair of every split of `info` and writes what it found.

    Args:
        info: the dataset, opened with ``check_files=False`` so that the doctor
            sees every bad file, not only the first.
        workers: reading threads.
        progress: progress bar on stderr; None: on a terminal only.
        write: write the statistics, the weights and the plot (`statistics.stats_dir`).

    Returns:
        The `Report`.
    """
    splits, digests = {}, {}
    for split in info.splits:
        splits[split], digests[split] = statistics.scan(info, split, workers=workers, progress=progress)
    problems = [problem for stats in splits.values() for problem in stats.problems]
    overlaps, duplicates = _repeated_images(digests)
    problems += overlaps
    weights = {}
    train = splits.get("train")
    if train is not None and not train.problems and train.valid_pixels:
        pixels = class_weights.PixelStatistics(train.class_pixels, train.image_pixels)
        weights = {name: method(pixels) for name, method in class_weights.METHODS.items()}
    report = Report(info, splits, tuple(problems), weights, duplicates)
    if write:
        report = dataclasses.replace(report, written=_write(report))
    return report


def _repeated_images(digests):
    """(problems for images in two splits, split -> repeats within the split)."""
    first_seen, problems, repeats = {}, [], collections.Counter()
    for split, by_path in digests.items():
        for path, digest in by_path.items():
            if digest not in first_seen:
                first_seen[digest] = (split, path)
                continue
            earlier_split, earlier = first_seen[digest]
            if earlier_split == split:
                repeats[split] += 1
            else:
                problems.append(f"{path}: the same image as {earlier} ({earlier_split}); "
                                f"the {earlier_split} and {split} splits overlap")
    return problems, dict(repeats)


def _write(report):
    info = report.info
    written = [statistics.store(info, report.splits)]
    if written[0] is None:  # not writable: logged by store
        return ()
    stem = written[0].stem.removeprefix("stats-")
    folder = written[0].parent
    for name, weights in report.weights.items():
        rows = ["name,weight"] + [f"{cls},{weight:.6g}" for cls, weight in zip(info.class_names, weights)]
        path = folder / f"weights-{name}-{stem}.csv"
        statistics.write_atomic(path, ("\n".join(rows) + "\n").encode())
        written.append(path)
    path = folder / f"class-frequencies-{stem}.png"
    plot_class_frequencies(info, report.splits, path)
    written.append(path)
    return tuple(written)


def plot_class_frequencies(info: DatasetInfo, splits: dict, path) -> None:
    """Horizontal bars: each class's share of a split's valid pixels, log scale, one bar per split."""
    names = info.class_names
    figure = Figure(figsize=(7, 1.2 + 0.32 * len(names) * max(1, len(splits)) ** 0.5), dpi=100)
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(splits))
    positions = np.arange(len(names))
    hatches = ("", "//", "..", "xx")
    for index, (split, stats) in enumerate(splits.items()):
        share = 100 * stats.class_pixels / max(1, stats.valid_pixels)
        axes.barh(positions + index * height, np.where(share > 0, share, np.nan), height,
                  color=[np.array(colour) / 255 for colour in info.colors], edgecolor="black", linewidth=0.5,
                  hatch=hatches[index % len(hatches)], label=split)
    axes.set_yticks(positions + height * (len(splits) - 1) / 2, names)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("% of the split's valid pixels (log scale)")
    axes.set_title(f"Class frequencies: {pathlib.Path(info.spec or info.root).name}")
    axes.legend(loc="lower right")
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    statistics.write_atomic(pathlib.Path(path), _png(figure))


def _png(figure):
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def format_report(report: Report) -> str:
    """The doctor's printout (see the module doc)."""
    info, splits = report.info, report.splits
    lines = [describe(info), "", "split      pairs  image sizes (HxW)            image modes     valid px  ignored px"]
    for split, stats in splits.items():
        total = stats.valid_pixels + stats.ignored_pixels
        lines.append(
            f"{split:<9} {stats.pairs:>6}  {_top(stats.image_sizes, 2):<28} {_top(stats.image_modes, 2):<15} "
            f"{_percent(stats.valid_pixels, total):>8}  {_percent(stats.ignored_pixels, total):>10}"
        )
    width = max(12, *(len(name) for name in info.class_names))
    header = f"{'class':<{width}}" + "".join(f"  {split + ' % (images)':>18}" for split in splits)
    if report.weights:
        header += "".join(f"  {name:>16}" for name in report.weights)
    lines += ["", header]
    for index, name in enumerate(info.class_names):
        row = f"{name:<{width}}"
        for stats in splits.values():
            share = _percent(stats.class_pixels[index], stats.valid_pixels, digits=2)
            row += f"  {share + ' (' + str(stats.class_images[index]) + ')':>18}"
        row += "".join(f"  {weights[index]:>16.3f}" for weights in report.weights.values())
        lines.append(row)
    lines.append("")
    for split, stats in splits.items():
        absent = [name for name, count in zip(info.class_names, stats.class_pixels) if count == 0]
        if absent and not stats.problems:
            lines.append(f"absent   {split}: {', '.join(absent)}")
        if stats.empty_labels:
            lines.append(f"empty    {split}: {stats.empty_labels} label(s) without a valid pixel "
                         f"(first: {stats.empty_examples[0]})")
        if report.duplicates.get(split):
            lines.append(f"repeats  {split}: {report.duplicates[split]} image(s) byte-identical to another "
                         f"{split} image")
    for path in report.written:
        lines.append(f"wrote    {path}")
    lines.append(f"problems {len(report.problems)}")
    lines += [f"problem  {problem}" for problem in report.problems]
    return "\n".join(lines)


def _top(counts, shown):
    items = list(counts.items())
    text = ", ".join(f"{key} ({count})" for key, count in items[:shown])
    return text + (f", +{len(items) - shown} more" if len(items) > shown else "")


def _percent(part, whole, digits=1):
    return f"{100 * part / whole:.{digits}f}%" if whole else "-"

