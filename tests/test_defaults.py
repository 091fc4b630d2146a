"""The defaults a run gets when nothing fixes them: its length follows the data's size, its schedule fits
inside the run, and the paper's plain networks leave chance from their first steps."""
import csv
import dataclasses
import json
import math

import pytest
import torch

from nin.config import TrainConfig, list_recipes, load_recipe
from nin.defaults import (MAX_EPOCHS, MAX_WARMUP_FRACTION, MIN_STEPS, default_epochs, default_eval_every,
                          default_lr, default_warmup_epochs, resolve_defaults, resolve_eval_every,
                          resolve_for_data, resolve_for_model)
from nin.models import _layer_output, _weight_layers, create_model, fit_init_to_data
from nin.train import Run, dropout_at, fit, lr_at, prepare_data
from tiny_run import write_folder_dataset


def test_small_sets_get_many_epochs_large_ones_few():
    assert default_epochs(1_400) == 41  # 1500 * sqrt(1400) = 57,400 images seen
    assert default_epochs(10_000) == 15
    assert default_epochs(60_000) == 7
    assert default_epochs(604_388) == 2  # SVHN train + extra
    epochs = [default_epochs(n) for n in (500, 2_000, 10_000, 60_000, 600_000)]
    assert epochs == sorted(epochs, reverse=True)
    seen = [n * default_epochs(n) for n in (2_000, 10_000, 60_000, 600_000)]
    assert seen == sorted(seen)  # the time still grows with the data


def resolved(epochs=None, batch_size=None, images=10_000):
    config = resolve_for_data(TrainConfig(epochs=epochs, batch_size=batch_size), images, log=lambda *_: None)
    return config.epochs, config.batch_size


def test_a_short_run_gets_smaller_batches_so_that_it_has_enough_steps():
    assert resolved(epochs=1, images=10_000) == (1, 32)  # 312 steps, not 78
    assert resolved(epochs=1, images=60_000) == (1, 128)  # 468 steps
    assert resolved(epochs=5, images=2_000) == (5, 32)
    assert resolved(epochs=1, images=20) == (1, 20)  # fewer images than the smallest batch: one batch


