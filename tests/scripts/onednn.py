"""Dilated-convolution gradients and training steps in a process of their own.

Whether TensorFlow uses oneDNN is fixed when it starts (``TF_ENABLE_ONEDNN_OPTS``),
so tests/test_onednn.py runs this script once per setting. Prints one JSON object:

    python tests/scripts/onednn.py gradients
        max |AtrousConv2D - Conv2D| of the output and of the input, kernel and bias
        gradients, per map size and rate; and whether TensorFlow's own gradient of
        the native dilated op runs in this process.
    python tests/scripts/onednn.py steps [--graph] MODEL[:FRONTEND] [...]
        one training step (the suite's Trainer, auxiliary heads included) of each
        model, on its default frontend unless one is named: loss, and whether every
        weight stayed finite and how many changed. Eager by default: the same CPU
        kernels as a traced step at a quarter of the cost (no graph to build and
        optimise for a 500-layer model); ``--graph`` runs ``Trainer.train_step``,
        the ``tf.function`` that training runs.

Both report ``onednn`` (TensorFlow's own answer) and the gradient path that
``AtrousConv2D`` takes.
"""

import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import semseg_suite
from semseg_suite import layers, models, optim, training
from tiny_task import squares

# One odd and one even map, both smaller than the largest rates, so that taps past
# the border (only the centre one sees data) are covered too.
SIZES = [(23, 19), (16, 30)]
RATES = list(range(1, 25)) + [(2, 5)]


def gradient_errors(size, rate, rng):
    x = tf.constant(rng.normal(size=(1, *size, 4)), tf.float32)
    reference = keras.layers.Conv2D(3, 3, padding="same", dilation_rate=rate)
    reference.build(x.shape)
    fast = layers.AtrousConv2D.from_config(reference.get_config())
    fast.build(x.shape)
    fast.set_weights(reference.get_weights())
    dy = tf.constant(rng.normal(size=(1, *size, 3)), tf.float32)
    results = []
    for layer in (reference, fast):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        results.append([y, *tape.gradient(y, [x, layer.kernel, layer.bias], output_gradients=dy)])
    names = ("output", "input_gradient", "kernel_gradient", "bias_gradient")
    return {name: float(np.abs(np.asarray(a) - np.asarray(b)).max()) for name, a, b in zip(names, *results)}


def native_gradient_runs() -> bool:
    """Whether TensorFlow's own gradient of ``tf.nn.conv2d(dilations=2)`` runs here."""
    x = tf.ones((1, 8, 8, 2))
    kernel = tf.ones((3, 3, 2, 2))
    try:
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=2)
        tape.gradient(y, kernel).numpy()
        return True
    except tf.errors.InvalidArgumentError:
        return False


def gradients() -> dict:
    rng = np.random.default_rng(0)
    errors = [
        {"size": list(size), "rate": rate, **gradient_errors(size, rate, rng)}
        for size in SIZES
        for rate in RATES
    ]
    return {"errors": errors, "native_gradient_runs": native_gradient_runs()}


def step(spec: str, graph: bool) -> dict:
    model_name, _, frontend = spec.partition(":")
    frontend = frontend or semseg_suite.default_frontend(model_name)
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model = semseg_suite.build_model(model_name, frontend, num_classes=3, frontend_weights=None, auxiliary=True)
    model.compile(optimizer=optim.make_optimizer("sgd", 0.01))
    trainer = training.Trainer(
        model, tf.distribute.get_strategy(), num_classes=3, loss_weights=models.loss_weights(model_name)
    )
    images, labels = squares(np.random.default_rng(0), 2, size=64)
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    batch = (tf.constant(images), tf.constant(labels))
    if graph:
        loss = float(trainer.train_step(batch))
    else:  # the per-replica step inside train_step: loss, gradients, update
        loss = float(trainer._replica_step(*batch)[0])
    after = [np.asarray(w) for w in model.trainable_weights]
    result = {
        "model": model_name,
        "frontend": frontend,
        "graph": graph,
        "loss": loss,
        "weights_finite": all(np.isfinite(w).all() for w in after),
        "weights_changed": sum(not np.array_equal(a, b) for a, b in zip(before, after)),
        "weights": len(after),
        "atrous_layers": sum(isinstance(layer, layers.AtrousConv2D) for layer in model._flatten_layers()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    keras.backend.clear_session()
    return result


def main(argv):
    command, names = argv[0], argv[1:]
    report = {"onednn": layers.onednn_enabled(), "path": layers.atrous_gradient_path()}
    if command == "gradients":
        report.update(gradients())
    elif command == "steps":
        graph = "--graph" in names
        report["steps"] = [step(name, graph) for name in names if name != "--graph"]
    else:
        raise SystemExit(f"unknown command {command!r}: gradients or steps")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
