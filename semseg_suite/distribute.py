"""Where and how training runs: ``tf.distribute`` strategy, precision, XLA.

``select_strategy("auto")`` picks ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG``
names several workers, ``MirroredStrategy`` when this machine has several GPUs, and
the default strategy (one CPU or GPU) otherwise. The training loop
(``semseg_suite.training``) is the same for all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import keras
import tensorflow as tf

log = logging.getLogger("semseg_suite")

STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
XLA_CHOICES = ("auto", "on", "off")


class DistributeError(ValueError):
    """The requested strategy cannot run here (no TPU, no cluster, bad TF_CONFIG)."""


def cluster_workers() -> int:
    """Number of machines ``TF_CONFIG`` names (chief and workers); 0 without it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise DistributeError(f"TF_CONFIG is not a JSON object with a 'cluster' ({error}): {text[:200]}") from None
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def select_strategy(name: str = "auto", *, tpu: str = "") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of ``STRATEGIES``).

    Args:
        name: ``auto``, ``default`` (one device), ``mirrored`` (all GPUs of this
            machine, or its CPU), ``multi-worker`` (the cluster in ``TF_CONFIG``) or
            ``tpu``.
        tpu: for ``tpu``, the TPU's name or address (empty: the local or
            environment-configured TPU).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        if cluster_workers() > 1:
            name = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if cluster_workers() < 1:
            raise DistributeError("--strategy multi-worker needs TF_CONFIG to describe the cluster (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    return tf.distribute.get_strategy()


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        where = f"TPU {tpu!r}" if tpu else "a local TPU"
        raise DistributeError(f"--strategy tpu: cannot connect to {where} ({error})") from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The ``--strategy`` name of a strategy object (``auto`` resolved)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi-worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "default"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and logs (one process per cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "worker":
        return resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    return task_type == "chief"


def resolve_xla(setting: str) -> bool:
    """``auto``: XLA on GPU/TPU, off on CPU (measured 5-6x slower there for DeepLab)."""
    if setting not in XLA_CHOICES:
        raise ValueError(f"xla must be one of {XLA_CHOICES}, got {setting!r}")
    if setting == "auto":
        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    return setting == "on"


@contextlib.contextmanager
def precision_policy(precision: str):
    """Sets Keras's global dtype policy while models are built, then restores it.

    Mixed policies compute in bfloat16 / float16 and keep float32 weights; the
    suite's classifiers and losses stay float32 whatever the policy.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every ``BatchNormalization`` of ``model`` compute batch statistics over
    all replicas (``synchronized=True``); returns how many there are.

    Keras reads the flag at call time and saves it in the layer config, so this
    works on a built model, and a reloaded checkpoint keeps it.
    """
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


class XLACompileError(RuntimeError):
    """XLA cannot compile the model; the message names the layer."""


_NODE = re.compile(r"\{\{node ([^}]+)\}\}")


def explain_xla_error(error: Exception, model: keras.Model) -> XLACompileError | None:
    """An ``XLACompileError`` naming the layer an XLA failure comes from, or None
    when ``error`` is not a compilation failure."""
    text = str(error)
    if not re.search(r"XLA|compil|jit", text, re.IGNORECASE):
        return None
    names = {layer.name for layer in model._flatten_layers(include_self=False)}
    culprit, op = None, None
    for node in _NODE.findall(text):
        # name scopes are layer names, uniquified with a suffix ("host_op_1")
        parts = node.split("/")
        found = [c for part in parts for c in (part, re.sub(r"_\d+$", "", part)) if c in names]
        if found:
            culprit, op = found[-1], parts[-1]
            break
        op = op or parts[-1]
    where = f"layer {culprit!r}" if culprit else "a layer"
    detail = text.strip().splitlines()[0][:300]
    return XLACompileError(
        f"XLA cannot compile {where} of model {model.name!r}"
        f"{f' (op {op})' if op else ''}: {detail}. Rerun with --xla off."
    )
