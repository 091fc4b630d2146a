"""Never lose a run to a diverging loss: stop with the way back, or roll back and continue at a lower rate.

Real divergence (learning rates far too high for NIN without BatchNorm) and divergence injected at a
chosen step (``Run.step`` wrapped to turn a weight into NaN) exercise the same checks.
"""
from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from nin.checkpoint import load_checkpoint
from nin.cli import main
from nin.errors import Interrupted, NinError
from nin.train import MAX_ROLLBACKS, Run, fit
from run_checks import STEPS_PER_EPOCH, metrics_rows, small_config
from tiny_run import write_folder_dataset


def without_bn(out: Path, **changes):
    """NIN without BatchNorm at a constant learning rate: the setting in which NIN diverges."""
    settings = dict(model="nin_mnist", lr=1e6, schedule="constant", warmup_epochs=0, label_smoothing=0.0, epochs=2)
    return small_config(out, **{**settings, **changes})


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self if re.search(pattern, line)]


def weights_are_finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def poison_weights(run: Run) -> None:
    with torch.no_grad():
        next(run.model.parameters()).fill_(float("nan"))


def diverge_at_steps(patch: pytest.MonkeyPatch, *steps: int) -> None:
    """The first time the run reaches each of ``steps``, that step leaves a NaN weight behind (once each)."""
    original, pending = Run.step, set(steps)

    def step(self, images, labels):
        loss, logits = original(self, images, labels)
        if self.state.step in pending:
            pending.discard(self.state.step)
            poison_weights(self)
        return loss, logits

    patch.setattr(Run, "step", step)


def diverge_above(patch: pytest.MonkeyPatch, lr_limit: float) -> None:
    """Every step taken at a learning rate above ``lr_limit`` leaves a NaN weight behind."""
    original = Run.step

    def step(self, images, labels):
        loss, logits = original(self, images, labels)
        if self.optimizer.param_groups[0]["lr"] > lr_limit:
            poison_weights(self)
        return loss, logits

    patch.setattr(Run, "step", step)


def test_a_diverging_run_stops_naming_the_step_the_lr_and_the_last_good_checkpoint(tmp_path, fashion_mnist_root):
    run = tmp_path / "run"
    with pytest.raises(NinError) as error:
        fit(without_bn(run, lr=1e6), log=Log())

    message = str(error.value)
    assert re.search(r"non-finite by step 8 \(epoch 1, lr 1e\+06\)", message), message
    assert f"the last good checkpoint is {run / 'checkpoint.pt'} (epoch 0, step 0)" in message
    assert "--on-nan rollback" in message
    last_good = load_checkpoint(run)
    assert last_good["step"] == 0 and weights_are_finite(last_good)


def test_the_command_reports_divergence_in_one_line_with_exit_code_2(tmp_path, capsys, fashion_mnist_root):
    code = main(["train", "--model", "nin_mnist", "--lr", "1e6", "--schedule", "constant", "--warmup-epochs", "0",
                 "--train-subset", "256", "--test-subset", "128", "--batch-size", "32", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "run")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nin: error: the loss became non-finite by step 8") and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "run" / "checkpoint.pt") in err


def test_a_loss_that_explodes_but_stays_finite_is_a_divergence_too(tmp_path, monkeypatch, fashion_mnist_root):
    """A loss of 1e5 per image (BatchNorm can keep the weights finite at lr 1e6) is not a result."""
    original = Run.step

    def exploding_step(self, images, labels):
        loss, logits = original(self, images, labels)
        return torch.full_like(loss, 1e5), logits

    monkeypatch.setattr(Run, "step", exploding_step)
    with pytest.raises(NinError, match=r"the loss exploded by step 8 \(epoch 1, lr .*\); the last good checkpoint"):
        fit(small_config(tmp_path / "run"), log=Log())
    assert load_checkpoint(tmp_path / "run")["step"] == 0


def test_rollback_survives_a_real_divergence_at_a_tenth_of_the_lr(tmp_path, fashion_mnist_root):
    run, log = tmp_path / "run", Log()

    # without the start-up aids of plain networks (gradient clipping keeps even lr 3 finite), lr 3 diverges
    # in epoch 1; lr 0.3 does not
    fit(without_bn(run, lr=3.0, on_nan="rollback", grad_clip=0.0, data_init=False), log=log)

    [warning] = log.matching("rolled back")
    assert "non-finite by step 8 (epoch 1, lr 3)" in warning
    assert "rolled back to step 0 with the learning rate divided by 10 (rollback 1 of 3)" in warning
    final = load_checkpoint(run)
    assert final["epoch"] == 2 and weights_are_finite(final)
    assert final["state"]["lr_scale"] == pytest.approx(0.1) and final["state"]["rollbacks"] == 1
    assert [float(r["lr"]) for r in metrics_rows(run)] == pytest.approx([0.3, 0.3])


def test_rollback_reloads_the_last_epochs_checkpoint_and_finishes(tmp_path, monkeypatch, fashion_mnist_root):
    run, log = tmp_path / "run", Log()
    with monkeypatch.context() as patch:
        diverge_at_steps(patch, 13)  # once, in the middle of epoch 2
        fit(small_config(run, on_nan="rollback"), log=log)

    [warning] = log.matching("rolled back")
    assert f"non-finite by step {2 * STEPS_PER_EPOCH} (epoch 2" in warning  # found at the epoch's end
    assert f"rolled back to step {STEPS_PER_EPOCH} with the learning rate divided by 10" in warning
    final = load_checkpoint(run)
    assert final["epoch"] == 3 and final["step"] == 3 * STEPS_PER_EPOCH and weights_are_finite(final)
    assert final["state"]["lr_scale"] == pytest.approx(0.1) and final["state"]["rollbacks"] == 1
    rows = metrics_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(math.isfinite(float(r["train_loss"])) for r in rows)


def test_each_rollback_divides_the_lr_again(tmp_path, monkeypatch, fashion_mnist_root):
    """Diverging at lr 0.5 and at 0.05, surviving at 0.005: two rollbacks to the same checkpoint."""
    run, log = tmp_path / "run", Log()
    with monkeypatch.context() as patch:
        diverge_above(patch, lr_limit=0.01)
        fit(without_bn(run, lr=0.5, on_nan="rollback"), log=log)

    warnings = log.matching("rolled back")
    assert len(warnings) == 2
    assert "lr 0.5)" in warnings[0] and "divided by 10 (rollback 1 of 3)" in warnings[0]
    assert "lr 0.05)" in warnings[1] and "divided by 100 (rollback 2 of 3)" in warnings[1]
    final = load_checkpoint(run)
    assert final["epoch"] == 2 and weights_are_finite(final)
    assert final["state"]["lr_scale"] == pytest.approx(0.01) and final["state"]["rollbacks"] == 2


def test_after_max_rollbacks_the_run_stops_with_the_error(tmp_path, monkeypatch, fashion_mnist_root):
    run, log = tmp_path / "run", Log()
    with monkeypatch.context() as patch:
        diverge_above(patch, lr_limit=0.0)  # diverges at any learning rate
        with pytest.raises(NinError) as error:
            fit(without_bn(run, lr=0.5, on_nan="rollback"), log=log)

    assert len(log.matching("rolled back")) == MAX_ROLLBACKS == 3
    message = str(error.value)
    assert "non-finite by step 8 (epoch 1, lr 0.0005) after 3 rollbacks" in message
    assert f"the last good checkpoint is {run / 'checkpoint.pt'} (epoch 0, step 0)" in message
    assert weights_are_finite(load_checkpoint(run))


@pytest.mark.parametrize("on_nan", ["stop", "rollback"])
def test_a_stop_signal_after_an_unnoticed_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, on_nan,
                                                                                     fashion_mnist_root):
    """The loss is checked every 25 steps and at the end of an epoch; SIGTERM can come in between. The
    checkpoint written on the way out must not replace the last good one with NaN weights."""
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        diverge_at_steps(patch, 11)  # mid-epoch 2, not a step at which the loss is checked
        original = Run.step

        def step_then_sigterm(self, images, labels):
            result = original(self, images, labels)
            if self.state.step == 12:
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        patch.setattr(Run, "step", step_then_sigterm)
        with pytest.raises((Interrupted, NinError)):
            fit(small_config(run, on_nan=on_nan), log=Log())

    assert weights_are_finite(load_checkpoint(run)), "the checkpoint on disk holds NaN weights"


