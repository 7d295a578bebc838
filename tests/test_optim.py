"""Optimisers and schedules: formulas, weight decay, clipping, accumulation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from semseg_suite import optim, training


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def rate(schedule, step):
    return float(schedule(step)) if callable(schedule) else float(schedule)


@pytest.mark.parametrize(
    "name,formula",
    [
        ("poly", lambda lr, t, total: lr * (1 - t / total) ** 0.9),
        ("cosine", lambda lr, t, total: lr * 0.5 * (1 + math.cos(math.pi * t / total))),
        ("step", lambda lr, t, total: lr * 0.1 ** (t // (total // 3))),
        ("constant", lambda lr, t, total: lr),
    ],
)
def test_schedules_follow_their_formulas_after_the_warmup(name, formula):
    lr, total, warmup = 0.02, 130, 10
    plain = optim.make_schedule(name, lr, total - warmup)
    warmed = optim.make_schedule(name, lr, total, warmup_steps=warmup)
    for t in (0, 1, 39, 40, 41, 80, 119):
        assert rate(plain, t) == pytest.approx(formula(lr, t, total - warmup), rel=1e-5, abs=1e-9)
        assert rate(warmed, warmup + t) == pytest.approx(rate(plain, t), rel=1e-5, abs=1e-9)
    # linear warm-up: lr / warmup at the first update, lr at the last warm-up one
    assert [rate(warmed, t) for t in (0, 4, 9)] == pytest.approx([lr / 10, lr / 2, lr], rel=1e-5)


def test_step_schedule_takes_its_step_size_and_factor():
    schedule = optim.make_schedule("step", 1.0, 100, step_size=25, step_factor=0.5)
    assert [rate(schedule, t) for t in (0, 24, 25, 50, 99)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])


def test_warmup_schedule_survives_a_keras_checkpoint(tmp_path):
    schedule = optim.make_schedule("poly", 0.01, 100, warmup_steps=10)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optim.make_optimizer("sgd", schedule), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras").optimizer
    schedule_again = reloaded._learning_rate
    assert isinstance(schedule_again, optim.LinearWarmup)
    for t in (0, 5, 10, 60):
        assert rate(schedule_again, t) == pytest.approx(rate(schedule, t))
    assert float(reloaded.learning_rate) == pytest.approx(rate(schedule, 7))  # continues where it was


def test_bad_schedule_and_optimizer_names_are_clear_errors():
    with pytest.raises(ValueError, match="lr schedule must be one of"):
        optim.make_schedule("exp", 0.1, 10)
    with pytest.raises(ValueError, match="shorter than the run"):
        optim.make_schedule("poly", 0.1, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optim.make_optimizer("lamb", 0.1)


def conv_bn_model():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_shrinks_kernels_only(name):
    model = conv_bn_model()
    before = {v.path: np.array(v) for v in model.trainable_variables}
    before["bn/gamma"] += 0.5  # a non-trivial scale, to see it is not decayed
    model.get_layer("bn").gamma.assign(before["bn/gamma"])
    optimizer = optim.make_optimizer(name, 0.1, weight_decay=0.01)
    optim.exclude_from_weight_decay(optimizer, model)
    zeros = [tf.zeros_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables))
    after = {v.path: np.array(v) for v in model.trainable_variables}
    np.testing.assert_allclose(after["conv/kernel"], before["conv/kernel"] * (1 - 0.1 * 0.01), rtol=1e-6)
    for path in ("conv/bias", "bn/gamma", "bn/beta"):
        np.testing.assert_array_equal(after[path], before[path])


def test_adamw_decays_by_default_and_the_others_do_not():
    assert optim.make_optimizer("adamw", 0.1).weight_decay == optim.ADAMW_WEIGHT_DECAY
    assert all(optim.make_optimizer(name, 0.1).weight_decay is None for name in ("sgd", "adam", "rmsprop"))


def test_clip_norm_bounds_the_global_gradient_norm():
    variables = [keras.Variable(np.zeros(3, "float32")), keras.Variable(np.zeros(2, "float32"))]
    gradients = [tf.constant([3.0, 0.0, 4.0]), tf.constant([0.0, 0.0])]  # global norm 5
    optimizer = optim.make_optimizer("sgd", 1.0, momentum=0.0, clip_norm=1.0)
    optimizer.apply_gradients(zip(gradients, variables))
    np.testing.assert_allclose(np.array(variables[0]), [-0.6, 0.0, -0.8], rtol=1e-6)


def linear_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same", dtype="float32")(inputs))


def test_accumulated_gradients_equal_one_large_batch():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, (4, 8, 8)).astype("int32")
    strategy = tf.distribute.get_strategy()

    def trained(batch_size, accum_steps):
        model = linear_model(seed=1)
        model.compile(optimizer=optim.make_optimizer("sgd", 0.5, accum_steps=accum_steps))
        trainer = training.Trainer(model, strategy, num_classes=3)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
        trainer.train_epoch(dataset, 4 // batch_size)
        return model

    large, accumulated = trained(4, 1), trained(2, 2)
    assert int(accumulated.optimizer.iterations) == int(large.optimizer.iterations) == 1
    for a, b in zip(accumulated.get_weights(), large.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    first_half = trained(2, 1)  # without accumulation the two batches give two different steps
    assert not np.allclose(first_half.get_weights()[0], large.get_weights()[0], atol=1e-4)


def test_loss_scaling_wraps_the_optimizer_and_reports_its_rate():
    optimizer = optim.make_optimizer("adam", optim.make_schedule("poly", 0.01, 10), loss_scaling=True)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert optim.current_learning_rate(optimizer) == pytest.approx(0.01)
