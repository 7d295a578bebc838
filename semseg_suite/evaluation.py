"""Evaluation of a checkpoint on a dataset split: scores, tables, timings, images."""

from __future__ import annotations

import csv
import pathlib
import time

import numpy as np

from semseg_suite import data, metrics, visualize
from semseg_suite.inference import Segmenter, read_rgb

PER_CLASS_COLUMNS = ("iou", "precision", "recall", "f1", "support")
OVERALL_KEYS = ("pixel_accuracy", "mean_iou", "frequency_weighted_iou", "mean_precision", "mean_recall", "mean_f1")


def evaluate(segmenter: Segmenter, info: data.DatasetInfo, split: str, *, out_dir, num_images: int = 10) -> dict:
    """Scores a whole split (one confusion matrix, not per-image means).

    Writes to ``out_dir``: ``per_class.csv``, ``overall.csv`` and, for the first
    ``num_images`` images, ``<stem>.png`` = image | ground truth | prediction.

    Returns:
        ``metrics.scores_from_confusion`` of the split plus ``ms_per_image`` (mean
        model time after one warm-up image) and ``num_images``.
    """
    dataset = data.make_eval_dataset(info, split, preprocessing=segmenter.preprocessing)
    pairs = info.splits[split]  # the split exists: the line above checked it
    confusion = metrics.ConfusionMatrix(info.num_classes)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for index, ((image_path, _), (image, label)) in enumerate(zip(pairs, dataset)):
        start = time.perf_counter()
        logits = segmenter.logits(image).numpy()
        timings.append(time.perf_counter() - start)
        prediction = np.argmax(logits[0], axis=-1)
        confusion.update_state(label, prediction[np.newaxis])
        if index < num_images:
            truth = label[0].numpy()
            panel = visualize.side_by_side(
                read_rgb(image_path),
                visualize.colorize(truth, segmenter.colors),
                segmenter.colorize(prediction),
                labels=("image", "ground truth", "prediction"),
            )
            visualize.save_rgb(out_dir / f"{pathlib.Path(image_path).stem}.png", panel)
    scores = confusion.scores(class_names=info.class_names)
    scores["ms_per_image"] = 1000 * float(np.mean(timings[1:] if len(timings) > 1 else timings))
    scores["num_images"] = len(timings)
    write_report(scores, info.class_names, out_dir)
    return scores


def write_report(scores: dict, class_names, out_dir) -> None:
    """``per_class.csv`` (one row per class) and ``overall.csv`` (metric, value)."""
    out_dir = pathlib.Path(out_dir)
    with (out_dir / "per_class.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("class", *PER_CLASS_COLUMNS))
        for i, name in enumerate(class_names):
            writer.writerow((name, *(_fmt(scores[column][i]) for column in PER_CLASS_COLUMNS)))
    with (out_dir / "overall.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("metric", "value"))
        for key in (*OVERALL_KEYS, "ms_per_image", "num_images"):
            writer.writerow((key, _fmt(scores[key])))


def format_table(scores: dict, class_names) -> str:
    """A plain-text per-class table followed by the overall figures."""
    width = max(len("class"), *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>9}" for c in PER_CLASS_COLUMNS)]
    for i, name in enumerate(class_names):
        cells = [f"{scores[c][i]:9.4f}" if c != "support" else f"{int(scores[c][i]):9d}" for c in PER_CLASS_COLUMNS]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    lines.append("")
    lines += [f"{key:<24} {scores[key]:.4f}" for key in OVERALL_KEYS]
    lines.append(f"{'ms_per_image':<24} {scores['ms_per_image']:.1f} (over {scores['num_images']} images)")
    return "\n".join(lines)


def _fmt(value) -> str:
    value = float(value)
    return "nan" if np.isnan(value) else (str(int(value)) if value.is_integer() and value > 1 else f"{value:.6f}")
