"""`nin eval --report DIR`: confusion matrix, per-class accuracy and confused pairs as CSV and PNG,
top-k accuracy, flip test-time augmentation, and the report's arithmetic on any confusion matrix."""
import csv
import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import nin
from nin.cli import main
from nin.data import load_dataset
from nin.evaluate import evaluate, tta_logits, tta_mode
from nin.report import confused_pairs, per_class
from tiny_run import CLASSES, train_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("report"))


def eval_json(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_eval_report_writes_the_csvs_and_pngs(run, tmp_path, capsys):
    report = eval_json(capsys, run, "--report", tmp_path / "report")
    n = report["n"]
    assert n == 9 and report["tta"] is False
    assert set(report["topk"]) == {"1", "3"}  # top-5 of 3 classes is top-3, which is always right
    assert report["topk"]["1"] == pytest.approx(report["accuracy"]) and report["topk"]["3"] == 1.0
    assert set(report["report"]) == {"confusion.csv", "confusion.png", "per_class.csv", "per_class.png",
                                     "confused_pairs.csv", "metrics.json"}
    folder = tmp_path / "report"

    confusion = read_csv(folder / "confusion.csv")
    assert confusion[0] == ["true \\ predicted", *CLASSES] and [row[0] for row in confusion[1:]] == list(CLASSES)
    counts = [[int(v) for v in row[1:]] for row in confusion[1:]]
    assert [sum(row) for row in counts] == [3, 3, 3]
    assert sum(counts[i][i] for i in range(3)) == report["correct"]

    rows = read_csv(folder / "per_class.csv")
    assert rows[0] == ["class", "images", "correct", "accuracy", "most_confused_with", "confused_count"]
    for row, name in zip(rows[1:], CLASSES):
        assert row[0] == name and float(row[3]) == pytest.approx(report["per_class"][name], abs=1e-5)

    pairs = read_csv(folder / "confused_pairs.csv")
    assert pairs[0] == ["rank", "true", "predicted", "count", "share"]
    assert sum(int(p[3]) for p in pairs[1:]) == n - report["correct"]
    assert report["confused_pairs"] == confused_pairs(counts, list(CLASSES))[:10]

    assert json.loads((folder / "metrics.json").read_text())["accuracy"] == report["accuracy"]
    for name in ("confusion.png", "per_class.png"):
        with Image.open(folder / name) as image:
            image.verify()
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            assert 300 <= image.width <= 3000 and 200 <= image.height <= 3000
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


def test_eval_text_output_has_top_k_and_the_most_confused_pairs(run, capsys):
    assert main(["eval", str(run), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "top-2 accuracy" in out and ("most confused:" in out or "no confusions" in out)


def test_flip_tta_averages_each_image_with_its_mirror(run, capsys):
    report = eval_json(capsys, run, "--tta")
    assert report["tta"] == "flip"
    trained = nin.load(run)
    data = load_dataset("folder", trained.info.training["root"], "test", image_size=16, channels=3)
    with torch.no_grad():
        images = trained.info.normalize()(data.images)
        logits = (trained(images) + trained(images.flip(3))) / 2
    expected = (logits.argmax(1) == data.labels).float().mean().item()
    assert report["accuracy"] == pytest.approx(expected)
    plain = eval_json(capsys, run)
    assert plain["loss"] != pytest.approx(report["loss"])  # the mirror images changed the logits


def test_shift_tta_weighs_the_image_half_and_its_one_pixel_moves_a_quarter_each():
    seen = []

    class Recorder(torch.nn.Module):  # logits: the sum of each view's pixels, in class 0
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(x.clone())
            return torch.stack([x.sum(dim=(1, 2, 3)), torch.zeros(len(x))], dim=1)

    images = torch.arange(16.0).view(1, 1, 4, 4)
    logits = tta_logits(Recorder(), images, "shift")
    assert [view.shape for view in seen] == [(1, 1, 4, 4)] * 3
    assert torch.equal(seen[1][0, 0, 1:, 1:], images[0, 0, :-1, :-1])  # moved one pixel down and right
    assert torch.equal(seen[2][0, 0, :-1, :-1], images[0, 0, 1:, 1:])  # and one pixel up and left
    assert torch.equal(seen[1][0, 0, 0], torch.tensor([5.0, 4, 5, 6]))  # the edge reflected
    expected = 0.5 * images.sum() + 0.25 * (seen[1].sum() + seen[2].sum())
    assert logits[0, 0].item() == pytest.approx(expected.item())
    seen.clear()
    tta_logits(Recorder(), images, "flip-shift")
    assert len(seen) == 6 and torch.equal(seen[3], images.flip(3))


def test_shift_tta_is_offered_where_flips_are_not(run, capsys):
    report = eval_json(capsys, run, "--tta", "shift")
    flipped = eval_json(capsys, run, "--tta", "flip-shift")
    plain = eval_json(capsys, run)
    assert report["tta"] == "shift" and flipped["tta"] == "flip-shift"
    assert len({report["loss"], flipped["loss"], plain["loss"]}) == 3  # each mode saw other views
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_mode("mirror")
    with pytest.raises(SystemExit) as stopped:
        main(["eval", str(run), "--tta", "mirror"])
    assert stopped.value.code == 2 and "invalid choice: 'mirror'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "mnist", "--tta"], "--tta flip is not offered for MNIST"),
    (["--dataset", "svhn", "--tta", "flip-shift"], "--tta flip is not offered for SVHN"),
    (["--topk", "0"], "--topk must be 1 or more"),
])
def test_eval_errors_are_one_line_with_exit_code_2(run, argv, message, capsys):
    assert main(["eval", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_report_without_matplotlib_is_a_clear_error_before_any_work(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["eval", str(run), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'network-in-network[report]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_evaluate_counts_top_k_hits_exactly():
    class Logits(torch.nn.Module):  # the "images" are the logits
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0],   # label 0: top-1
                           [3.0, 2.0, 1.0, 0.0],   # label 1: top-2
                           [3.0, 2.0, 1.0, 0.0],   # label 3: top-4 only
                           [0.0, 1.0, 2.0, 3.0]])  # label 2: top-2
    labels = torch.tensor([0, 1, 3, 2])
    metrics = evaluate(Logits(), [(logits[:2], labels[:2]), (logits[2:], labels[2:])], list("abcd"), topk=(1, 2, 9))
    assert metrics["topk"] == {"1": 0.25, "2": 0.75, "4": 1.0}
    assert metrics["accuracy"] == 0.25 and "tta" not in metrics


@st.composite
def confusion_matrices(draw):
    n = draw(st.integers(1, 6))
    return draw(st.lists(st.lists(st.integers(0, 50), min_size=n, max_size=n), min_size=n, max_size=n))


@settings(max_examples=60, deadline=None)
@given(confusion_matrices())
def test_report_tables_account_for_every_image(matrix):
    classes = [f"class{i}" for i in range(len(matrix))]
    pairs = confused_pairs(matrix, classes)
    off_diagonal = sum(v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j)
    assert sum(p["count"] for p in pairs) == off_diagonal and all(p["count"] > 0 for p in pairs)
    assert [p["count"] for p in pairs] == sorted((p["count"] for p in pairs), reverse=True)
    assert all(p["true"] != p["predicted"] and 0 < p["share"] <= 1 for p in pairs)
    rows = per_class(matrix, classes)
    assert [r["images"] for r in rows] == [sum(row) for row in matrix]
    assert sum(r["correct"] for r in rows) == sum(matrix[i][i] for i in range(len(matrix)))
    for row, counts, index in zip(rows, matrix, range(len(matrix))):
        others = [v for j, v in enumerate(counts) if j != index]
        assert row["confused_count"] == max(others, default=0)
        assert (row["most_confused_with"] == "") == (row["confused_count"] == 0)


class FixedLogits(torch.nn.Module):
    """A 'model' that returns given logits whatever the images (one row per image, in order)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.weight = logits, torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return self.logits[: len(images)]


def test_top1_accuracy_equals_the_accuracy_when_logits_tie():
    """ReLU'd class maps (the paper's network) give several classes logit 0: top-1 must break the tie as
    argmax does (the first class), or `nin eval` reports two different top-1 accuracies."""
    logits = torch.zeros(4, 10)  # all ten classes tied: argmax says class 0
    logits[2, 3] = logits[2, 7] = 1.0  # a tie between 3 and 7: argmax says 3
    logits[3, 9] = 2.0
    labels = torch.tensor([0, 5, 3, 9])
    metrics = evaluate(FixedLogits(logits), [(torch.zeros(4, 1, 2, 2), labels)], [str(c) for c in range(10)],
                       topk=(1, 2))
    assert metrics["accuracy"] == metrics["topk"]["1"] == 0.75
    assert metrics["topk"]["2"] == 0.75  # class 5 ranks behind class 0 and the other ties
