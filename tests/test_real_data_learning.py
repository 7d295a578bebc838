"""An honest learning check on real pixels (issue 13, part 5).

The tiny task (``tiny_task``) shows a model can learn synthetic squares; this shows
the whole ``train.py`` path (folder dataset, class table, augmentation, loss,
optimiser, schedule, validation) fits real road scenes. Eight CamVid train images,
scaled to 96x128, are both the train and the val split: 40 Adam steps from random
initialisation must reach the scores below on them, which a model that learned
nothing (or only the majority class) cannot.

Measured (LinkNet on ResNet18, this recipe): val mIoU 0.22-0.23 after 40 steps, Sky
0.81, Road 0.84, Building 0.59; after 18 steps it was 0.08, so the bound needs the
optimisation to work, not only the data path. Skipped where ``../shared/data/camvid``
is absent.
"""

import pathlib

import cv2
import pytest

import train as train_script
from semseg_suite import training

CAMVID = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
HEIGHT, WIDTH = 96, 128
NUM_IMAGES, STEPS = 8, 40
MIN_MEAN_IOU = 0.15  # over all 11 classes; background-only scores about 0.03
MIN_CLASS_IOU = {"Sky": 0.5, "Road": 0.5}  # the two largest classes, 15% and 31% of pixels


def _subset(root: pathlib.Path) -> pathlib.Path:
    """Every 46th CamVid train image and its labels, scaled to HEIGHT x WIDTH (labels
    by nearest neighbour), as both the train and the val split of a dataset folder."""
    names = sorted(path.name for path in (CAMVID / "train").glob("*.png"))[::46][:NUM_IMAGES]
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in names:
            image = cv2.imread(str(CAMVID / "train" / name), cv2.IMREAD_COLOR)
            labels = cv2.imread(str(CAMVID / "trainannot" / name), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / split / name), cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
            cv2.imwrite(
                str(root / f"{split}annot" / name),
                cv2.resize(labels, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST),
            )
    (root / "classes.csv").write_bytes((CAMVID / "classes.csv").read_bytes())
    return root


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} not present")
def test_linknet_fits_real_camvid_images(tmp_path):
    dataset = _subset(tmp_path / "camvid8")
    args = train_script.parse_args([
        "--model", "LinkNet", "--frontend", "ResNet18", "--frontend-weights", "none",
        "--dataset", str(dataset), "--crop-height", str(HEIGHT), "--crop-width", str(WIDTH),
        "--batch-size", str(NUM_IMAGES), "--num-epochs", str(STEPS),  # one step per epoch
        "--optimizer", "adam", "--learning-rate", "3e-3", "--scale-min", "1", "--scale-max", "1",
        "--checkpoint-dir", str(tmp_path / "run"),
    ])
    summary = training.train(train_script.config_from_args(args))
    last = summary["history"][-1]
    assert len(summary["history"]) == STEPS
    assert last["val_miou"] > MIN_MEAN_IOU, last
    for name, bound in MIN_CLASS_IOU.items():
        assert last[f"val_iou/{name}"] > bound, (name, last)
    assert last["val_miou"] > 2 * summary["history"][0]["val_miou"]  # learned here, not at the first step