def test_weights_ruined_by_the_last_step_of_an_epoch_are_never_checkpointed(tmp_path, monkeypatch, fashion_mnist_root):
    """The last step of epoch 1 had a finite loss but its update left NaN weights (gradients too large):
    the epoch's loss is finite, its weights are not. They must not become the last good checkpoint."""
    run, log = tmp_path / "run", Log()
    with monkeypatch.context() as patch:
        diverge_at_steps(patch, STEPS_PER_EPOCH)
        fit(small_config(run, on_nan="rollback"), log=log)

    assert len(log.matching("rolled back")) == 1
    final = load_checkpoint(run)
    assert final["epoch"] == 3 and weights_are_finite(final)
    assert all(math.isfinite(float(r["test_loss"])) for r in metrics_rows(run))


def test_a_loss_stuck_at_chance_warns_about_lr_init_and_the_relu_before_gap(tmp_path, fashion_mnist_root):
    """With a vanishing learning rate the loss stays at ln 10: the warning names NIN's usual causes."""
    log = Log()
    # the full widths: the narrower network of the other tests starts further from ln 10
    fit(small_config(tmp_path / "run", lr=1e-12, label_smoothing=0.0, epochs=2, width=1.0), log=log)

    warnings = log.matching(r"^warning: after epoch \d the training loss")
    assert [int(re.search(r"epoch (\d)", w).group(1)) for w in warnings] == [1, 2]
    for warning in warnings:
        assert "still at chance (ln 10 = 2.3026)" in warning
        assert "learning rate too high (--lr 1e-12)" in warning
        assert "init" in warning and "--init kaiming" in warning
        assert "ReLUs before global average pooling (--no-relu-before-gap)" in warning


def test_a_learning_run_gives_no_stuck_warning(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    log = Log()
    fit(small_config(tmp_path / "run", dataset="folder", root=str(data), image_size=16, batch_size=4,
                     train_subset=0, test_subset=0, epochs=2), log=log)

    assert len(log.matching(r"^epoch \d/2")) == 2
    assert not log.matching("still at chance")


def test_no_stuck_warning_during_the_warm_up(tmp_path, fashion_mnist_root):
    """The same vanishing learning rate; epoch 1 (4 steps) ends inside the 5-step warm-up, where a slow start
    is expected: the warnings begin with epoch 2."""
    log = Log()
    fit(small_config(tmp_path / "run", lr=1e-12, label_smoothing=0.0, epochs=5, warmup_epochs=1.25,
                     train_subset=256, width=1.0), log=log)
    warned = [int(re.search(r"epoch (\d)", w).group(1)) for w in log.matching(r"^warning: after epoch")]
    assert warned == [2, 3, 4, 5]
