"""Training on real Fashion-MNIST: it learns, it leaves a complete run folder, it resumes exactly."""
import csv
import json
import math

import pytest
import torch

from nin.checkpoint import load_checkpoint
from nin.config import TrainConfig
from nin.errors import NinError
from nin.hardware import cpu_has_native_bf16, use_bf16
from nin.train import ema_decay_at, fit, image_size_at, lr_at, resume_config, time_left


def small_config(out, **changes) -> TrainConfig:
    settings = dict(model="nin_mnist_bn", dataset="fashion-mnist", train_subset=2048, test_subset=1000,
                    epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5, label_smoothing=0.1,
                    progress=False, out=str(out))
    return TrainConfig(**{**settings, **changes})


# the tests of a run's mechanics (what it saves, resumes, refuses) train a quarter of the widths: a quarter of
# the time; those that check what a run learns keep the full network
NARROW = 0.25


def interrupt_after(line_start: str):
    def log(line: str) -> None:
        if line.startswith(line_start):
            raise KeyboardInterrupt
    return log


def test_a_short_run_learns_far_above_chance_and_leaves_a_run_folder(tmp_path, fashion_mnist_root):
    result = fit(small_config(tmp_path / "run"), log=lambda *_: None)

    assert result["accuracy"] > 0.55  # chance is 0.10; two epochs on 2,048 images reach about 0.65
    assert result["n"] == 1000 and result["run_dir"] == str(tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_subset"] == 2048
    final = json.loads((tmp_path / "run" / "final.json").read_text())  # the result, kept beside the metrics
    assert final["split"] == "test" and final["accuracy"] == result["accuracy"] and "tta" not in final


def test_checkpoint_holds_everything_evaluation_needs(tmp_path, fashion_mnist_root):
    fit(small_config(tmp_path, epochs=1, train_subset=256, width=NARROW), log=lambda *_: None)
    state = load_checkpoint(tmp_path)
    assert state["model_name"] == "nin_mnist_bn" and state["model_kwargs"]["num_classes"] == 10
    assert state["classes"][0] == "T-shirt/top" and state["input"] == {"size": 28, "channels": 1,
                                                                       "dataset": "fashion-mnist"}
    assert 0.2 < state["normalization"]["mean"][0] < 0.4  # Fashion-MNIST's mean pixel is about 0.286
    assert state["epoch"] == 1 and state["step"] == 4
    assert {"model", "optimizer", "rng", "config"} <= set(state)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file behind


def test_a_moving_average_of_the_weights_is_what_the_run_evaluates_and_exports(tmp_path, fashion_mnist_root,
                                                                                monkeypatch):
    import nin.train.loop  # the module whose names the run looks up
    from nin.inference import load

    evaluated = []
    real_evaluate = nin.train.loop.evaluate
    monkeypatch.setattr(nin.train.loop, "evaluate", lambda model, *a, **k: evaluated.append(
        model.features1[0].weight.detach().clone()) or real_evaluate(model, *a, **k))
    fit(small_config(tmp_path, epochs=1, train_subset=512, test_subset=256, ema=0.9, width=NARROW), log=lambda *_: None)

    state = load_checkpoint(tmp_path)
    assert state["ema_updates"] == state["step"] == 8
    weight = "features1.0.weight"
    assert not torch.equal(state["ema_model"][weight], state["model"][weight])
    assert torch.equal(evaluated[-1], state["ema_model"][weight])  # the run's test accuracy is the average's
    assert torch.equal(load(tmp_path).state_dict()[weight], state["ema_model"][weight])  # eval, export


def test_tta_gives_the_result_with_test_time_views_and_leaves_the_epochs_plain(tmp_path, fashion_mnist_root,
                                                                              monkeypatch):
    import nin.train.loop  # the module whose names the run looks up

    readings = []  # (tta mode, accuracy) of each evaluation, in order
    real_evaluate = nin.train.loop.evaluate

    def recorded(model, loader, classes, **options):
        metrics = real_evaluate(model, loader, classes, **options)
        readings.append((options.get("tta", ""), metrics["accuracy"]))
        return metrics

    monkeypatch.setattr(nin.train.loop, "evaluate", recorded)
    result = fit(small_config(tmp_path, train_subset=512, test_subset=256, tta="flip", width=NARROW),
                 log=lambda *_: None)

    assert [mode for mode, _ in readings] == ["", "", "flip"]  # each epoch plain, then the last one's flips
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert float(rows[-1]["test_acc"]) == pytest.approx(readings[1][1], abs=1e-6)  # metrics.csv stays plain
    final = json.loads((tmp_path / "final.json").read_text())
    assert result["tta"] == final["tta"] == "flip" and result["accuracy"] == final["accuracy"] == readings[2][1]


def test_a_result_that_cannot_be_written_is_one_error_and_the_checkpoint_stays(tmp_path, fashion_mnist_root):
    def block_the_result(line: str) -> None:  # after the last epoch's checkpoint, before the result is written
        if line.startswith("epoch "):
            (tmp_path / "final.json").mkdir()  # stands in for a full disk: the result's file cannot be replaced

    with pytest.raises(NinError, match="could not write .*final.json.*the trained checkpoint is intact"):
        fit(small_config(tmp_path, epochs=1, train_subset=256, test_subset=256, width=NARROW), log=block_the_result)
    assert load_checkpoint(tmp_path)["epoch"] == 1 and not (tmp_path / "final.json.tmp").exists()


def test_lookahead_moves_slow_weights_halfway_every_k_steps_and_restarts_the_model_from_them():
    from nin.train import Lookahead

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead = Lookahead(model, steps=2)
    with torch.no_grad():
        model.weight.fill_(3.0)  # a training step
    lookahead.after_step(1, total_steps=5)
    assert model.weight.eq(3.0).all() and lookahead.slow["weight"].eq(1.0).all()  # between syncs: untouched
    lookahead.after_step(2, total_steps=5)
    assert model.weight.eq(2.0).all() and lookahead.slow["weight"].eq(2.0).all()  # halfway, and back to slow
    with torch.no_grad():
        model.weight.fill_(4.0)
    lookahead.after_step(5, total_steps=5)  # the run's last step syncs too
    assert model.weight.eq(3.0).all()


def test_identity_init_and_lookahead_reach_the_run(tmp_path, fashion_mnist_root, monkeypatch):
    import nin.train.loop  # the module whose names the run looks up

    started, synced = [], []
    real_init, real_after_step = nin.train.loop.identity_init, nin.train.Lookahead.after_step
    monkeypatch.setattr(nin.train.loop, "identity_init", lambda model: started.append(model) or real_init(model))
    monkeypatch.setattr(nin.train.Lookahead, "after_step",
                        lambda self, step, total: synced.append(step) or real_after_step(self, step, total))
    result = fit(small_config(tmp_path, epochs=1, train_subset=256, test_subset=256, identity_init=True,
                              lookahead=5, width=NARROW), log=lambda *_: None)

    assert len(started) == 1 and synced == [1, 2, 3, 4]  # 256 images / 64: the last step (4) syncs
    assert load_checkpoint(tmp_path)["lookahead_slow"].keys() <= load_checkpoint(tmp_path)["model"].keys()
    assert 0.0 <= result["accuracy"] <= 1.0


def test_frozen_batchnorm_scales_stay_at_one_and_the_biases_take_their_own_learning_rate(tmp_path,
                                                                                        fashion_mnist_root):
    fit(small_config(tmp_path, epochs=1, train_subset=256, freeze_bn_scales=True, bn_bias_lr=4.0,
                     width=NARROW),
        log=lambda *_: None)
    state = load_checkpoint(tmp_path)
    norms = [name[:-len(".weight")] for name, tensor in state["model"].items()
             if name.endswith(".weight") and tensor.ndim == 1]
    assert norms  # nin_mnist_bn's BatchNorm layers
    for norm in norms:
        assert torch.equal(state["model"][f"{norm}.weight"], torch.ones_like(state["model"][f"{norm}.weight"]))
        assert state["model"][f"{norm}.bias"].abs().sum() > 0  # trained
    decayed, other, bn_biases = state["optimizer"]["param_groups"]
    assert bn_biases["lr_scale"] == 4.0 and bn_biases["lr"] == pytest.approx(4 * decayed["lr"])
    assert len(bn_biases["params"]) == len(norms)
    trained = len(decayed["params"]) + len(other["params"]) + len(bn_biases["params"])
    assert trained == len(state["model"]) - 4 * len(norms)  # all but the scales and the 3 buffers of each norm


def test_flip_alternate_reaches_the_training_loader(tmp_path, fashion_mnist_root):
    from nin.train import prepare_data

    data = prepare_data(small_config(tmp_path, flip="alternate", train_subset=256), torch.device("cpu"))
    assert data.train.flip and data.train.alternate_flips and not data.test.flip


def test_the_average_starts_short_and_grows_to_its_decay():
    assert [round(ema_decay_at(step, 0.999), 3) for step in (0, 10, 90, 10_000)] == [0.1, 0.55, 0.91, 0.999]
    assert ema_decay_at(10_000, 0.9) == 0.9


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, fashion_mnist_root):
    # bits compared: one precision anywhere
    settings = dict(train_subset=512, test_subset=128, epochs=3, amp="off", width=NARROW)
    fit(small_config(tmp_path / "straight", **settings), log=lambda *_: None)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C right after epoch 1's checkpoint
        fit(small_config(tmp_path / "stopped", **settings), log=interrupt_after("epoch 1/3"))
    fit(resume_config(str(tmp_path / "stopped"), {}), resume=str(tmp_path / "stopped"), log=lambda *_: None)

    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert resumed["epoch"] == 3 and resumed["step"] == straight["step"]
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    rows = list(csv.DictReader(open(tmp_path / "stopped" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_resume_refuses_to_change_the_recipe(tmp_path, fashion_mnist_root):
    fit(small_config(tmp_path, epochs=1, train_subset=128, width=NARROW), log=lambda *_: None)
    with pytest.raises(NinError, match="only --epochs"):
        resume_config(str(tmp_path), {"lr": 0.5})


def test_a_new_run_never_overwrites_an_old_one(tmp_path, fashion_mnist_root):
    fit(small_config(tmp_path, epochs=1, train_subset=128, width=NARROW), log=lambda *_: None)
    with pytest.raises(NinError, match="already holds a run"):
        fit(small_config(tmp_path, epochs=1, train_subset=128), log=lambda *_: None)


def test_a_diverging_run_stops_with_the_step_and_learning_rate(tmp_path, fashion_mnist_root):
    config = small_config(tmp_path, model="nin_mnist", epochs=1, train_subset=512, lr=1e6, warmup_epochs=0,
                          schedule="constant", width=NARROW)
    with pytest.raises(NinError, match=r"non-finite by step \d+ .*lr 1e\+06"):
        fit(config, log=lambda *_: None)


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(lr=0.2, epochs=10, warmup_epochs=1, schedule="cosine")
    total = 1000
    lrs = [lr_at(step, total, config) for step in range(total)]
    assert lrs[0] == pytest.approx(0.02)
    assert max(lrs) == pytest.approx(0.2, rel=1e-3) and lrs.index(max(lrs)) == 100
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[-1] < 1e-5
    step = TrainConfig(lr=0.1, epochs=10, warmup_epochs=0, schedule="step", step_milestones=[0.5, 0.75])
    assert [lr_at(s, total, step) for s in (0, 600, 900)] == pytest.approx([0.1, 0.01, 0.001])
    assert math.isclose(lr_at(500, total, TrainConfig(lr=0.1, epochs=10, warmup_epochs=0, schedule="linear")),
                        0.05)


@pytest.mark.parametrize("kind", ["gcn_zca", "lcn"])
def test_the_papers_preprocessing_is_fitted_saved_and_applied_at_evaluation(tmp_path, kind):
    from nin.inference import evaluate_trained, load
    from tiny_run import write_folder_dataset

    data = write_folder_dataset(tmp_path / "data", train_per_class=6)
    config = TrainConfig(model="nin_mnist", dataset="folder", root=str(data), image_size=16, epochs=2,
                         batch_size=6, device="cpu", progress=False, out=str(tmp_path / "run"), preprocess=kind)
    with pytest.raises(KeyboardInterrupt):
        fit(config, log=interrupt_after("epoch 1/2"))
    fit(resume_config(str(tmp_path / "run"), {}), resume=str(tmp_path / "run"), log=lambda *_: None)

    trained = load(tmp_path / "run")
    assert trained.info.normalize().kind == kind
    images = load_dataset_images(data)
    expected = type(trained.info.normalize()).fit(images)(images[:4]) if kind == "gcn_zca" else None
    if expected is not None:  # the saved transform is the one fitted on the training images
        torch.testing.assert_close(trained.info.normalize()(images[:4]), expected)
    assert evaluate_trained(trained)["n"] == 9


def load_dataset_images(root):
    from nin.data import load_dataset

    return load_dataset("folder", root, "train", image_size=16, channels=3).images


def test_amp_bf16_on_cpu_runs_the_convolutions_in_bfloat16_and_still_learns(tmp_path, fashion_mnist_root,
                                                                          monkeypatch):
    dtypes, original = set(), torch.nn.Conv2d.forward

    def recording_forward(self, x):
        output = original(self, x)
        if output.device.type != "meta":  # not the memory estimate's shape-only pass
            dtypes.add(output.dtype)
        return output

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording_forward)
    native = cpu_has_native_bf16()  # elsewhere bf16 is emulated, minutes for this run: the dtypes only, on 2 steps
    shorter = {} if native else dict(epochs=1, train_subset=64, test_subset=64)
    result = fit(small_config(tmp_path, **{"test_subset": 256, **shorter}, amp="bf16", device="cpu"),
                 log=lambda *_: None)
    assert dtypes == {torch.bfloat16}
    if native:
        assert result["accuracy"] > 0.5  # fp32: about 0.66 (bf16 measured the same)



def test_amp_auto_is_bf16_on_cuda_and_on_cpus_that_multiply_bf16_natively(tmp_path, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for flags, native in (("fpu avx2 fma", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False

    for native in (False, True):
        monkeypatch.setattr("nin.hardware.cpu_has_native_bf16", lambda: native)
        assert use_bf16("auto", cpu) is native
        assert use_bf16("bf16", cpu) and not use_bf16("off", cpu)
        assert use_bf16("auto", cuda) and not use_bf16("off", cuda)


def test_progressive_resizing_grows_the_images_to_full_size_for_the_last_quarter_of_the_epochs():
    assert [image_size_at(epoch, 8, 16, 28) for epoch in range(8)] == [16, 18, 20, 22, 24, 26, 28, 28]
    assert [image_size_at(epoch, 4, 12, 28) for epoch in range(4)] == [12, 17, 23, 28]
    assert [image_size_at(epoch, 1, 12, 28) for epoch in range(1)] == [28]  # one epoch: at full size
    assert [image_size_at(epoch, 5, 0, 28) for epoch in range(5)] == [28] * 5  # off


def test_the_time_left_scales_the_last_epoch_by_the_cost_of_each_epoch_to_come():
    resized = TrainConfig(epochs=4, progressive_resize=14)  # sides 14, 19, 23, 28: costs 1/4, 0.46, 0.67, 1
    assert time_left(1, 10.0, 0.0, resized, 28) == "  about 85s left"  # 10 s / (1/4) x (0.46 + 0.67 + 1)
    assert time_left(3, 100.0, 0.0, resized, 28) == "  about 2 min left"  # 100 s / 0.67 x 1 = 148 s
    assert time_left(4, 100.0, 0.0, resized, 28) == ""  # the run's end
    assert time_left(1, 60.0, 0.0, TrainConfig(epochs=11), 28) == "  about 10 min left"  # full size throughout


def test_the_time_left_counts_an_evaluation_only_in_the_epochs_that_evaluate():
    every_epoch, every_fifth = TrainConfig(epochs=11, eval_every=1), TrainConfig(epochs=11, eval_every=5)
    assert time_left(1, 50.0, 10.0, every_epoch, 28) == "  about 10 min left"  # 10 x (50 + 10) s
    assert time_left(1, 50.0, 10.0, every_fifth, 28) == "  about 9 min left"  # 10 x 50 + 3 x 10 (5, 10, 11)
    resized = TrainConfig(epochs=4, progressive_resize=14, eval_every=1)
    assert time_left(1, 10.0, 8.0, resized, 28) == "  about 2 min left"  # (40 + 8) s x (0.46 + 0.67 + 1)


def test_a_progressively_resized_run_trains_and_tests_small_then_at_full_size(tmp_path, fashion_mnist_root,
                                                                           monkeypatch):
    import nin.train.loop  # the module whose names the run looks up

    evaluated_sizes, real_evaluate = [], nin.train.loop.evaluate

    def evaluate(model, loader, *args, **kwargs):
        evaluated_sizes.append(next(iter(loader))[0].shape[-1])
        return real_evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(nin.train.loop, "evaluate", evaluate)
    lines = []
    result = fit(small_config(tmp_path, epochs=3, train_subset=512, progressive_resize=14, eval_every=1),
                 log=lines.append)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert ["  at 14px  about" in epochs[0], "  at 21px  about" in epochs[1]] == [True, True]
    assert "px" not in epochs[2] and "left" not in epochs[2]  # the last epoch at the stored 28 pixels
    assert result["n"] == 1000 and result["accuracy"] > 0.3
    # each epoch is tested at its training size, the last (the run's result) at full size
    assert evaluated_sizes == [14, 21, 28]
