"""Bad input around a run: unusable dataset or checkpoint paths, a disk that fills mid-checkpoint."""

import errno
import zipfile

import keras
import pytest

import train as train_script
from semseg_suite import export


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def tiny_run(dataset, out_dir, epochs=2):
    return [
        "--model", "ENet", "--dataset", str(dataset), "--batch-size", "2", "--crop-height", "32", "--crop-width", "32",
        "--num-epochs", str(epochs), "--checkpoint-dir", str(out_dir),
    ]


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_checkpoint_folder_that_cannot_be_made_is_refused_before_training(tiny_dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out_dir = blocker / "run"  # fails for root too, unlike a chmod
    assert train_script.main(tiny_run(tiny_dataset, out_dir)) == 2
    (line,) = error_lines(capsys)
    assert str(out_dir) in line and "not writable" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_dataset_that_is_not_a_folder_is_one_line(tiny_dataset, tmp_path, capsys, kind):
    spec = tmp_path / "nowhere"
    if kind == "file":
        spec.write_text("x")
    assert train_script.main(tiny_run(spec, tmp_path / "run")) == 2
    (line,) = error_lines(capsys)
    assert line == f"error: {spec}: dataset folder not found"


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_resumes(tiny_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    out_dir = tmp_path / "run"
    real_save, real_zip = export.save_checkpoint, zipfile.ZipFile
    failing = {"on": False}

    def save_checkpoint(model, path, metadata):
        failing["on"] = metadata.get("epoch") == 2
        return real_save(model, path, metadata)

    class FullDiskZipFile(real_zip):
        def writestr(self, *args, **kwargs):  # after model.save wrote most of the partial file
            if failing["on"]:
                raise OSError(errno.ENOSPC, "No space left on device", self.filename)
            return super().writestr(*args, **kwargs)

    monkeypatch.setattr(export, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(export.zipfile, "ZipFile", FullDiskZipFile)
    assert train_script.main(tiny_run(tiny_dataset, out_dir)) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("error: ") and "No space left on device" in line and ".partial" in line
    assert not list(out_dir.glob("*.partial*"))
    for name in ("latest.keras", "best.keras"):
        model, meta = export.load_checkpoint(out_dir / name)
        assert meta["epoch"] == 1 and model.output_shape[-1] == meta["num_classes"]

    monkeypatch.setattr(export.zipfile, "ZipFile", real_zip)
    assert train_script.main(tiny_run(tiny_dataset, out_dir)) == 0  # the unfinished run continues
    assert "Resuming the unfinished run" in capsys.readouterr().err
    assert export.read_metadata(out_dir / "latest.keras")["epoch"] == 2
