"""``benchmarks/train_speed.py`` on TensorFlow and, without TensorFlow, on JAX (issue 18).

The JAX run happens in a subprocess whose ``import tensorflow`` fails, so it shows the
benchmark (and the builders under it) needs no TensorFlow, as on a GPU machine that
has only JAX. Skipped where JAX is not installed (``requirements-bench-jax.txt``).
"""

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import train_speed

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["--model", "ENet", "--crop", "64", "--batch", "2", "--steps", "2", "--warmup", "1",
         "--precision", "float32", "mixed_bfloat16", "--peak", "--peak-size", "256"]
# Runs the benchmark as a script with TensorFlow unimportable.
WITHOUT_TENSORFLOW = (
    "import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def table_rows(output: str) -> list[list[str]]:
    """The cells of the result table's data rows."""
    lines = [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def check_rows(rows, xla_settings):
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("ENet", xla, precision) for xla in xla_settings for precision in ("float32", "mixed_bfloat16")
    ]
    for row in rows:
        train, infer = float(row[4]), float(row[5])
        assert math.isfinite(train) and train > 0 and math.isfinite(infer) and infer > 0, row
        for cell in row[8:10]:  # "GFLOP/s (share%)"
            gflops, share = cell.split(" (")
            assert float(gflops) >= 0 and 0 <= float(share.rstrip("%)")) < 100, row
    assert rows[1][6].endswith("x") and rows[0][6] == ""  # bfloat16 against float32


def test_tensorflow_backend_with_peak_shares(capsys):
    assert train_speed.main([*SMALL, "--xla", "off"]) == 0
    output = capsys.readouterr().out
    assert "tensorflow backend, semseg_suite.training.Trainer" in output
    check_rows(table_rows(output), ["off"])


def test_backend_other_than_the_imported_one_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args(["--backend", "jax"])
    assert exit_info.value.code == 2
    assert "KERAS_BACKEND=jax python benchmarks/train_speed.py" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX not installed (requirements-bench-jax.txt)")
def test_jax_backend_runs_without_tensorflow():
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, "benchmarks/train_speed.py", "--backend", "jax", *SMALL,
         "--xla", "on"],  # off is JAX's op-by-op mode, ~40x slower
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "JAX " in result.stdout and "jax backend, Keras train_on_batch" in result.stdout
    check_rows(table_rows(result.stdout), ["on"])
