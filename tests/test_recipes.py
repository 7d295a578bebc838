"""Papers' training recipes: registration, what --recipe applies, --list-recipes."""

import dataclasses
import importlib.util
import logging
import pathlib

import keras
import pytest

from semseg_suite import data, optim, recipes, synthetic, training

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

# Models whose papers state a recipe we registered (the task's list).
EXPECTED = (
    "FC-DenseNet56", "FC-DenseNet67", "FC-DenseNet103", "ENet", "SegNet", "SegNet-Basic", "DeepLabV3",
    "DeepLabV3_plus", "DeepLabV2-ASPP", "DeepLabV2-LargeFOV", "PSPNet", "BiSeNet", "ICNet",
)
SETTABLE = (
    {field.name for field in dataclasses.fields(training.TrainConfig)}
    | {field.name for field in dataclasses.fields(data.AugmentConfig)}
    | {"iterations"}
)


def _config(*flags):
    return train.config_from_args(train.parse_args(["--dataset", "data", *flags]))


def _rate_at(optimizer, step):
    optimizer.iterations.assign(step)
    return optim.current_learning_rate(optimizer)


def test_the_papers_models_have_a_paper_recipe():
    assert set(EXPECTED) <= set(recipes.models_with_recipe("paper"))


@pytest.mark.parametrize("model", recipes.models_with_recipe("paper"))
def test_each_recipe_reaches_the_config_and_builds_its_optimizer(model):
    recipe = recipes.get_recipe(model)
    settings = recipe.settings()
    assert recipe.source and set(settings) <= SETTABLE
    config, applied = recipes.apply_recipe(training.TrainConfig(model=model, dataset="data", recipe="paper"))
    assert applied == settings
    config = training.resolve_defaults(config)
    for name, value in settings.items():
        if name != "iterations":
            holder = config.augment if hasattr(config.augment, name) else config
            assert getattr(holder, name) == value, name
    optimizer = training._make_optimizer(config, steps_per_epoch=5)
    names = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}
    assert isinstance(optimizer, names[config.optimizer])
    assert _rate_at(optimizer, 0) == pytest.approx(config.learning_rate)
    assert (optimizer.weight_decay or 0.0) == pytest.approx(config.weight_decay or 0.0)
    if config.optimizer == "sgd":
        assert optimizer.momentum == pytest.approx(config.momentum)


