"""train.py's options: precision, XLA errors, losses, schedules, TensorBoard, patience."""

import csv
import importlib.util
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import semseg_suite
from semseg_suite import distribute, export, optim, synthetic, training
from tiny_task import squares

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    synthetic.generate_dataset(root, num_train=4, num_val=2, num_test=1, size=64)
    return root


def run_train(dataset, out_dir, *extra, model=("--model", "DeepLabV3_plus", "--frontend", "MobileNetV2")):
    argv = [*model, "--dataset", str(dataset), "--batch-size", "2", "--crop-height", "64", "--crop-width", "64",
            "--frontend-weights", "none", "--checkpoint-dir", str(out_dir), *extra]
    return train.main(argv)


def log_rows(out_dir):
    with (out_dir / "log.csv").open() as file:
        return list(csv.DictReader(file))


def test_mixed_bfloat16_trains_and_reloads(dataset, tmp_path):
    keras.utils.set_random_seed(0)
    with distribute.precision_policy("mixed_bfloat16"):
        model = semseg_suite.build_model("DeepLabV3_plus", "MobileNetV2", num_classes=2)
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert model.get_layer("aspp_projection_conv").compute_dtype == "bfloat16"
    model.compile(optimizer=optim.make_optimizer("adam", 2e-3))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), num_classes=2)
    images, labels = squares(np.random.default_rng(0), 64)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    first, last = trainer.train_epoch(batches.take(2), 2)["loss"], trainer.train_epoch(batches.skip(6), 2)["loss"]
    for _ in range(2):
        last = trainer.train_epoch(batches, 8)["loss"]
    assert np.isfinite(last) and last < 0.5 * first

    out_dir = tmp_path / "bf16"
    assert run_train(dataset, out_dir, "--precision", "mixed_bfloat16", "--num-epochs", "1") == 0
    reloaded, meta = export.load_checkpoint(out_dir / "latest.keras", compile=True)
    assert meta["precision"] == "mixed_bfloat16"
    assert reloaded.get_layer("aspp_projection_conv").compute_dtype == "bfloat16"
    best, _ = export.load_checkpoint(out_dir / "best.h5")
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype("float32")
    logits = best(x)
    assert logits.dtype == "float32" and np.isfinite(np.asarray(logits)).all()
    # resuming with another precision is a clear error, not a silent mix
    assert run_train(dataset, out_dir, "--precision", "float32", "--num-epochs", "2", "--resume") == 2


def test_mixed_float16_scales_the_loss_and_trains():
    with distribute.precision_policy("mixed_float16"):
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Conv2D(2, 1, dtype="float32")(x))
    model.compile(optimizer=optim.make_optimizer("sgd", 0.1, loss_scaling=True))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), num_classes=2)
    images, labels = squares(np.random.default_rng(0), 32, size=32)
    before = [np.array(w) for w in model.trainable_weights]
    losses = [trainer.train_epoch(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), 4)["loss"]
              for _ in range(3)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert float(model.optimizer.scale_loss(1.0)) > 1.0  # dynamic loss scaling is on
    assert not np.allclose(before[0], np.array(model.trainable_weights[0]))


@keras.saving.register_keras_serializable(package="tests")
class HostLayer(keras.layers.Layer):
    """Runs NumPy on the host: XLA cannot compile it."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a * 2, [x], tf.float32)
        return tf.ensure_shape(y, x.shape)


def test_an_op_xla_cannot_compile_names_its_layer():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    x = HostLayer(name="host_numpy")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(x))
    model.compile(optimizer=optim.make_optimizer("sgd", 0.1))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), num_classes=2, jit_compile=True)
    batch = tf.data.Dataset.from_tensors((np.zeros((2, 8, 8, 3), "float32"), np.zeros((2, 8, 8), "int32")))
    with pytest.raises(distribute.XLACompileError, match=r"layer 'host_numpy'.*PyFunc.*--xla off"):
        trainer.train_epoch(batch, 1)


def test_losses_schedules_and_tensorboard_through_the_script(dataset, tmp_path):
    out_dir = tmp_path / "run"
    lr = 0.04
    # 4 images, batch 2: 2 batches (one update) per epoch; Keras schedules count
    # batches: one epoch of warm-up, then cosine over the other two
    status = run_train(
        dataset, out_dir, "--num-epochs", "3", "--optimizer", "sgd", "--learning-rate", str(lr),
        "--lr-schedule", "cosine", "--warmup-epochs", "1", "--accum-steps", "2", "--clip-norm", "1.0",
        "--weight-decay", "1e-4", "--loss", "ce+0.5*dice", "--class-weights", "median-frequency",
        "--tensorboard",
    )
    assert status == 0
    rows = log_rows(out_dir)
    # the rate for the next update, logged after each epoch: cosine at 0, 1/2, end
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], [lr, lr / 2, 0.0], atol=1e-7)
    model, meta = export.load_checkpoint(out_dir / "latest.keras", compile=True)
    assert meta["loss"] == "ce+0.5*dice" and int(model.optimizer.iterations) == 3
    names = data_class_names(meta)
    assert {f"val_iou/{name}" for name in names} <= set(rows[0])

    tags = {}
    for run in ("train", "validation"):
        for path in (out_dir / "tensorboard" / run).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    tags.setdefault(run, set()).add(value.tag)
    assert {"epoch_loss", "epoch_miou", "epoch_learning_rate"} <= tags["train"]
    assert {"epoch_loss", "epoch_miou", f"epoch_iou/{names[0]}", "label_vs_prediction/0"} <= tags["validation"]


def data_class_names(meta):
    return meta["class_names"]


def test_patience_stops_when_val_miou_stops_improving(dataset, tmp_path, capsys):
    out_dir = tmp_path / "run"
    status = run_train(dataset, out_dir, "--num-epochs", "6", "--learning-rate", "0", "--lr-schedule", "constant",
                       "--patience", "2")
    assert status == 0
    assert len(log_rows(out_dir)) == 3  # epoch 1 is the best; 2 and 3 do not beat it
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("Done: best val mIoU") and "at epoch 1 (3 epochs this run" in last_line
    assert "early stop: no better val mIoU for 2 epochs" in last_line and str(out_dir / "best.keras") in last_line
    assert export.read_metadata(out_dir / "latest.keras")["finished"]


def test_bad_loss_and_class_weight_files_are_clear_errors(dataset, tmp_path, capsys):
    assert run_train(dataset, tmp_path / "a", "--num-epochs", "1", "--loss", "ce+hinge") == 2
    assert "unknown loss 'hinge'" in capsys.readouterr().err
    weights = tmp_path / "weights.txt"
    weights.write_text("1.0\n2.0\n")
    assert run_train(dataset, tmp_path / "b", "--num-epochs", "1", "--class-weights", str(weights)) == 2
    error = capsys.readouterr().err
    assert "weights.txt" in error and not (tmp_path / "b" / "latest.keras").exists()
