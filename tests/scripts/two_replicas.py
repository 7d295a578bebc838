"""Trains one model under the default strategy and under MirroredStrategy over two
logical CPU devices, from the same weights on the same global batches; prints the
loss trajectories and confusion matrices as JSON (used by tests/test_distributed.py).

Logical devices must be configured before TensorFlow initialises, hence a process
of its own.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import semseg_suite  # noqa: E402
from semseg_suite import distribute, optim, training  # noqa: E402
from tiny_task import squares  # noqa: E402

STEPS, BATCH = 5, 8
MODEL, FRONTEND = "LinkNet", "ResNet18"  # BN throughout and no dropout


def run(strategy, initial_weights, *, sync_bn, jit_compile=False):
    with strategy.scope():
        model = semseg_suite.build_model(MODEL, FRONTEND, num_classes=2, frontend_weights=None)
        model.set_weights(initial_weights)
        if sync_bn:
            distribute.synchronize_batch_norm(model)
        # SGD: its update is linear in the gradient, so rounding differences stay
        # rounding-sized (Adam's first steps are sign-like and amplify them)
        model.compile(optimizer=optim.make_optimizer("sgd", 0.02))
    trainer = training.Trainer(model, strategy, num_classes=2, jit_compile=jit_compile)
    images, labels = squares(np.random.default_rng(0), STEPS * BATCH)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    losses = [float(trainer.train_step(batch)) for batch in strategy.experimental_distribute_dataset(dataset)]
    return {
        "replicas": strategy.num_replicas_in_sync,
        "losses": losses,
        "confusion": np.asarray(trainer.train_confusion.matrix).tolist(),
        "valid_pixels": int(np.sum(labels != 255)),
    }


def main():
    keras.utils.set_random_seed(0)
    initial = semseg_suite.build_model(MODEL, FRONTEND, num_classes=2, frontend_weights=None).get_weights()
    # one strategy object for all runs: two would reuse each other's collective keys
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {
        "default": run(tf.distribute.get_strategy(), initial, sync_bn=True),
        "mirrored_sync_bn": run(mirrored, initial, sync_bn=True),
        "mirrored_local_bn": run(mirrored, initial, sync_bn=False),
    }
    if "--xla" in sys.argv:
        results["mirrored_xla"] = run(mirrored, initial, sync_bn=False, jit_compile=True)
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