def test_fc_densenet_decays_by_0995_per_epoch_with_rmsprop():
    steps = 7
    config = training.resolve_defaults(recipes.apply_recipe(_config("--model", "FC-DenseNet103", "--recipe", "paper"))[0])
    assert (config.batch_size, config.crop_height, config.crop_width, config.patience) == (3, 224, 224, 100)
    assert config.augment.scale_range == (1.0, 1.0)
    optimizer = training._make_optimizer(config, steps)
    assert isinstance(optimizer, keras.optimizers.RMSprop) and optimizer.weight_decay == pytest.approx(1e-4)
    for step in (0, steps - 1, steps, 5 * steps + 3, 40 * steps):
        assert _rate_at(optimizer, step) == pytest.approx(1e-3 * 0.995 ** (step // steps), rel=1e-5)


def test_deeplab_poly_and_iterations_become_epochs():
    config, applied = recipes.apply_recipe(_config("--model", "DeepLabV3", "--recipe", "paper"))
    assert applied["iterations"] == 30_000 and config.num_epochs is None
    steps = 661  # VOC train_aug (10582 images) at batch 16
    config = dataclasses.replace(training.resolve_defaults(config),
                                 num_epochs=recipes.epochs_for(applied["iterations"], steps))
    assert config.num_epochs == 46 and config.num_epochs * steps >= 30_000 > (config.num_epochs - 1) * steps
    optimizer = training._make_optimizer(config, steps)
    total = config.num_epochs * steps
    for step in (0, 1000, 15_000, total - 1):
        assert _rate_at(optimizer, step) == pytest.approx(0.007 * (1 - step / total) ** optim.POLY_POWER,
                                                          rel=1e-4, abs=1e-8)
    assert config.augment.scale_range == (0.5, 2.0) and config.crop_height == 513 and config.batch_size == 16


def test_flags_given_on_the_command_line_win_even_at_their_default(caplog):
    # poly and --h-flip are the flags' defaults: given explicitly, the recipe still keeps off them
    flags = ("--model", "FC-DenseNet56", "--recipe", "paper", "--lr-schedule", "poly", "--learning-rate", "0.02",
             "--scale-max", "1.5", "--batch-size", "4")
    with caplog.at_level(logging.INFO, logger="semseg_suite"):
        config, applied = recipes.apply_recipe(_config(*flags))
    assert (config.lr_schedule, config.learning_rate, config.batch_size) == ("poly", 0.02, 4)
    assert config.augment.scale_range == (0.5, 1.5)
    assert (config.optimizer, config.weight_decay, config.crop_height) == ("rmsprop", 1e-4, 224)
    assert not {"lr_schedule", "learning_rate", "scale_range", "batch_size"} & set(applied)
    assert "Recipe 'paper' of FC-DenseNet56 (Jégou et al. 2017" in caplog.text
    assert "kept your learning_rate, lr_schedule, batch_size, scale_range" in caplog.text


def test_library_values_that_differ_from_the_defaults_win():
    config, applied = recipes.apply_recipe(
        training.TrainConfig(model="PSPNet", recipe="paper", momentum=0.5, num_epochs=3,
                             augment=data.AugmentConfig(rotation=4.0))
    )
    assert (config.momentum, config.augment.rotation, config.learning_rate) == (0.5, 4.0, 0.01)
    assert "momentum" not in applied and "rotation" not in applied


def test_an_epoch_count_given_drops_the_recipes_iterations():
    config, applied = recipes.apply_recipe(_config("--model", "ICNet", "--recipe", "paper", "--num-epochs", "2"))
    assert "iterations" not in applied and config.num_epochs == 2


def test_unknown_recipes_and_models_without_one_are_clear_errors(capsys):
    with pytest.raises(recipes.RecipeError, match=r"DeepLabV3 has no recipe 'fancy'; its recipes: paper"):
        recipes.get_recipe("DeepLabV3", "fancy")
    with pytest.raises(recipes.RecipeError, match=r"U-Net has no training recipe 'paper'.*FC-DenseNet103"):
        recipes.get_recipe("U-Net")
    with pytest.raises(recipes.RecipeError, match="no model has a 'fancy' recipe"):
        recipes.get_recipe("U-Net", "fancy")
    assert train.main(["--model", "U-Net", "--recipe", "paper"]) == 2
    assert "error: U-Net has no training recipe 'paper'" in capsys.readouterr().err


def test_list_recipes_prints_every_model_and_source_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for model in recipes.models_with_recipe("paper"):
        recipe = recipes.get_recipe(model)
        assert f"{model}  [paper]  {recipe.source}" in lines
    assert "--optimizer rmsprop --learning-rate 0.001 --lr-schedule step --lr-step-epochs 1" in out
    assert "(30000 iterations, as epochs of the training split)" in out
    assert all(len(line) <= 100 for line in lines if line.startswith(" "))  # settings and notes wrap
    assert list(tmp_path.iterdir()) == []


def test_train_applies_the_recipe_and_turns_its_iterations_into_epochs(tmp_path, monkeypatch, caplog):
    root = tmp_path / "shapes"
    synthetic.generate_dataset(root, num_train=4, num_val=2, num_test=1, size=64)
    # ENet's recipe counted in iterations, on the small SegNet-Basic: 3 updates of batch 2 on 4 images are 2 epochs
    counted = dataclasses.replace(recipes.get_recipe("ENet"), batch_size=2, iterations=3)
    monkeypatch.setattr(recipes, "get_recipe", lambda model, name="paper": counted)
    config = _config("--model", "SegNet-Basic", "--recipe", "paper", "--dataset", str(root), "--crop-height", "64",
                     "--crop-width", "64", "--checkpoint-dir", str(tmp_path / "run"))
    with caplog.at_level(logging.INFO, logger="semseg_suite"):
        summary = training.train(config)
    assert summary["epochs_run"] == 2
    assert "Recipe 'paper': 3 iterations are 2 epochs of 2 steps" in caplog.text
    assert "Class weights (enet)" in caplog.text
    assert "adam, lr 0.0005" in caplog.text
    keras.backend.clear_session()
