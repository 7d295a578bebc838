"""Surviving kills and divergence: SIGKILL mid-epoch and rerun, NaN losses."""

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite import export, optim, synthetic, training

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    synthetic.generate_dataset(root, num_train=24, num_val=2, num_test=1, size=64)
    return root


def train_command(dataset, out_dir, epochs):
    return [
        sys.executable, str(ROOT / "train.py"), "--model", "DeepLabV3_plus", "--frontend", "MobileNetV2",
        "--dataset", str(dataset), "--batch-size", "2", "--crop-height", "64", "--crop-width", "64",
        "--frontend-weights", "none", "--optimizer", "adam", "--learning-rate", "1e-3",
        "--num-epochs", str(epochs), "--checkpoint-dir", str(out_dir),
    ]


def logged_epochs(out_dir):
    with (out_dir / "log.csv").open() as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def test_a_run_killed_mid_epoch_resumes_when_the_same_command_is_rerun(dataset, tmp_path):
    out_dir = tmp_path / "run"
    command = train_command(dataset, out_dir, epochs=3)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    latest = out_dir / "latest.keras"
    with open(tmp_path / "first.log", "w") as log_file:
        first = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while not latest.exists() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # into epoch 2 (12 steps)
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    killed_at = export.read_metadata(latest)
    assert killed_at["epoch"] == 1 and not killed_at["finished"]
    print(f"killed with SIGKILL during epoch {killed_at['epoch'] + 1} of 3; rerunning the same command")

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "Resuming the unfinished run" in second.stderr and "after epoch 1" in second.stderr
    assert "Epoch 1/3" not in second.stdout and "Epoch 2/3" in second.stdout
    print(second.stdout.strip().splitlines()[-1])
    assert logged_epochs(out_dir) == [0, 1, 2]  # each epoch once: the unfinished one was redone
    model, state = export.load_checkpoint(latest, compile=True)
    assert state["epoch"] == 3 and state["finished"]
    assert int(model.optimizer.iterations) == 3 * 12  # optimizer (and schedule) state continued
    best, best_state = export.load_checkpoint(out_dir / "best.keras")
    assert best(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, best_state["num_classes"])
    assert not list(out_dir.glob("*.partial*"))

    # the run is finished: the same command again starts over
    again = subprocess.run(
        command[:-4] + ["--num-epochs", "1", *command[-2:]], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "Resuming" not in again.stderr and "Epoch 1/1" in again.stdout
    assert logged_epochs(out_dir) == [0]  # the old run's rows are gone
    model, state = export.load_checkpoint(latest, compile=True)
    assert state["epoch"] == 1 and state["finished"] and state["epochs"] == 1
    assert int(model.optimizer.iterations) == 12  # a fresh optimizer, not the old run's 36 steps


def test_a_diverging_run_exits_with_status_3_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    # A real divergence, no patching: SGD at 1e-3 for epoch 1, then a step schedule
    # multiplies the rate by 1e30, so the first update of epoch 2 blows the weights
    # up and the next loss is NaN or infinite. SegNet-Basic: the smallest graph to
    # trace (the NaN stop does not depend on the model).
    out_dir = tmp_path / "run"
    command = [
        sys.executable, str(ROOT / "train.py"), "--model", "SegNet-Basic", "--dataset", str(dataset),
        "--batch-size", "2", "--crop-height", "64", "--crop-width", "64", "--num-epochs", "3",
        "--checkpoint-dir", str(out_dir), "--optimizer", "sgd", "--learning-rate", "1e-3",
        "--lr-schedule", "step", "--lr-step-epochs", "1", "--lr-step-factor", "1e30",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    error = run.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: the loss became (nan|inf) at epoch 2, step \d+; stopped, keeping the checkpoints of epoch 1 in .*",
        error,
    ), error
    assert "Epoch 3/3" not in run.stdout
    for name in ("latest.keras", "latest.h5", "best.keras", "best.h5"):
        assert export.read_metadata(out_dir / name)["epoch"] == 1, name
    assert logged_epochs(out_dir) == [0]
    # What the step schedule did to the weights never reached the checkpoints.
    model, _ = export.load_checkpoint(out_dir / "latest.keras", compile=True)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert int(model.optimizer.iterations) == 12
    best, _ = export.load_checkpoint(out_dir / "best.h5")
    assert all(np.isfinite(w).all() for w in best.get_weights())


def test_terminate_on_nan_ends_the_epoch_at_the_bad_step():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    model.compile(optimizer=optim.make_optimizer("sgd", 0.1))
    trainer = training.Trainer(model, tf.distribute.get_strategy(), num_classes=2)
    images = np.zeros((4, 8, 8, 3), "float32")
    images[2, 0, 0, 0] = np.nan  # the second batch of two
    labels = np.zeros((4, 8, 8), "int32")
    callbacks = keras.callbacks.CallbackList([keras.callbacks.TerminateOnNaN()], model=model)
    model.stop_training = False
    logs = trainer.train_epoch(tf.data.Dataset.from_tensor_slices((images, labels)).batch(2), 2, callbacks=callbacks)
    assert logs["stopped_at_step"] == 2 and np.isnan(logs["loss"])
