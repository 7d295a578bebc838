"""Pictures of predictions and training curves.

All images are NumPy uint8 RGB arrays (H, W, 3); conversion to OpenCV's BGR happens
only in `save_rgb`. Plots use matplotlib's Agg canvas directly, without pyplot, so no
window is opened and the global matplotlib backend is left alone.
"""

import csv
import pathlib

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from semseg_suite.data import IGNORE_INDEX


def colorize(label_ids, colors, ignore_index=IGNORE_INDEX, ignore_color=(0, 0, 0)):
    """Maps class ids to colours by a palette lookup.

    Args:
        label_ids: (H, W) integer class ids.
        colors: C RGB triples; class c gets colors[c].
        ignore_index: void label, drawn in `ignore_color`.
        ignore_color: RGB triple for void pixels.

    Returns:
        (H, W, 3) uint8 RGB image.

    Raises:
        ValueError: an id is neither in [0, C) nor `ignore_index`.
    """
    label_ids = np.asarray(label_ids)
    palette = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    num_classes = len(palette)
    ignored = label_ids == ignore_index
    known = ((label_ids >= 0) & (label_ids < num_classes)) | ignored
    if not known.all():
        bad = np.unique(label_ids[~known])[:10].tolist()
        raise ValueError(
            f"label ids {bad} have no colour ({num_classes} colours, "
            f"ignore_index={ignore_index})"
        )
    rgb = palette[np.where(ignored, 0, label_ids).astype(np.intp)]
    rgb[ignored] = ignore_color
    return rgb


