"""nin.tblog: TensorBoard scalars when tensorboard is installed, a silent no-op when it is not."""
import sys

from nin.tblog import TensorBoardLog, tag

ROW = dict(epoch=1, step=40, train_loss=0.9, train_acc=0.7, test_loss=1.1, test_acc=0.65, lr=0.05, seconds=3.2)


def test_epoch_rows_become_grouped_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLog(tmp_path / "tb") as log:
        assert log.active
        log.log_epoch(ROW, step=40)
        log.log_epoch({**ROW, "epoch": 2, "train_loss": 0.5}, step=80)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["accuracy/test", "accuracy/train", "loss/test", "loss/train",
                                                "lr", "seconds"]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss/train")] == [(40, 0.9), (80, 0.5)]


def test_without_tensorboard_it_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import now fails
    log = TensorBoardLog(tmp_path / "tb")
    assert not log.active
    log.log_epoch(ROW, step=1)
    log.close()
    assert not (tmp_path / "tb").exists()
    assert not TensorBoardLog(tmp_path / "off", enabled=False).active


def test_tags():
    assert [tag(k) for k in ("train_loss", "test_acc", "lr", "seconds", "train")] == \
        ["loss/train", "accuracy/test", "lr", "seconds", "train"]
