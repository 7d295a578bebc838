"""Evaluation of a checkpoint on a dataset split: scores, tables, timings, images.

Predictions come from `Segmenter.predict_normalised`, i.e. through
`semseg_suite.tiling.probabilities` with the segmenter's `InferenceOptions`
(argmax of the averaged softmax), the code the exported models run.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import json
import math
import pathlib
import time

import numpy as np

from semseg_suite import data, metrics, visualize
from semseg_suite.inference import Segmenter, StagedFolder, read_rgb

PER_CLASS_COLUMNS = ("iou", "precision", "recall", "f1", "support")
OVERALL_KEYS = ("pixel_accuracy", "mean_iou", "frequency_weighted_iou", "mean_precision", "mean_recall", "mean_f1")
NUM_WORST = 5
CONFUSION_IMAGE = "confusion_matrix.png"
WORST_FOLDER = "worst"


def image_mean_iou(confusion) -> float:
    """Mean IoU of one image's (C, C) confusion matrix over the classes present in
    its truth or its prediction (TP + FP + FN > 0); NaN when it has no valid pixel."""
    ious = metrics.scores_from_confusion(confusion)["iou"]
    present = ious[~np.isnan(ious)]
    return float(present.mean()) if present.size else math.nan


def evaluate(
    segmenter: Segmenter, info: data.DatasetInfo, split: str, *, out_dir, num_images: int = 10,
    num_worst: int = NUM_WORST,
) -> dict:
    """Scores a whole split (one confusion matrix, not per-image means).

    Writes to ``out_dir``, all at once at the end (nothing if it fails):
    ``per_class.csv``, ``overall.csv``, ``scores.json`` (everything below),
    ``confusion_matrix.csv`` (pixel counts) and ``plots/confusion_matrix.png``
    (normalised per row, class names on the axes); for the first ``num_images``
    images ``<stem>.png`` = image | ground truth | prediction, and the same panels
    for the ``num_worst`` images of lowest per-image mean IoU as
    ``worst/<rank>_<stem>.png``.

    Returns:
        ``metrics.scores_from_confusion`` of the split plus ``ms_per_image`` (mean
        inference time after one warm-up image), ``num_images``, ``confusion``
        (C, C counts), ``per_image`` (``{"image", "mean_iou"}`` per image, in split
        order), ``worst`` (``{"rank", "image", "mean_iou", "panel"}``, lowest
        first; ties go to the earlier image) and ``inference`` (the options).
    """
    dataset = data.make_eval_dataset(info, split, preprocessing=segmenter.preprocessing)
    pairs = info.splits[split]  # the split exists: the line above checked it
    num_classes = info.num_classes
    total = np.zeros((num_classes, num_classes), np.float64)
    timings, per_image, worst = [], [], []  # worst: max-heap of (-iou, -index, path, truth, prediction)
    with StagedFolder(pathlib.Path(out_dir), replace=(WORST_FOLDER,)) as staging:
        for index, ((image_path, _), (image, label)) in enumerate(zip(pairs, dataset)):
            start = time.perf_counter()
            prediction = segmenter.predict_normalised(image)[0]
            timings.append(time.perf_counter() - start)
            confusion = np.asarray(metrics.confusion_matrix(label, prediction[np.newaxis], num_classes))
            total += confusion
            iou = image_mean_iou(confusion)
            per_image.append({"image": str(image_path), "mean_iou": iou})
            truth = label[0].numpy()
            if index < num_images:
                visualize.save_rgb(staging / f"{pathlib.Path(image_path).stem}.png",
                                   _panel(segmenter, image_path, truth, prediction))
            if num_worst and not math.isnan(iou):
                heapq.heappush(worst, (-iou, -index, str(image_path), truth, prediction))
                if len(worst) > num_worst:
                    heapq.heappop(worst)
        scores = metrics.scores_from_confusion(total, class_names=info.class_names)
        scores["ms_per_image"] = 1000 * float(np.mean(timings[1:] if len(timings) > 1 else timings))
        scores["num_images"] = len(timings)
        scores["confusion"] = total
        scores["per_image"] = per_image
        scores["inference"] = dataclasses.asdict(segmenter.options)
        scores["worst"] = []
        for rank, (negative_iou, _, image_path, truth, prediction) in enumerate(sorted(worst, reverse=True), 1):
            panel = pathlib.Path(WORST_FOLDER) / f"{rank}_{pathlib.Path(image_path).stem}.png"
            visualize.save_rgb(staging / panel, _panel(segmenter, image_path, truth, prediction))
            scores["worst"].append({"rank": rank, "image": image_path, "mean_iou": -negative_iou, "panel": str(panel)})
        write_report(scores, info.class_names, staging)
        visualize.save_rgb(staging / "plots" / CONFUSION_IMAGE,
                           visualize.confusion_matrix_image(total, info.class_names))
    return scores


def _panel(segmenter, image_path, truth, prediction):
    return visualize.side_by_side(
        read_rgb(image_path),
        visualize.colorize(truth, segmenter.colors),
        segmenter.colorize(prediction),
        labels=("image", "ground truth", "prediction"),
    )


def _json_number(value):
    value = float(value)
    return None if math.isnan(value) else value


def scores_json(scores: dict, class_names) -> dict:
    """The scores as plain JSON (NaN becomes null): overall, per class, confusion, images."""
    record = {
        "overall": {key: _json_number(scores[key]) for key in (*OVERALL_KEYS, "ms_per_image")},
        "num_images": int(scores["num_images"]),
        "per_class": {
            name: {column: _json_number(scores[column][i]) for column in PER_CLASS_COLUMNS}
            for i, name in enumerate(class_names)
        },
        "class_names": list(class_names),
    }
    if "confusion" in scores:
        record["confusion_matrix"] = np.asarray(scores["confusion"]).astype(np.int64).tolist()
    for key in ("inference", "per_image", "worst"):
        if key in scores:
            record[key] = scores[key]
    for item in record.get("per_image", []) + record.get("worst", []):
        item["mean_iou"] = _json_number(item["mean_iou"])
    return record


def write_report(scores: dict, class_names, out_dir) -> None:
    """``per_class.csv`` (one row per class), ``overall.csv`` (metric, value),
    ``scores.json`` (`scores_json`) and, when the scores carry it,
    ``confusion_matrix.csv`` (counts, rows = truth, with class names)."""
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
    with (out_dir / "scores.json").open("w") as file:
        json.dump(scores_json(scores, class_names), file, indent=2)
    if "confusion" in scores:
        with (out_dir / "confusion_matrix.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(("truth \\ prediction", *class_names))
            for name, row in zip(class_names, np.asarray(scores["confusion"])):
                writer.writerow((name, *(int(v) for v in row)))


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