def overlay(image_rgb, color_mask, alpha=0.5):
    """Blends a colour mask over an image: (1 - alpha) * image + alpha * mask."""
    image_rgb = np.asarray(image_rgb)
    color_mask = np.asarray(color_mask)
    if image_rgb.shape != color_mask.shape:
        raise ValueError(
            f"image {image_rgb.shape} and mask {color_mask.shape} differ in shape"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(
        image_rgb, 1.0 - alpha, color_mask.astype(image_rgb.dtype), alpha, 0.0
    )


def side_by_side(*images, labels=None):
    """Stacks equal-height RGB images left to right (e.g. image | truth | prediction).

    Args:
        *images: (H, W_i, 3) uint8 RGB images with the same H.
        labels: optional captions, one per image, written in a white band above
            each image (the band makes the result taller than H).

    Returns:
        (H, sum W_i, 3) uint8 RGB image, or (H + band, sum W_i, 3) with labels.
    """
    if not images:
        raise ValueError("side_by_side needs at least one image")
    images = [np.asarray(image) for image in images]
    heights = {image.shape[0] for image in images}
    if len(heights) != 1:
        raise ValueError(f"images must have equal heights, got {sorted(heights)}")
    if labels is None:
        return np.concatenate(images, axis=1)
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")

    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    text_height = cv2.getTextSize("Ag", font, scale, thickness)[0][1]
    band = text_height * 2 + 4
    captioned = []
    for image, label in zip(images, labels):
        strip = np.full((band, image.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(
            strip, str(label), (4, band - text_height // 2 - 2), font, scale,
            (0, 0, 0), thickness, cv2.LINE_AA,
        )
        captioned.append(np.concatenate([strip, image.astype(np.uint8)], axis=0))
    return np.concatenate(captioned, axis=1)


def save_rgb(path, image_rgb):
    """Writes an RGB (or grey, or RGBA) image; the format comes from the suffix.

    Creates missing parent folders. Raises OSError naming `path` if writing fails.
    """
    path = pathlib.Path(path)
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim == 3 and image_rgb.shape[-1] == 3:
        image = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    elif image_rgb.ndim == 3 and image_rgb.shape[-1] == 4:
        image = cv2.cvtColor(image_rgb, cv2.COLOR_RGBA2BGRA)
    else:
        image = image_rgb
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), image)
    except (cv2.error, OSError) as error:
        raise OSError(f"could not write image {path}: {error}".splitlines()[0]) from None
    if not written:
        raise OSError(f"could not write image {path}")


def _read_rows(csv_path_or_rows):
    if isinstance(csv_path_or_rows, (str, pathlib.Path)):
        with open(csv_path_or_rows, newline="") as handle:
            return list(csv.DictReader(handle))
    return list(csv_path_or_rows)


def _column(rows, name):
    """(epochs, values) of the rows where column `name` holds a number."""
    epochs, values = [], []
    for index, row in enumerate(rows):
        value = row.get(name)
        if value is None or value == "":
            continue
        epochs.append(float(row.get("epoch", index)))
        values.append(float(value))
    return epochs, values


def _plot(path, series, ylabel, title):
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (epochs, values) in series.items():
        axes.plot(epochs, values, marker="o", markersize=3, label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def plot_history(csv_path_or_rows, out_dir):
    """Plots training curves from the training CSV log.

    Args:
        csv_path_or_rows: path of the CSV written during training (columns include
            "epoch", "loss", "val_loss", "val_miou"), or its rows as dicts.
        out_dir: folder for the PNGs (created if missing).

    Returns:
        The written paths: "loss.png" (train and, if logged, validation loss) when
        "loss" or "val_loss" is logged, "val_miou.png" when "val_miou" is logged.
    """
    rows = _read_rows(csv_path_or_rows)
    if not rows:
        raise ValueError(f"no rows in training log {csv_path_or_rows}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    losses = {
        label: _column(rows, name)
        for label, name in (("train", "loss"), ("validation", "val_loss"))
    }
    losses = {label: series for label, series in losses.items() if series[1]}
    if losses:
        written.append(_plot(out_dir / "loss.png", losses, "loss", "Loss per epoch"))

    miou = _column(rows, "val_miou")
    if miou[1]:
        written.append(
            _plot(out_dir / "val_miou.png", {"validation": miou}, "mean IoU",
                  "Validation mean IoU per epoch")
        )
    return written


LEGEND_ROW = 24  # pixels per class in `legend`
LEGEND_PATCH = (16, 40)  # height, width of a colour patch


def legend(class_names, colors):
    """A colour key: one row per class, a solid patch of its colour and its name.

    Each patch is exactly ``LEGEND_PATCH`` pixels of the class colour, framed in
    grey, on a white background (a white or black class still shows its extent).

    Returns:
        (len(class_names) * LEGEND_ROW, W, 3) uint8 RGB image.
    """
    if len(class_names) != len(colors):
        raise ValueError(f"{len(class_names)} class names for {len(colors)} colours")
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    text_width = max((cv2.getTextSize(str(n), font, scale, thickness)[0][0] for n in class_names), default=0)
    patch_h, patch_w = LEGEND_PATCH
    left = 4
    width = left + patch_w + 8 + text_width + 4
    image = np.full((LEGEND_ROW * len(class_names), width, 3), 255, dtype=np.uint8)
    for row, (name, color) in enumerate(zip(class_names, colors)):
        top = row * LEGEND_ROW + (LEGEND_ROW - patch_h) // 2
        cv2.rectangle(image, (left - 1, top - 1), (left + patch_w, top + patch_h), (128, 128, 128), 1)
        image[top:top + patch_h, left:left + patch_w] = np.asarray(color, dtype=np.uint8)
        baseline = row * LEGEND_ROW + LEGEND_ROW // 2 + 5
        cv2.putText(image, str(name), (left + patch_w + 8, baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return image


def normalise_confusion(cm):
    """Row-normalised confusion matrix (rows = truth sum to 1; rows without support are 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


CONFUSION_DPI = 100


def confusion_image_size(num_classes):
    """(height, width) in pixels of `confusion_matrix_image` for `num_classes` classes."""
    side = int(round(max(5.0, 2.5 + 0.45 * num_classes) * CONFUSION_DPI))
    return side + 80, side  # a little taller: the title and the tick labels below


def confusion_matrix_image(cm, class_names, title="Confusion matrix (rows: truth, normalised per row)"):
    """The row-normalised confusion matrix as a heat map with class names on both axes.

    Args:
        cm: (C, C) counts, rows = ground truth, columns = prediction.
        class_names: C names.
        title: the plot title.

    Returns:
        uint8 RGB image of shape `confusion_image_size(C)` + (3,).
    """
    normalised = normalise_confusion(cm)
    num_classes = len(class_names)
    if normalised.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix {normalised.shape} for {num_classes} classes")
    height, width = confusion_image_size(num_classes)
    figure = Figure(figsize=(width / CONFUSION_DPI, height / CONFUSION_DPI), dpi=CONFUSION_DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, [str(n) for n in class_names], rotation=90, fontsize=8)
    axes.set_yticks(ticks, [str(n) for n in class_names], fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title, fontsize=9)
    if num_classes <= 20:
        for i in range(num_classes):
            for j in range(num_classes):
                value = normalised[i, j]
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.5 else "black")
    figure.tight_layout()
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if rgb.shape[:2] != (height, width):  # rounding of the figure size in inches
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return rgb
