"""Dilated convolutions train on every CPU: with oneDNN and without it.

TensorFlow 2.21 runs its CPU kernels through oneDNN by default only on CPUs with
AVX-512; elsewhere (most laptops, AMD before Zen 4, ARM) its ``Conv2DBackpropInput``
and ``Conv2DBackpropFilter`` kernels refuse dilation rates above 1, so
``AtrousConv2D`` takes a gradient of its own there (``layers.atrous_gradient_path``).
The setting is fixed when TensorFlow starts, so each test runs
``tests/scripts/onednn.py`` in a subprocess with ``TF_ENABLE_ONEDNN_OPTS`` set:
the failure is reproduced, and the fix checked, on any machine.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import semseg_suite

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "onednn.py"
SETTINGS = [pytest.param("0", id="onednn-off"), pytest.param("1", id="onednn-on")]


def start_script(onednn: str, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_ENABLE_ONEDNN_OPTS=onednn,
    )
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def report_of(process: subprocess.Popen, onednn: str, timeout: int = 900) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-4000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    if onednn == "1" and not report["onednn"]:
        pytest.skip("TF_ENABLE_ONEDNN_OPTS=1 does not turn oneDNN on with this TensorFlow build and CPU")
    assert report["onednn"] is (onednn == "1")
    assert report["path"] == ("native" if onednn == "1" else "portable")
    return report


def run_script(onednn: str, *args: str) -> dict:
    return report_of(start_script(onednn, *args), onednn)


@pytest.mark.parametrize("onednn", SETTINGS)
def test_gradients_equal_keras_conv2d(onednn):
    """Output and input, kernel and bias gradients of ``AtrousConv2D`` equal those of
    Keras's ``Conv2D`` (its space-to-batch path), float32, rates 1-24 and an
    anisotropic (2, 5), on an odd and an even map; without oneDNN, TensorFlow's own
    gradient of the dilated op is shown to fail in the same process."""
    report = run_script(onednn, "gradients")
    assert report["native_gradient_runs"] is (onednn == "1")
    cases = {(tuple(e["size"]), json.dumps(e["rate"])) for e in report["errors"]}
    assert cases == {(size, json.dumps(rate)) for size in [(23, 19), (16, 30)] for rate in [*range(1, 25), [2, 5]]}
    worst = {
        (tuple(e["size"]), json.dumps(e["rate"]), name): value
        for e in report["errors"]
        for name, value in e.items()
        if name not in ("size", "rate")
    }
    assert max(worst.values()) < 1e-4, {k: v for k, v in worst.items() if v >= 1e-4}


def check_step(result: dict) -> None:
    assert np.isfinite(result["loss"]) and result["loss"] > 0, result
    assert result["weights_finite"], result
    assert result["weights_changed"] > 0, result


@pytest.mark.parametrize("onednn", SETTINGS)
def test_dilated_models_take_a_traced_training_step(onednn):
    """``Trainer.train_step`` (the ``tf.function`` training runs) of DeepLabV3 on
    MobileNetV2 (the command that failed), ENet and PSPNet; every weight moves."""
    report = run_script(onednn, "steps", "--graph", "DeepLabV3:MobileNetV2", "ENet", "PSPNet:ResNet50")
    assert [r["model"] for r in report["steps"]] == ["DeepLabV3", "ENet", "PSPNet"]
    for result in report["steps"]:
        check_step(result)
        assert result["atrous_layers"] > 0, result
        assert result["weights_changed"] == result["weights"], result


def test_every_model_takes_a_training_step_without_onednn():
    """Every registered model on its default frontend, auxiliary heads included,
    one step each with oneDNN off (eager: the same kernels), in two processes that
    share the registry (building and stepping is mostly one-threaded Python)."""
    models = semseg_suite.list_models()
    halves = [start_script("0", "steps", *models[::2]), start_script("0", "steps", *models[1::2])]
    steps = [report_of(process, "0")["steps"] for process in halves]
    assert [r["model"] for r in steps[0]] == models[::2] and [r["model"] for r in steps[1]] == models[1::2]
    for result in steps[0] + steps[1]:
        assert result["frontend"] == semseg_suite.default_frontend(result["model"])
        check_step(result)


def start_entry_point(script: str, onednn: str | None, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["PYTHONPATH"], env["TF_CPP_MIN_LOG_LEVEL"] = str(ROOT), "2"
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cpu_kernels_line(process: subprocess.Popen) -> str:
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "CPU kernels:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_entry_points_turn_onednn_on_unless_the_user_chose():
    """train.py, test.py and predict.py start TensorFlow with oneDNN on (faster on
    every CPU kind measured, docs/BENCHMARKS.md section 9) and log it; a user's own
    ``TF_ENABLE_ONEDNN_OPTS`` wins, and the start-up line says whose choice it was."""
    runs = {
        ("train.py", None): start_entry_point("train.py", None, "--list-recipes"),
        ("test.py", None): start_entry_point("test.py", None, "--help"),
        ("predict.py", None): start_entry_point("predict.py", None, "--help"),
        ("train.py", "0"): start_entry_point("train.py", "0", "--list-recipes"),
        ("predict.py", "1"): start_entry_point("predict.py", "1", "--help"),
    }
    lines = {key: cpu_kernels_line(process) for key, process in runs.items()}
    for script in ("train.py", "test.py", "predict.py"):
        assert "CPU kernels: oneDNN on (the suite's default TF_ENABLE_ONEDNN_OPTS=1;" in lines[script, None]
    assert lines["train.py", "0"].endswith("CPU kernels: oneDNN off (TF_ENABLE_ONEDNN_OPTS=0 from your environment)")
    assert lines["predict.py", "1"].endswith("CPU kernels: oneDNN on (TF_ENABLE_ONEDNN_OPTS=1 from your environment)")


def test_onednn_benchmark_measures_both_settings():
    """``benchmarks/onednn.py`` runs one child per setting (each checks that its
    setting took effect) and prints a row whose ratios are its own columns' ratios."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "onednn.py"), "--models", "ENet", "--crop", "32", "--batch", "1",
         "--steps", "1", "--warmup", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ENet |")]
    assert len(rows) == 1, result.stdout
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == "own encoder"
    train_on, train_off, train_ratio, infer_on, infer_off, infer_ratio = cells[2:]
    speeds = [float(train_on), float(train_off), float(infer_on), float(infer_off)]
    assert all(np.isfinite(speeds)) and min(speeds) > 0, cells
    assert float(train_ratio.rstrip("x")) == pytest.approx(speeds[0] / speeds[1], abs=0.006)
    assert float(infer_ratio.rstrip("x")) == pytest.approx(speeds[2] / speeds[3], abs=0.006)
    assert result.stdout.startswith("Machine: ") and ", flags " in result.stdout.splitlines()[0], result.stdout[:2000]
