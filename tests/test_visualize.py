"""Colour mapping, image helpers and training-curve plots."""

import cv2
import numpy as np
import pytest

from semseg_suite.visualize import colorize, overlay, plot_history, save_rgb, side_by_side

COLORS = [(128, 64, 128), (70, 70, 70), (220, 20, 60)]


def test_colorize_maps_ids_and_void():
    ids = np.array([[0, 1, 2], [255, 2, 0]])
    rgb = colorize(ids, COLORS, ignore_color=(1, 2, 3))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    expected = np.array(
        [[COLORS[0], COLORS[1], COLORS[2]], [(1, 2, 3), COLORS[2], COLORS[0]]]
    )
    np.testing.assert_array_equal(rgb, expected)
    # default ignore colour is black
    np.testing.assert_array_equal(colorize(ids, COLORS)[1, 0], [0, 0, 0])


def test_colorize_rejects_ids_without_colour():
    with pytest.raises(ValueError, match=r"\[3\]"):
        colorize(np.array([[0, 3]]), COLORS)
    # a custom void label is accepted, the default one is then an error
    np.testing.assert_array_equal(
        colorize(np.array([[7]]), COLORS, ignore_index=7)[0, 0], [0, 0, 0]
    )
    with pytest.raises(ValueError):
        colorize(np.array([[255]]), COLORS, ignore_index=7)


def test_overlay_blends():
    image = np.full((2, 2, 3), 200, np.uint8)
    mask = np.zeros((2, 2, 3), np.uint8)
    mask[0, 0] = (0, 100, 250)
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, mask, alpha=1.0), mask)
    half = overlay(image, mask, alpha=0.5)
    np.testing.assert_array_equal(half[0, 0], [100, 150, 225])
    np.testing.assert_array_equal(half[1, 1], [100, 100, 100])
    with pytest.raises(ValueError):
        overlay(image, mask[:1])


def test_side_by_side():
    a = np.zeros((4, 3, 3), np.uint8)
    b = np.full((4, 5, 3), 255, np.uint8)
    stacked = side_by_side(a, b)
    assert stacked.shape == (4, 8, 3)
    np.testing.assert_array_equal(stacked[:, :3], a)
    np.testing.assert_array_equal(stacked[:, 3:], b)

    wide = [np.full((10, 60, 3), 128, np.uint8) for _ in range(3)]
    captioned = side_by_side(*wide, labels=["image", "truth", "prediction"])
    band = captioned.shape[0] - 10
    assert band > 0 and captioned.shape[1] == 180
    np.testing.assert_array_equal(captioned[band:], np.concatenate(wide, axis=1))
    for start in (0, 60, 120):  # dark text pixels in every caption band
        assert captioned[:band, start : start + 60].min() < 128

    with pytest.raises(ValueError, match="equal heights"):
        side_by_side(a, np.zeros((5, 3, 3), np.uint8))
    with pytest.raises(ValueError):
        side_by_side(a, b, labels=["only one"])


def test_save_rgb_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "pred.png"
    save_rgb(path, image)
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None
    np.testing.assert_array_equal(bgr[..., ::-1], image)


def test_save_rgb_failure_names_path(tmp_path):
    path = tmp_path / "pred.not_an_image_format"
    with pytest.raises(OSError, match="not_an_image_format") as error:
        save_rgb(path, np.zeros((2, 2, 3), np.uint8))
    assert "\n" not in str(error.value)


CSV_LOG = """epoch,loss,lr,val_loss,val_miou
0,1.5,0.01,1.6,0.20
1,1.1,0.01,1.3,0.35
2,0.9,0.009,1.2,0.41
"""


def test_plot_history_writes_pngs(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(CSV_LOG)
    paths = plot_history(log, tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "val_miou.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 100
        assert image.std() > 0  # something was drawn


def test_plot_history_from_rows_without_validation(tmp_path):
    rows = [{"epoch": "0", "loss": "2.0"}, {"epoch": "1", "loss": "1.0"}]
    paths = plot_history(rows, tmp_path)
    assert [p.name for p in paths] == ["loss.png"]
    assert not (tmp_path / "val_miou.png").exists()
    with pytest.raises(ValueError, match="no rows"):
        plot_history([], tmp_path)
