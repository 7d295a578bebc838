"""Training loop, checkpoints and the three scripts, end to end on tiny data."""

import csv
import importlib.util
import json
import pathlib
import zipfile

import cv2
import keras
import numpy as np
import pytest

import semseg_suite
from semseg_suite import data, export, synthetic, training
from tiny_task import assert_learned, fit_squares

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(name):
    """Imports a top-level script by path (``test.py`` would clash with the stdlib ``test``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train, test_script, predict = (load_script(n) for n in ("train", "test", "predict"))


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


@pytest.mark.kernels
def test_model_learns_a_tiny_task():
    keras.utils.set_random_seed(0)
    model = semseg_suite.build_model("DeepLabV3_plus", "MobileNetV2", num_classes=2)
    scores = fit_squares(model, steps=150, learning_rate=2e-3)
    assert_learned(scores)
    assert scores["iou"][1] > 0.7, scores


def run_train(tiny_dataset, out_dir, *extra):
    argv = [
        "--model", "DeepLabV3_plus", "--frontend", "MobileNetV2", "--dataset", str(tiny_dataset),
        "--batch_size", "2", "--crop-height", "64", "--crop_width", "64", "--frontend-weights", "none",
        "--checkpoint-dir", str(out_dir), "--optimizer", "adam", "--learning-rate", "1e-3", *extra,
    ]
    assert train.main(argv) == 0


def test_train_test_predict_scripts(tiny_dataset, tmp_path, capsys):
    out_dir = tmp_path / "run"
    run_train(tiny_dataset, out_dir, "--num_epochs", "1", "--h_flip", "True", "--rotation", "10")
    for name in ("latest.keras", "latest.h5", "best.keras", "best.h5", "log.csv", "loss.png", "val_miou.png"):
        assert (out_dir / name).is_file(), name
    meta = export.read_metadata(out_dir / "best.h5")
    info = data.load_dataset(tiny_dataset)
    assert meta["model"] == "DeepLabV3_plus" and meta["frontend"] == "MobileNetV2"
    assert meta["class_names"] == list(info.class_names) and meta["preprocessing"] == "tf"
    assert meta["epoch"] == 1
    with (out_dir / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_miou"]) <= 1.0

    report_dir = tmp_path / "report"
    assert test_script.main(["--checkpoint", str(out_dir / "best.keras"), "--output-dir", str(report_dir)]) == 0
    with (report_dir / "per_class.csv").open() as file:
        per_class = list(csv.DictReader(file))
    assert [row["class"] for row in per_class] == list(info.class_names)
    assert {"iou", "precision", "recall", "f1", "support"} <= set(per_class[0])
    overall = dict(csv.reader((report_dir / "overall.csv").open()))
    assert float(overall["ms_per_image"]) > 0 and int(overall["num_images"]) == 2
    assert len(list(report_dir.glob("*.png"))) == 2
    assert "mean_iou" in capsys.readouterr().out

    missing_split = ["--checkpoint", str(out_dir / "best.keras"), "--split", "extra", "--output-dir", str(tmp_path / "x")]
    assert test_script.main(missing_split) == 2
    assert "extra" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    images = tmp_path / "images"
    images.mkdir()
    odd = np.random.default_rng(0).integers(0, 255, (71, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "odd.png"), odd)
    cv2.imwrite(str(images / "other.jpg"), odd[:40])
    predictions = tmp_path / "predictions"
    assert predict.main(["--image", str(images), "--checkpoint", str(out_dir / "best.h5"),
                         "--output-dir", str(predictions)]) == 0
    for stem, shape in (("odd", (71, 53, 3)), ("other", (40, 53, 3))):
        for kind in ("mask", "overlay"):
            written = cv2.imread(str(predictions / f"{stem}_{kind}.png"))
            assert written is not None and written.shape == shape
    colours = {tuple(c) for c in meta["colors"]}
    mask = cv2.cvtColor(cv2.imread(str(predictions / "odd_mask.png")), cv2.COLOR_BGR2RGB)
    assert {tuple(p) for p in mask.reshape(-1, 3)} <= colours


def test_resume_continues_with_optimizer_state(tiny_dataset, tmp_path):
    out_dir = tmp_path / "run"
    run_train(tiny_dataset, out_dir, "--num-epochs", "1")
    first, _ = export.load_checkpoint(out_dir / "latest.keras", compile=True)
    assert int(first.optimizer.iterations) == 2
    run_train(tiny_dataset, out_dir, "--num-epochs", "2", "--continue_training")
    resumed, meta = export.load_checkpoint(out_dir / "latest.keras", compile=True)
    assert meta["epoch"] == 2
    assert int(resumed.optimizer.iterations) == 4  # 2 steps per epoch, continued, not restarted
    with (out_dir / "log.csv").open() as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == [0, 1]


def test_checkpoints_are_plain_keras_files(tiny_dataset, tmp_path):
    model = semseg_suite.build_model("DeepLabV3", "MobileNetV2", num_classes=3)
    for suffix in (".keras", ".h5"):
        path = export.save_checkpoint(model, tmp_path / f"m{suffix}", {"model": "DeepLabV3"})
        assert not list(tmp_path.glob("*.partial*"))
        reloaded = keras.models.load_model(path, compile=False)
        assert reloaded.count_params() == model.count_params()
        assert export.read_metadata(path) == {"model": "DeepLabV3"}
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert json.loads(archive.read(export.METADATA_NAME)) == {"model": "DeepLabV3"}
    best = export.copy_checkpoint(tmp_path / "m.h5", tmp_path / "best.h5")
    export.save_checkpoint(model, tmp_path / "m.h5", {"model": "changed"})  # replaces, never edits
    assert export.read_metadata(best) == {"model": "DeepLabV3"}
    assert export.read_metadata(tmp_path / "m.h5") == {"model": "changed"}


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(export.CheckpointError, match="bogus.keras"):
        export.load_checkpoint(bogus)


def test_bad_dataset_fails_before_training_and_names_the_file(tiny_dataset, tmp_path, capsys):
    broken = tmp_path / "broken"
    synthetic.generate_dataset(broken, num_train=3, num_val=1, num_test=1, size=48)
    victim = sorted((broken / "train_labels").iterdir())[0]
    victim.unlink()
    argv = ["--dataset", str(broken), "--frontend", "MobileNetV2", "--frontend-weights", "none",
            "--checkpoint-dir", str(tmp_path / "out"), "--num-epochs", "1", "--batch-size", "1"]
    assert train.main(argv) == 2
    error = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                       if not line.startswith("INFO: CPU kernels: "))  # the start-up line, cli.log_cpu_path
    assert victim.stem in error and error.count("\n") == 0
    assert not (tmp_path / "out" / "latest.keras").exists()


def test_cli_accepts_old_suite_aliases():
    args = train.parse_args(["--num_epochs", "3", "--crop_height", "64", "--crop_width", "80", "--batch_size", "2",
                             "--h_flip", "False", "--v_flip", "--brightness", "0.2", "--rotation", "5",
                             "--continue_training", "--learning_rate", "0.1"])
    config = train.config_from_args(args)
    assert (config.num_epochs, config.crop_height, config.crop_width, config.batch_size) == (3, 64, 80, 2)
    assert config.resume and config.learning_rate == 0.1
    assert config.augment == data.AugmentConfig(h_flip=False, v_flip=True, brightness=0.2, rotation=5.0)
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "NoSuchNet"])


def test_defaults_depend_on_dataset_and_on_pretrained_frontends():
    resolve = training.resolve_defaults
    builtin = resolve(training.TrainConfig(model="ENet"))
    assert (builtin.optimizer, builtin.crop_height, builtin.checkpoint_dir) == ("adam", 128, str(pathlib.Path("checkpoints/ENet")))
    on_frontend = resolve(training.TrainConfig(model="LinkNet", dataset="data"))
    assert (on_frontend.frontend, on_frontend.optimizer, on_frontend.learning_rate) == ("ResNet18", "sgd", 0.01)
    scratch = resolve(training.TrainConfig(model="ENet", dataset="data", learning_rate=5e-4))
    assert (scratch.frontend, scratch.optimizer, scratch.learning_rate, scratch.crop_height) == (None, "adam", 5e-4, 512)


def test_scripts_with_an_own_encoder_model_and_an_auxiliary_head_model(tiny_dataset, tmp_path, capsys):
    # ENet: no frontend, so no frontend flags; its checkpoints say so.
    enet_dir = tmp_path / "enet"
    argv = ["--model", "ENet", "--dataset", str(tiny_dataset), "--batch-size", "2", "--crop-height", "64",
            "--crop-width", "64", "--num-epochs", "1", "--checkpoint-dir", str(enet_dir)]
    assert train.main(argv) == 0
    meta = export.read_metadata(enet_dir / "best.keras")
    assert meta["frontend"] is None and meta["output_stride"] is None and meta["preprocessing"] == "tf"
    assert test_script.main(["--checkpoint", str(enet_dir / "best.h5"), "--output-dir", str(tmp_path / "r")]) == 0
    assert "ENet on" in capsys.readouterr().out

    # PSPNet: the training checkpoint keeps the auxiliary head for --resume; the
    # inference checkpoints have the main logits only.
    psp_dir = tmp_path / "pspnet"
    argv = ["--model", "PSPNet", "--frontend", "ResNet18", "--dataset", str(tiny_dataset), "--batch-size", "2",
            "--crop-height", "64", "--crop-width", "64", "--frontend-weights", "none", "--num-epochs", "1",
            "--checkpoint-dir", str(psp_dir)]
    assert train.main(argv) == 0
    training_model, _ = export.load_checkpoint(psp_dir / "latest.keras", compile=True)
    assert set(training_model.output) == {"logits", "aux"}
    for name in ("best.keras", "best.h5", "latest.h5"):
        served, _ = export.load_checkpoint(psp_dir / name)
        assert not isinstance(served.output, dict) and "aux_conv" not in [layer.name for layer in served.layers]
    assert train.main([*argv[:-4], "--num-epochs", "2", "--checkpoint-dir", str(psp_dir), "--resume"]) == 0
    resumed, meta = export.load_checkpoint(psp_dir / "latest.keras", compile=True)
    assert meta["epoch"] == 2 and int(resumed.optimizer.iterations) == 4
    predictions = tmp_path / "predictions"
    image = next((tiny_dataset / "test").glob("*.png"))
    assert predict.main(["--image", str(image), "--checkpoint", str(psp_dir / "best.keras"),
                         "--output-dir", str(predictions)]) == 0
    assert (predictions / f"{image.stem}_mask.png").is_file()


def reference_ious(checkpoint, root, split):
    """Per-class IoU of ``checkpoint`` on ``root/split``, in NumPy, apart from the
    suite's data and evaluation code: plain Keras predicts each image (scaled to
    [-1, 1], the ``tf`` normalisation); labels are decoded from ``class_dict.csv``
    with Void ignored; one confusion matrix over all pixels of the split."""
    with (root / "class_dict.csv").open() as file:
        table = [(row["name"], (int(row["r"]), int(row["g"]), int(row["b"]))) for row in csv.DictReader(file)]
    classes = [colour for name, colour in table if name != "Void"]
    void = dict(table)["Void"]
    model = keras.models.load_model(checkpoint, compile=False)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    for image_path in sorted((root / split).iterdir()):
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB).astype("float32")
        predicted = np.argmax(np.asarray(model(image[None] / 127.5 - 1.0, training=False))[0], axis=-1)
        colours = cv2.cvtColor(cv2.imread(str(root / f"{split}_labels" / image_path.name)), cv2.COLOR_BGR2RGB)
        label = np.full(colours.shape[:2], -1)
        for index, colour in enumerate(classes):
            label[(colours == colour).all(-1)] = index
        assert ((label >= 0) | (colours == void).all(-1)).all()  # every pixel is a class or Void
        valid = label >= 0
        confusion += np.bincount(
            label[valid] * len(classes) + predicted[valid], minlength=len(classes) ** 2
        ).reshape(len(classes), len(classes))
    true_positives = np.diag(confusion)
    with np.errstate(invalid="ignore"):
        return true_positives / (confusion.sum(0) + confusion.sum(1) - true_positives), confusion


def test_test_script_scores_the_split_it_is_asked_for_against_a_numpy_reference(tmp_path, capsys):
    # val and test hold different scenes (and counts), so their scores differ: a
    # test.py that read the wrong split, averaged per image or mishandled Void
    # would not match the reference.
    root = tmp_path / "shapes"
    synthetic.generate_dataset(root, num_train=1, num_val=2, num_test=3, size=(48, 64))
    info = data.load_dataset(root)
    keras.utils.set_random_seed(0)
    # Random weights: scores near chance, but every class is predicted somewhere.
    model = semseg_suite.build_model("SegNet-Basic", num_classes=info.num_classes)
    checkpoint = tmp_path / "run" / "best.keras"
    checkpoint.parent.mkdir()
    export.save_checkpoint(model, checkpoint, {
        "model": "SegNet-Basic", "frontend": None, "num_classes": info.num_classes,
        "class_names": list(info.class_names), "colors": [list(c) for c in info.colors], "preprocessing": "tf",
        "ignore_index": data.IGNORE_INDEX, "ignore_class": None, "dataset": str(root), "dataset_options": {},
    })
    reports = {}
    for split, flags in (("test", []), ("val", ["--split", "val"])):  # test is the default split
        out_dir = tmp_path / split
        assert test_script.main(["--checkpoint", str(checkpoint), "--output-dir", str(out_dir), *flags]) == 0
        assert f"[{split}]" in capsys.readouterr().out
        with (out_dir / "per_class.csv").open() as file:
            rows = list(csv.DictReader(file))
        assert [row["class"] for row in rows] == list(info.class_names)
        overall = dict(csv.reader((out_dir / "overall.csv").open()))
        reports[split] = rows, overall

    references = {split: reference_ious(checkpoint, root, split) for split in ("test", "val")}
    test_iou, val_iou = references["test"][0], references["val"][0]
    assert np.isfinite(test_iou).all() and (test_iou > 0).all()  # every class present and predicted
    assert np.abs(test_iou - val_iou).max() > 0.01  # the splits really differ
    for split, (iou, confusion) in references.items():
        rows, overall = reports[split]
        np.testing.assert_allclose([float(row["iou"]) for row in rows], iou, rtol=0, atol=1e-6, err_msg=split)
        assert [int(float(row["support"])) for row in rows] == confusion.sum(1).tolist(), split
        assert float(overall["mean_iou"]) == pytest.approx(np.nanmean(iou), abs=1e-6), split
        assert float(overall["pixel_accuracy"]) == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
        assert int(overall["num_images"]) == len(list((root / split).iterdir()))
