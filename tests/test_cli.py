"""Out-of-range flag values are refused by the argument parser in one line."""

import pytest

import predict as predict_script
import test as test_script
import train as train_script

BAD_TRAIN_FLAGS = [
    (["--crop-height", "0"], "--crop-height", "must be > 0"),
    (["--crop-width", "-64"], "--crop-width", "must be > 0"),
    (["--batch-size", "0"], "--batch-size", "must be > 0"),
    (["--num-epochs", "-1"], "--num-epochs", "must be > 0"),
    (["--accum-steps", "0"], "--accum-steps", "must be > 0"),
    (["--learning-rate", "-0.01"], "--learning-rate", "must be >= 0"),  # 0 freezes the weights (a test uses it)
    (["--weight-decay=-1e-4"], "--weight-decay", "must be >= 0"),
    (["--momentum", "1"], "--momentum", "must be in [0, 1)"),
    (["--warmup-epochs", "-1"], "--warmup-epochs", "must be >= 0"),
    (["--lr-step-factor", "0"], "--lr-step-factor", "must be > 0"),  # above 1 is allowed: a growing step (a test diverges with it)
    (["--clip-norm", "0"], "--clip-norm", "must be > 0"),
    (["--patience", "0"], "--patience", "must be > 0"),
    (["--scale-min", "0"], "--scale-min", "must be > 0"),
    (["--focal-gamma", "-2"], "--focal-gamma", "must be >= 0"),
    (["--ohem-ratio", "0"], "--ohem-ratio", "must be in (0, 1]"),
    (["--val-fraction", "1"], "--val-fraction", "must be in [0, 1)"),
    (["--batch-size", "eight"], "--batch-size", "expected an integer, got 'eight'"),
    (["--scale-min", "2", "--scale-max", "1"], "--scale-min 2.0 is above --scale-max 1.0", ""),
]


@pytest.mark.parametrize("flags, flag, problem", BAD_TRAIN_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_train_refuses_out_of_range_flags_in_one_line(flags, flag, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.parse_args(flags)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and flag in errors[0] and problem in errors[0], errors


def test_good_values_at_the_edges_are_accepted():
    args = train_script.parse_args([
        "--momentum", "0", "--weight-decay", "0", "--warmup-epochs", "0", "--lr-step-factor", "1",
        "--ohem-ratio", "1", "--val-fraction", "0", "--scale-min", "1", "--scale-max", "1",
    ])
    assert (args.momentum, args.weight_decay, args.lr_step_factor, args.val_fraction) == (0, 0, 1, 0)


@pytest.mark.parametrize("script, flags, flag", [
    (test_script, ["--checkpoint", "x.keras", "--num-images", "-1"], "--num-images"),
    (predict_script, ["--checkpoint", "x.keras", "--image", "a.png", "--alpha", "1.5"], "--alpha"),
])
def test_test_and_predict_refuse_out_of_range_flags(script, flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(flags)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and flag in errors[0]
