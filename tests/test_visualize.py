"""`nin visualize` (the paper's figure 4: category confidence maps) and `nin plot` (learning curves), on a
real tiny training run; and the property figure 4 rests on: each logit is the mean of its class's map."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nin
from nin.card import ModelInfo
from nin.cli import main
from nin.config import TrainConfig
from nin.data import Normalize, load_image
from nin.errors import NinError
from nin.models import create_model
from nin.train import fit
from nin.rundir import read_metrics
from nin.visualize import _evaluated, confidence_maps, true_label, visualize_files
from tiny_run import CLASSES, train_tiny_run, write_folder_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("visualize"))


@pytest.fixture(scope="module")
def test_images(run):
    """ROOT/test/CLASS/N.png of the run's folder data set (20x20 RGB, the model takes 16x16)."""
    return sorted((run.parent / "data" / "test").glob("*/*.png"))


def check_png(path, min_width=500, max_width=2500, min_height=200, max_height=1500):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min_width <= image.width <= max_width and min_height <= image.height <= max_height, image.size
        assert len(np.unique(np.asarray(image.convert("L")))) > 20  # something was drawn


def test_each_logit_is_the_mean_of_its_category_confidence_map(run, test_images):
    trained = nin.load(run)
    for path in test_images:
        image = load_image(path, trained.info.size, trained.info.channels)
        raw, probabilities = confidence_maps(trained, image, upsample=False)
        assert raw.shape == (3, 4, 4)  # 16x16 input, two 3x3/2 poolings
        with torch.no_grad():
            logits = trained(trained.info.normalize()(image.unsqueeze(0)))[0]
        torch.testing.assert_close(raw.mean(dim=(1, 2)), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(probabilities, logits.softmax(dim=0), rtol=0, atol=1e-6)
        maps, same = confidence_maps(trained, image)
        assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32 and torch.equal(same, probabilities)
        # bilinear upsampling interpolates: it never leaves the range of the network's own map
        assert (maps.amin(dim=(1, 2)) >= raw.amin(dim=(1, 2)) - 1e-6).all()
        assert (maps.amax(dim=(1, 2)) <= raw.amax(dim=(1, 2)) + 1e-6).all()


def test_visualize_writes_one_png_per_image_named_after_it(run, test_images, tmp_path, capsys):
    red0, blue0, green1 = (run.parent / "data" / "test" / c / n for c, n in
                           (("red", "0.png"), ("blue", "0.png"), ("green", "1.png")))
    out = tmp_path / "figures"
    assert main(["visualize", str(run), str(red0), str(blue0), str(green1), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # two images named 0.png: their folders' names keep the PNGs apart
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "blue_0.png", "red_0.png"]
    for line, name, truth in zip(lines, ("red_0.png", "blue_0.png", "1.png"), ("red", "blue", "green")):
        assert line.startswith(str(out / name) + ": predicted ") and line.endswith(f", true {truth}")
    for path in out.iterdir():
        check_png(path)


def test_the_true_class_comes_from_label_or_the_images_folder(run, test_images, tmp_path, capsys):
    trained = nin.load(run)
    assert true_label(test_images[0], list(CLASSES)) == test_images[0].parent.name
    assert true_label(tmp_path / "x.png", list(CLASSES)) is None
    assert true_label(test_images[0], list(CLASSES), "green") == "green"
    results = visualize_files(trained, [str(test_images[0])], tmp_path / "a", label="green")
    assert results[0].label == "green" and results[0].shown == list(CLASSES)  # 3 classes: all, in class order
    assert main(["visualize", str(run), str(test_images[0]), "--label", "purple", "--out", str(tmp_path)]) == 2
    assert "--label 'purple' is not one of the model's classes: blue, green, red" in capsys.readouterr().err


def test_many_classes_show_the_ten_most_probable_maps(tmp_path):
    torch.manual_seed(0)
    classes = [f"class {i}" for i in range(25)]
    model = create_model("nin_mnist", num_classes=25).eval()
    model.info = ModelInfo("nin_mnist", {"num_classes": 25}, classes, 28, 1, dataset="folder",
                           preprocess=Normalize([0.5], [0.25]))
    trained = model
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "digit.png"
    Image.fromarray(image.numpy()).save(path)
    _, probabilities = confidence_maps(trained, load_image(path, 28, 1))
    (result,) = visualize_files(trained, [str(path)], tmp_path / "out")
    expected = [classes[i] for i in probabilities.argsort(descending=True)[:10]]
    assert result.shown == expected and result.predicted == expected[0] and result.label is None
    check_png(result.path)


def test_a_fully_connected_head_has_no_category_maps(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data")
    run = tmp_path / "fc-run"
    fit(TrainConfig(model="nin_mnist_bn", head="fc", dataset="folder", root=str(data), image_size=16, epochs=1,
                    batch_size=4, eval_batch_size=8, device="cpu", progress=False, out=str(run), seed=0),
        log=lambda *_: None)
    trained = nin.load(run)
    image = load_image(data / "test" / "red" / "0.png", 16, 3)
    with pytest.raises(NinError, match="fully connected head .* no category confidence maps"):
        confidence_maps(trained, image)
    assert main(["visualize", str(run), str(data / "test" / "red" / "0.png"), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: this model has a fully connected head (head='fc')") and err.count("\n") == 1
    assert not (tmp_path / "v").exists()


def test_plot_draws_the_learning_curves_of_a_run(run, tmp_path, capsys):
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'curves.png'}"
    check_png(run / "curves.png", min_width=1000)
    assert main(["plot", str(run / "metrics.csv"), "--out", str(tmp_path / "deep" / "c.png")]) == 0
    check_png(tmp_path / "deep" / "c.png", min_width=1000)


def test_plot_draws_the_test_curve_through_the_evaluated_epochs_only(tmp_path):
    rows = ["1,4,2.0,0.3,,,0.1,1", "2,8,1.5,0.5,,,0.1,1", "3,12,1.2,0.6,1.1,0.62,0.05,1", "4,16,1.0,0.7,0.9,0.7,0,1"]
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,train_acc,test_loss,test_acc,lr,seconds\n"
                                          + "\n".join(rows) + "\n")  # --eval-every 3: epochs 3 and 4 evaluated
    assert _evaluated(read_metrics(tmp_path)[1], "test_acc") == ([3.0, 4.0], [0.62, 0.7])
    assert main(["plot", str(tmp_path)]) == 0
    check_png(tmp_path / "curves.png", min_width=1000)


def test_plot_names_the_file_it_writes_and_refuses_formats_it_cannot(run, tmp_path, capsys):
    assert main(["plot", str(run), "--out", str(tmp_path / "curves")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}"
    check_png(tmp_path / "curves.png", min_width=1000)
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.xyz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: cannot write a plot as .xyz: use .png, .pdf, .svg") and err.count("\n") == 1


@pytest.mark.parametrize("content,message", [
    (None, "no metrics.csv at"),
    ("", "is empty: the run has not finished an epoch yet"),
    ("epoch,step,train_loss,train_acc,test_loss,test_acc,lr,seconds\n", "has no rows: the run has not finished"),
    ("epoch,loss\n1,0.5\n", "lacks the columns step, train_loss"),
    ("epoch,step,train_loss,train_acc,test_loss,test_acc,lr,seconds\n1,2,x,0,0,0,0,0\n", "line 2: a value is not"),
])
def test_plot_refuses_a_missing_or_empty_metrics_file_in_one_line(content, message, tmp_path, capsys):
    if content is not None:
        (tmp_path / "metrics.csv").write_text(content)
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("command", ["visualize", "plot"])
def test_without_matplotlib_both_commands_fail_clearly_before_any_work(command, run, test_images, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    argv = [str(run), str(test_images[0]), "--out", str(tmp_path / "v")] if command == "visualize" else [str(run)]
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert f"nin {command} draws its pictures with matplotlib" in err and "network-in-network[report]" in err
    assert not (tmp_path / "v").exists()