def test_tiny_sets_get_a_floor_of_steps_and_a_cap_of_epochs():
    epochs, batch = resolved(images=500)
    assert epochs * (500 // batch) >= MIN_STEPS and batch == 64
    assert resolved(images=40) == (MAX_EPOCHS, 32)  # one step an epoch: the cap, not 400 epochs
    assert resolved(images=1_000) == (48, 64)  # 720 steps: batch 128 would give 336, too few to fit the set


def test_what_the_user_gives_is_kept_and_what_is_resolved_is_said():
    lines = []
    config = TrainConfig(epochs=3, batch_size=128, warmup_epochs=0.5)
    assert resolve_for_data(config, 1_400, log=lines.append) == config and lines == []
    config = resolve_for_data(TrainConfig(), 1_400, log=lines.append)
    assert (config.epochs, config.batch_size) == (41, 128)
    assert lines == ["1,400 training images: 41 epochs of batch 128, 410 steps, warm-up 10 epochs (the defaults for "
                     "this many images: about 1500 x sqrt(images) seen, at least 400 steps, at least 100 steps of "
                     "warm-up; --epochs, --batch-size and --warmup-epochs set them)"]


def test_the_warm_up_lasts_an_epoch_or_100_steps_whichever_is_longer():
    assert default_warmup_epochs(60_000, 128) == 1.0  # 468 steps an epoch
    assert default_warmup_epochs(1_600, 128) == 8.34  # 12 steps an epoch: 100 steps, not 12
    config = resolve_for_data(TrainConfig(lr=0.1), 1_600, log=lambda *_: None)
    total = config.epochs * (1_600 // config.batch_size)
    lrs = [lr_at(step, total, config) for step in range(total)]
    assert lrs.index(max(lrs)) == 100
    one_epoch = resolve_for_data(TrainConfig(epochs=1), 1_600, log=lambda *_: None)
    assert one_epoch.warmup_epochs == 0.25  # the quarter-of-the-run cap, said as it acts


def test_a_run_evaluates_every_epoch_unless_the_test_set_dwarfs_the_training_set():
    assert default_eval_every(60_000, 10_000) == 1
    assert default_eval_every(1_600, 400) == 1  # a validation split
    assert default_eval_every(500, 10_000) == 20  # 68 epochs: evaluated after 20, 40, 60 and 68
    lines = []
    config = resolve_eval_every(TrainConfig(epochs=68), 500, 10_000, log=lines.append)
    assert config.eval_every == 20 and lines == ["10,000 test images for 500 training images: evaluating every 20 "
                                                 "epochs and after the last (--eval-every sets it)"]
    assert resolve_eval_every(TrainConfig(epochs=68, eval_every=3), 500, 10_000).eval_every == 3


def test_the_epochs_between_evaluations_leave_the_test_columns_empty(tmp_path, fashion_mnist_root):
    config = TrainConfig(train_subset=64, test_subset=200, epochs=3, batch_size=32, progress=False,
                         tensorboard=False, device="cpu", out=str(tmp_path / "run"))
    result = fit(config, log=lambda *_: None)  # 200 test images for 64 training images: every 4 epochs, and the last
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [(r["test_loss"], r["test_acc"]) for r in rows[:2]] == [("", ""), ("", "")]
    assert float(rows[2]["test_acc"]) == result["accuracy"] and result["n"] == 200
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval_every"] == 4


def test_plain_networks_get_clipping_and_the_papers_dropout_batch_norm_twins_neither_unless_given():
    batch_128 = TrainConfig(batch_size=128)
    plain, twin = resolve_for_model(batch_128, plain=True), resolve_for_model(batch_128, plain=False)
    assert (plain.grad_clip, plain.dropout) == (1.0, 0.5)
    assert (twin.grad_clip, twin.dropout) == (0.0, 0.3)
    assert resolve_for_model(TrainConfig(batch_size=128, dropout=0.1), plain=True).dropout == 0.1
    assert resolve_for_model(TrainConfig(batch_size=128, grad_clip=0.0), plain=True).grad_clip == 0.0
    assert resolve_for_model(TrainConfig(batch_size=128, grad_clip=5.0), plain=False).grad_clip == 5.0


def test_plain_networks_start_without_dropout_and_reach_the_papers_rate_at_the_end_of_the_warm_up():
    config = resolve_for_model(TrainConfig(epochs=4, batch_size=128, warmup_epochs=1.0), plain=True)
    assert config.dropout_warmup is True and config.dropout == 0.5
    rates = [dropout_at(step, 400, config) for step in (0, 24, 25, 50, 75, 99, 100, 399)]
    assert rates == [0.0, 0.0, 0.125, 0.25, 0.375, 0.375, 0.5, 0.5]  # a quarter more each quarter of 100 steps
    twin = resolve_for_model(TrainConfig(epochs=4, batch_size=128, warmup_epochs=1.0), plain=False)
    assert twin.dropout_warmup is False and dropout_at(0, 400, twin) == 0.3
    kept = resolve_for_model(TrainConfig(batch_size=128, dropout_warmup=False), plain=True)
    assert kept.dropout_warmup is False


def test_a_run_sets_its_dropout_layers_to_the_rate_of_each_step(tmp_path, fashion_mnist_root):
    rates = []
    config = TrainConfig(model="nin_mnist", train_subset=256, test_subset=64, epochs=2, batch_size=32, lr=0.05,
                         warmup_epochs=0.5, progress=False, tensorboard=False, device="cpu", out=str(tmp_path / "run"))
    run_step = Run.step

    def record(self, images, labels):
        rates.append({layer.p for layer in self.model.modules() if isinstance(layer, torch.nn.Dropout)})
        return run_step(self, images, labels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "step", record)
        fit(config, log=lambda *_: None)
    assert rates == [{0.0}, {0.125}, {0.25}, {0.375}] + [{0.5}] * 12  # 4 steps of warm-up, then the paper's 0.5
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dropout_warmup"] is True


def test_plain_networks_get_a_larger_lr_at_large_batches_batch_norm_twins_one_lr_unless_given():
    assert [default_lr(plain=True, batch_size=b) for b in (32, 64, 128, 512)] == [0.1, 0.1414, 0.2, 0.4]
    assert {default_lr(plain=False, batch_size=b) for b in (32, 128, 512)} == {0.1}
    assert resolve_for_model(TrainConfig(batch_size=128), plain=True).lr == 0.2
    assert resolve_for_model(TrainConfig(batch_size=32), plain=True).lr == 0.1
    assert resolve_for_model(TrainConfig(batch_size=128), plain=False).lr == 0.1
    assert resolve_for_model(TrainConfig(batch_size=128, lr=0.05), plain=True).lr == 0.05


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_short_run_warms_up_inside_the_run_and_decays_to_the_end(epochs):
    config = TrainConfig(lr=0.1, epochs=epochs, warmup_epochs=1.0, schedule="cosine")
    total = 80 * epochs
    lrs = [lr_at(step, total, config) for step in range(total)]
    peak = lrs.index(max(lrs))
    assert 0 < peak <= total // 4  # one epoch of warm-up is cut to a quarter of a one-epoch run
    assert lrs[-1] < 0.01 * max(lrs)  # and the run still ends near zero
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_data_init_gives_every_layer_unit_scale_and_centred_outputs_on_the_batch():
    torch.manual_seed(0)
    model, images = create_model("nin_mnist"), torch.randn(64, 1, 28, 28)
    fit_init_to_data(model, images)
    model.eval()
    for layer in _weight_layers(model):
        out = _layer_output(model, layer, images)
        assert float(out.std()) == pytest.approx(1.0, abs=0.05)
        assert float(out.mean(dim=(0, 2, 3)).abs().max()) < 1e-4
    assert model.training is False  # left as it was (eval here)


def test_data_init_keeps_the_network_and_its_function_shape():
    model = create_model("nin_mnist")
    shapes = {name: p.shape for name, p in model.named_parameters()}
    fit_init_to_data(model, torch.randn(16, 1, 28, 28))
    assert {name: p.shape for name, p in model.named_parameters()} == shapes and model.training


def test_the_papers_plain_network_leaves_chance_within_100_steps(tmp_path, fashion_mnist_root):
    """nin_mnist (no BatchNorm, dropout 0.5, ReLU before the pooling) with the defaults, 100 steps."""
    config = TrainConfig(model="nin_mnist", train_subset=3_200, test_subset=1_000, batch_size=32, epochs=1,
                         progress=False, tensorboard=False, device="cpu", out=str(tmp_path / "run"))
    result = fit(config, log=lambda *_: None)
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(row["step"]) == 100
    # the epoch's mean, first steps included; without the two aids this run stays at ln 10
    assert float(row["train_loss"]) < 0.9 * math.log(10)
    assert result["accuracy"] > 0.4  # chance is 0.1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["grad_clip"] == 1.0 and saved["data_init"] is True and saved["epochs"] == 1
    assert saved["batch_size"] == 32


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_fixes_what_the_defaults_would_decide_and_keeps_its_schedule(name):
    """So that a recipe's runs are what they were before these defaults existed."""
    recipe = load_recipe(name)
    assert None not in (recipe.epochs, recipe.batch_size, recipe.dropout, recipe.warmup_epochs, recipe.lr)
    assert resolve_for_data(recipe, 60_000, log=lambda *_: pytest.fail("nothing to resolve")) == recipe
    assert recipe.warmup_epochs <= MAX_WARMUP_FRACTION * recipe.epochs  # the cap on warm-up never bites


def test_one_function_resolves_every_default_for_the_data_and_the_network_together():
    lines = []
    config = resolve_defaults(TrainConfig(model="nin_mnist"), 1_400, 10_000, plain=True, log=lines.append)
    assert [field.name for field in dataclasses.fields(config) if getattr(config, field.name) is None] == []
    quiet = lambda *_: None  # noqa: E731
    in_steps = resolve_eval_every(resolve_for_data(TrainConfig(model="nin_mnist"), 1_400, quiet), 1_400, 10_000, quiet)
    assert config == resolve_for_model(in_steps, plain=True)  # each rule written once, in its own function
    assert len(lines) == 2 and lines[0].startswith("1,400 training images") and "evaluating every 8" in lines[1]
    assert resolve_defaults(config, 1_400, 10_000, plain=True, log=lambda *_: pytest.fail("nothing left")) == config


def test_a_runs_data_comes_with_its_config_resolved_once_for_the_data_and_the_network(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    config = TrainConfig(model="nin_mnist", dataset="folder", root=str(root), image_size=16, device="cpu")
    data = prepare_data(config, torch.device("cpu"))
    train, test = len(data.train.images), len(data.test.images)
    assert data.config == resolve_defaults(config, train, test, plain=True, log=lambda *_: None)  # config.json
    assert (data.config.lr, data.config.grad_clip, data.config.dropout) == (default_lr(True, 12), 1.0, 0.5)
