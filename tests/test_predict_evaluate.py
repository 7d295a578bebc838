"""predict.py and test.py: inputs, videos, legend, reports, worst images, TTA flags, bad input."""

import csv
import importlib.util
import json
import pathlib
import sys
import types

import cv2
import keras
import numpy as np
import pytest

from semseg_suite import data, evaluation, export, inference, synthetic, tiling, visualize
from semseg_suite.tiling import InferenceOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]


def error_lines(stderr: str) -> list[str]:
    """What a script wrote to stderr but its start-up log line (``cli.log_cpu_path``)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO: CPU kernels: ")]


def load_script(name):
    """Imports a top-level script by path (``test.py`` would clash with the stdlib ``test``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script_pe", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict, test_script = load_script("predict"), load_script("test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 6-image test split and a one-conv checkpoint: fast, random, not flip-symmetric."""
    base = tmp_path_factory.mktemp("pe")
    root = base / "shapes"
    synthetic.generate_dataset(root, num_train=1, num_val=1, num_test=7, size=(48, 64))
    info = data.load_dataset(root)
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(info.num_classes, 5, padding="same", name="head_conv")(inputs)
    model = keras.Model(inputs, outputs)
    checkpoint = base / "run" / "best.keras"
    export.save_checkpoint(model, checkpoint, {
        "model": "OneConv", "frontend": None, "num_classes": info.num_classes,
        "class_names": list(info.class_names), "colors": [list(c) for c in info.colors], "preprocessing": "tf",
        "ignore_index": data.IGNORE_INDEX, "ignore_class": None, "dataset": str(root), "dataset_options": {},
    })
    yield types.SimpleNamespace(root=root, info=info, model=model, checkpoint=checkpoint)
    keras.backend.clear_session()


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def normalised(image_rgb):
    return image_rgb.astype("float32")[None] / 127.5 - 1.0  # the "tf" preprocessing


def ids_from_colours(rgb, colors):
    ids = np.full(rgb.shape[:2], -1)
    for index, colour in enumerate(colors):
        ids[(rgb == colour).all(-1)] = index
    assert (ids >= 0).all()
    return ids


def read_rgb(path):
    image = cv2.imread(str(path))
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def random_image(seed, shape=(48, 64, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_video(path, frames=5, size=(64, 48), fps=7.0, fourcc="MJPG"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(random_image(i, (size[1], size[0], 3)))
    writer.release()
    return path


def video_facts(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    count = 0
    while capture.read()[0]:
        count += 1
    facts = count, capture.get(cv2.CAP_PROP_FPS), (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                                  int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return facts


def assert_legend(path, colors):
    legend = read_rgb(path)
    patch = visualize.LEGEND_PATCH[0] * visualize.LEGEND_PATCH[1]
    for colour in colors:
        assert ((legend == colour).all(-1)).sum() >= patch, colour


# --------------------------------------------------------------------------- predict.py


def test_video_round_trip_keeps_frames_fps_and_size(setup, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    assert predict.main(["--image", str(video), "--checkpoint", str(setup.checkpoint), "--output", str(out),
                         "--batch-size", "2"]) == 0
    written = out / "clip_overlay.mp4"
    assert f"{written} (5 frames)" in capsys.readouterr().out
    assert video_facts(written) == (5, pytest.approx(7.0), (64, 48))
    assert_legend(out / "legend.png", setup.info.colors)
    assert not list(tmp_path.glob(".*partial*"))


def test_video_frames_stream_in_batches(setup, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=5)
    model = FakeExported(list(setup.info.class_names), [tuple(c) for c in setup.info.colors])
    batches = []

    def predict_batch(images):
        batches.append(len(images))
        return np.stack([model.predict(image) for image in images])

    model.predict_batch = predict_batch
    done = []
    frames = inference.segment_video(model, video, tmp_path / "out.mp4", batch_size=2, progress=done.append)
    assert frames == 5 and batches == [2, 2, 1] and done == [2, 2, 1]


def test_folder_glob_and_positional_paths(setup, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), random_image(0))
    cv2.imwrite(str(folder / "b.png"), random_image(1, (40, 50, 3)))
    (folder / "notes.txt").write_text("not an image")
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("c.jpg", "d.jpg", "e.png"):
        cv2.imwrite(str(shots / name), random_image(2, (33, 71, 3)))
    single = tmp_path / "single.bmp"
    cv2.imwrite(str(single), random_image(3))
    out = tmp_path / "out"
    argv = ["--image", str(folder), "--checkpoint", str(setup.checkpoint), str(single), "--output-dir", str(out),
            "--image", str(shots / "*.jpg"), "--batch-size", "3", "--alpha", "0.3"]
    assert predict.main(argv) == 0
    shapes = {"a": (48, 64, 3), "b": (40, 50, 3), "c": (33, 71, 3), "d": (33, 71, 3), "single": (48, 64, 3)}
    for stem, shape in shapes.items():
        for kind in ("mask", "overlay"):
            assert read_rgb(out / f"{stem}_{kind}.png").shape == shape, (stem, kind)
    assert not (out / "e_mask.png").exists()  # the glob asked for *.jpg
    assert len(list(out.glob("*_mask.png"))) == 5
    # Batched (c and d together) gives what one image at a time gives.
    segmenter = inference.Segmenter.from_checkpoint(setup.checkpoint)
    expected = segmenter.predict(read_rgb(shots / "d.jpg"))
    np.testing.assert_array_equal(ids_from_colours(read_rgb(out / "d_mask.png"), setup.info.colors), expected)
    # The overlay is the blend asked for.
    image, mask = read_rgb(folder / "a.png"), read_rgb(out / "a_mask.png")
    np.testing.assert_allclose(read_rgb(out / "a_overlay.png"), visualize.overlay(image, mask, 0.3), atol=1)
    assert_legend(out / "legend.png", setup.info.colors)
    assert "legend:" in capsys.readouterr().out


def test_legend_has_one_colour_patch_per_class():
    names, colours = ["sky", "road", "white", "black"], [(10, 20, 200), (128, 64, 128), (255, 255, 255), (0, 0, 0)]
    legend = visualize.legend(names, colours)
    assert legend.shape[0] == visualize.LEGEND_ROW * len(names)
    patch_h, patch_w = visualize.LEGEND_PATCH
    for row, colour in enumerate(colours):
        band = legend[row * visualize.LEGEND_ROW:(row + 1) * visualize.LEGEND_ROW]
        top = (visualize.LEGEND_ROW - patch_h) // 2
        assert (band[top:top + patch_h, 4:4 + patch_w] == colour).all(), names[row]
        assert (band[:, 4 + patch_w + 8:] != 255).any(), names[row]  # the name is written beside it


def test_same_stems_get_distinct_outputs():
    names = inference.output_stems([pathlib.Path("a/x.png"), pathlib.Path("b/x.jpg"), pathlib.Path("c/x.jpg")])
    assert names == ["x", "x_jpg", "x_jpg_2"]


class FakeExported:
    """What ``semseg_suite.export.runtime.load`` returns: predict, class names, colours."""

    def __init__(self, class_names, colors):
        self.class_names, self.colors, self.calls = class_names, colors, 0

    def predict(self, image_rgb):
        self.calls += 1
        return np.where(np.arange(image_rgb.shape[1]) < image_rgb.shape[1] // 2, 1, 2)[None].repeat(
            image_rgb.shape[0], 0).astype(np.int32)


@pytest.fixture
def fake_runtime(setup, monkeypatch):
    loaded = []

    def load(path, format):
        if pathlib.Path(path).read_bytes() != b"fake model":
            raise RuntimeError("flatbuffer verification failed")
        loaded.append((pathlib.Path(path), format))
        model = FakeExported(list(setup.info.class_names), [tuple(c) for c in setup.info.colors])
        loaded.append(model)
        return model

    module = types.ModuleType("semseg_suite.export.runtime")
    module.load = load
    monkeypatch.setitem(sys.modules, "semseg_suite.export.runtime", module)
    monkeypatch.setattr(export, "runtime", module, raising=False)
    return loaded


def test_format_runs_an_exported_model(setup, tmp_path, fake_runtime):
    exported = tmp_path / "model.tflite"
    exported.write_bytes(b"fake model")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), random_image(0))
    video = write_video(tmp_path / "v.avi", frames=3)
    out = tmp_path / "out"
    assert predict.main([str(image), str(video), "--checkpoint", str(exported), "--format", "tflite",
                         "--output", str(out)]) == 0
    assert fake_runtime[0] == (exported, "tflite") and fake_runtime[1].calls == 1 + 3
    ids = ids_from_colours(read_rgb(out / "a_mask.png"), setup.info.colors)
    assert (ids[:, :32] == 1).all() and (ids[:, 32:] == 2).all()
    assert video_facts(out / "v_overlay.mp4")[0] == 3
    assert_legend(out / "legend.png", setup.info.colors)


def test_format_refuses_what_cannot_be_loaded_and_inference_flags(setup, tmp_path, fake_runtime, capsys,
                                                                  monkeypatch):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), random_image(0))
    out = tmp_path / "out"
    assert predict.main([str(image), "--checkpoint", str(broken), "--format", "onnx", "--output", str(out)]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}:"), errors
    assert not out.exists()

    def wrong(image_rgb):
        return np.full(image_rgb.shape[:2], 7, np.int32)

    exported = tmp_path / "model.tflite"
    exported.write_bytes(b"fake model")
    monkeypatch.setattr(FakeExported, "predict", lambda self, image_rgb: wrong(image_rgb))
    assert predict.main([str(image), "--checkpoint", str(exported), "--format", "tflite", "--output", str(out)]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {image}: the model returned class ids outside"), errors
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args([str(image), "--checkpoint", str(broken), "--format", "onnx", "--flip"])
    assert exit_info.value.code == 2 and "--format" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, name", [("tflite", "m.tflite"), ("savedmodel", "m_savedmodel"), ("onnx", "m.onnx")])
def test_format_through_the_real_runtime_matches_the_checkpoint(setup, tmp_path, fmt, name):
    formats = pytest.importorskip("semseg_suite.export.formats")
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    exported = formats.export_checkpoint(setup.checkpoint, fmt, tmp_path / name)
    image = random_image(9, (45, 67, 3))
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert predict.main([str(path), "--checkpoint", str(exported), "--format", fmt, "--output", str(out)]) == 0
    got = ids_from_colours(read_rgb(out / "a_mask.png"), setup.info.colors)
    expected = inference.Segmenter.from_checkpoint(setup.checkpoint).predict(image)
    assert (got == expected).mean() >= 0.999
    assert_legend(out / "legend.png", setup.info.colors)


# --------------------------------------------------------------------------- inference options


def test_segmenter_keeps_its_old_api(setup):
    segmenter = inference.Segmenter(setup.model, export.read_metadata(setup.checkpoint))
    assert segmenter.options == InferenceOptions()
    image = random_image(5, (45, 51, 3))
    ids = segmenter.predict(image)
    assert ids.shape == (45, 51)
    logits = np.asarray(segmenter.logits(segmenter.normalise(image)))
    np.testing.assert_array_equal(ids, np.argmax(logits[0], -1))
    np.testing.assert_array_equal(segmenter.predict_batch([image, image]), np.stack([ids, ids]))


def test_flip_averages_the_softmax_of_both_orientations(setup):
    image = random_image(6, (47, 61, 3))
    x = normalised(image)
    plain = softmax(np.asarray(setup.model(x)))
    flipped = softmax(np.asarray(setup.model(x[:, :, ::-1])))[:, :, ::-1]
    metadata = export.read_metadata(setup.checkpoint)
    with_flip = inference.Segmenter(setup.model, metadata, InferenceOptions(flip=True))
    without = inference.Segmenter(setup.model, metadata)
    probabilities = np.asarray(with_flip.probabilities(with_flip.normalise(image)))
    np.testing.assert_allclose(probabilities, (plain + flipped) / 2, atol=1e-5)
    np.testing.assert_allclose(np.asarray(without.probabilities(without.normalise(image))), plain, atol=1e-5)
    assert (with_flip.predict(image) != without.predict(image)).mean() > 0.01  # the model is not flip-symmetric
    np.testing.assert_array_equal(with_flip.predict(image), np.argmax((plain + flipped) / 2, -1)[0])


def test_scales_change_the_result_and_keep_the_size(setup):
    image = random_image(7, (47, 61, 3))
    metadata = export.read_metadata(setup.checkpoint)
    whole = inference.Segmenter(setup.model, metadata).probabilities(normalised(image))
    multi = inference.Segmenter(setup.model, metadata, InferenceOptions(scales=(0.75, 1.0, 1.5)))
    probabilities = np.asarray(multi.probabilities(normalised(image)))
    assert probabilities.shape == (1, 47, 61, setup.info.num_classes)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.abs(probabilities - np.asarray(whole)).max() > 1e-3


def test_scripts_pass_their_flags_to_tiling(setup, tmp_path, monkeypatch):
    seen = []
    real = tiling.probabilities

    def recording(logits_fn, images, options=InferenceOptions()):
        seen.append(options)
        return real(logits_fn, images, options)

    monkeypatch.setattr(tiling, "probabilities", recording)
    flags = ["--tile", "40", "--overlap", "8", "--scales", "0.75,1", "--flip"]
    expected = InferenceOptions(tile=40, overlap=8, scales=(0.75, 1.0), flip=True)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), random_image(0))
    assert predict.main([str(image), "--checkpoint", str(setup.checkpoint), "--output", str(tmp_path / "p"),
                         *flags]) == 0
    assert expected in seen
    seen.clear()
    out = tmp_path / "t"
    assert test_script.main(["--checkpoint", str(setup.checkpoint), "--output", str(out), *flags]) == 0
    assert seen.count(expected) >= 7  # one call per image at least
    assert json.loads((out / "scores.json").read_text())["inference"] == {
        "tile": 40, "overlap": 8, "scales": [0.75, 1.0], "flip": True}


def test_predict_with_flip_writes_the_flip_averaged_mask(setup, tmp_path):
    image = random_image(8)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for flags, name in (([], "plain"), (["--flip"], "flip")):
        assert predict.main([str(path), "--checkpoint", str(setup.checkpoint), "--output", str(tmp_path / name),
                             *flags]) == 0
    x = normalised(image)
    plain = softmax(np.asarray(setup.model(x)))
    flipped = softmax(np.asarray(setup.model(x[:, :, ::-1])))[:, :, ::-1]
    got = {name: ids_from_colours(read_rgb(tmp_path / name / "a_mask.png"), setup.info.colors)
           for name in ("plain", "flip")}
    np.testing.assert_array_equal(got["plain"], np.argmax(plain[0], -1))
    np.testing.assert_array_equal(got["flip"], np.argmax((plain + flipped)[0], -1))
    assert (got["plain"] != got["flip"]).any()


# --------------------------------------------------------------------------- test.py


def numpy_per_image(setup):
    """Per-image confusion matrices of the test split, by plain Keras and NumPy."""
    colours = [tuple(c) for c in setup.info.colors]
    matrices, names = [], []
    c = len(colours)
    for image_path in sorted((setup.root / "test").iterdir()):
        image = read_rgb(image_path)
        predicted = np.argmax(np.asarray(setup.model(normalised(image)))[0], -1)
        label_rgb = read_rgb(setup.root / "test_labels" / image_path.name)
        label = np.full(label_rgb.shape[:2], -1)
        for index, colour in enumerate(colours):
            label[(label_rgb == colour).all(-1)] = index
        valid = label >= 0
        matrices.append(np.bincount(label[valid] * c + predicted[valid], minlength=c * c).reshape(c, c))
        names.append(str(image_path))
    return matrices, names


def test_test_py_writes_confusion_image_json_csv_and_the_five_worst(setup, tmp_path, capsys):
    out = tmp_path / "report"
    assert test_script.main(["--checkpoint", str(setup.checkpoint), "--output", str(out), "--num-images", "2"]) == 0
    printed = capsys.readouterr().out
    names, c = list(setup.info.class_names), setup.info.num_classes

    confusion_png = read_rgb(out / "plots" / "confusion_matrix.png")
    assert confusion_png.shape == (*visualize.confusion_image_size(c), 3)
    assert len(list(out.glob("*.png"))) == 2  # the --num-images panels only

    record = json.loads((out / "scores.json").read_text())
    with (out / "per_class.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["class"] for row in rows] == names == record["class_names"]
    for row in rows:
        for column in evaluation.PER_CLASS_COLUMNS:
            value = record["per_class"][row["class"]][column]
            assert (value is None and row[column] == "nan") or float(row[column]) == pytest.approx(value, abs=1e-6)
    overall = dict(csv.reader((out / "overall.csv").open()))
    for key in evaluation.OVERALL_KEYS:
        assert float(overall[key]) == pytest.approx(record["overall"][key], abs=1e-6), key
    assert int(overall["num_images"]) == record["num_images"] == 7

    matrices, paths = numpy_per_image(setup)
    np.testing.assert_array_equal(record["confusion_matrix"], sum(matrices))
    with (out / "confusion_matrix.csv").open() as file:
        counts = [[int(v) for v in row[1:]] for row in list(csv.reader(file))[1:]]
    np.testing.assert_array_equal(counts, sum(matrices))
    ious = []
    for matrix in matrices:
        tp = np.diag(matrix)
        union = matrix.sum(0) + matrix.sum(1) - tp
        ious.append(np.mean(tp[union > 0] / union[union > 0]))
    order = np.argsort(ious, kind="stable")[:5]
    assert [item["image"] for item in record["worst"]] == [paths[i] for i in order]
    np.testing.assert_allclose([item["mean_iou"] for item in record["worst"]], np.asarray(ious)[order], atol=1e-6)
    np.testing.assert_allclose([item["mean_iou"] for item in record["per_image"]], ious, atol=1e-6)
    for rank, index in enumerate(order, 1):
        panel = out / "worst" / f"{rank}_{pathlib.Path(paths[index]).stem}.png"
        assert read_rgb(panel).shape[1] == 3 * 64, panel
        assert str(panel) in printed
    assert len(list((out / "worst").iterdir())) == 5


def test_confusion_normalisation_is_per_row():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    np.testing.assert_allclose(visualize.normalise_confusion(cm), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    image = visualize.confusion_matrix_image(cm, ["a", "b", "c"])
    assert image.shape == (*visualize.confusion_image_size(3), 3) and image.dtype == np.uint8


def test_staged_folder_replaces_its_files_and_keeps_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    (out / "scores.json").write_text("old")
    with inference.StagedFolder(out) as staging:
        (staging / "scores.json").write_text("new")
        (staging / "sub").mkdir()
        (staging / "sub" / "x.txt").write_text("x")
    assert (out / "keep.txt").read_text() == "kept" and (out / "scores.json").read_text() == "new"
    assert (out / "sub" / "x.txt").read_text() == "x"
    (out / "worst").mkdir()
    (out / "worst" / "stale.png").write_text("old run")
    with inference.StagedFolder(out, replace=("worst",)) as staging:
        (staging / "worst").mkdir()
        (staging / "worst" / "1_new.png").write_text("new")
    assert [p.name for p in (out / "worst").iterdir()] == ["1_new.png"]
    with pytest.raises(RuntimeError):
        with inference.StagedFolder(tmp_path / "a" / "b") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path, setup):
    """name -> (script, argv, path the message must name, output that must not appear)."""
    out = tmp_path / "out"
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), random_image(0))
    garbage_png = tmp_path / "broken.png"
    garbage_png.write_bytes(b"this is not a png")
    truncated = tmp_path / "z_truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])  # a real PNG header, then nothing
    garbage_video = tmp_path / "broken.mp4"
    garbage_video.write_bytes(b"\x00" * 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    a_file = tmp_path / "a_file"
    a_file.write_text("I am where a folder should be")
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_text("not a model")
    ckpt = str(setup.checkpoint)
    return {
        "unreadable image": (predict, [str(garbage_png), "--checkpoint", ckpt, "--output", str(out)], garbage_png, out),
        "truncated image after a good one": (
            predict, [str(good), str(truncated), "--checkpoint", ckpt, "--output", str(out)], truncated, out),
        "unreadable video": (predict, [str(garbage_video), "--checkpoint", ckpt, "--output", str(out)],
                             garbage_video, out),
        "folder without images": (predict, [str(empty), "--checkpoint", ckpt, "--output", str(out)], empty, out),
        "glob matching nothing": (predict, ["--image", str(tmp_path / "*.jpeg"), "--checkpoint", ckpt,
                                            "--output", str(out)], tmp_path / "*.jpeg", out),
        "output is a file": (predict, [str(good), "--checkpoint", ckpt, "--output", str(a_file)], a_file, None),
        "output below a file": (predict, [str(good), "--checkpoint", ckpt, "--output", str(a_file / "x")],
                                a_file / "x", None),
        "checkpoint not a model": (predict, [str(good), "--checkpoint", str(not_a_model), "--output", str(out)],
                                   not_a_model, out),
        "test.py output is a file": (test_script, ["--checkpoint", ckpt, "--output", str(a_file)], a_file, None),
        "test.py checkpoint not a model": (test_script, ["--checkpoint", str(not_a_model), "--output", str(out)],
                                           not_a_model, out),
    }


BAD_INPUTS = ["unreadable image", "truncated image after a good one", "unreadable video", "folder without images",
              "glob matching nothing", "output is a file", "output below a file", "checkpoint not a model",
              "test.py output is a file", "test.py checkpoint not a model"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, setup, tmp_path, capsys):
    script, argv, named, output = _bad_inputs(tmp_path, setup)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert script.main(argv) == 2
    captured = capsys.readouterr()
    errors = error_lines(captured.err)
    assert len(errors) == 1 and errors[0].startswith(f"error: {named}: "), errors
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no partial folder
    assert output is None or not output.exists()
