"""One worker of a multi-worker run (TF_CONFIG from the environment): trains with
``semseg_suite.training.train`` (synchronised batch norm) and writes its final
weights, moving statistics included, to an ``.npz`` (used by tests/test_distributed.py).

    python tests/scripts/worker.py DATASET CHECKPOINT_DIR WEIGHTS.npz
"""

import sys

import numpy as np

from semseg_suite import training
from semseg_suite.cli import setup_logging


def main(dataset, checkpoint_dir, weights_path):
    setup_logging()
    config = training.TrainConfig(
        model="DeepLabV3_plus", frontend="MobileNetV2", dataset=dataset, num_epochs=2, batch_size=4,
        crop_height=64, crop_width=64, optimizer="adam", learning_rate=1e-3, frontend_weights="none",
        checkpoint_dir=checkpoint_dir, strategy="auto",
        # without it each worker keeps BN moving averages of its own half batch
        sync_bn=True,
    )
    summary = training.train(config)
    np.savez(weights_path, *summary["model"].get_weights())


if __name__ == "__main__":
    main(*sys.argv[1:])
