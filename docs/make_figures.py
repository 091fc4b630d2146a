"""The documentation's pictures, made by the project's own commands from runs kept in results/ and the
shipped weights (nothing is trained): `make docs-figures` runs this, and the PNGs are committed in
docs/images/.

- curves-make-run.png: `nin plot` of results/make-run-bf16-tta/seed0 (a `make run` run)
- confusion.png, per-class.png: `nin eval --weights fashion-mnist --report` (the shipped model, fp32)
- fig4-*.png: `nin visualize` of the shipped model on Fashion-MNIST test images (the paper's figure 4)
- time-to-accuracy.png: results/time-to-accuracy/time-to-accuracy.log's table, drawn with nin.plotting
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from nin.cli import main as nin
from nin.data import load_dataset
from nin.plotting import new_figure

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
WEIGHTS = ROOT / "src" / "nin" / "weights" / "nin_mnist_bn-fashion-mnist.safetensors"
FIG4 = {"ankle-boot": "Ankle boot", "shirt": "Shirt", "bag": "Bag"}  # file stem: class of the test image


def run(*argv: str) -> None:
    code = nin([str(a) for a in argv])
    if code:
        sys.exit(f"nin {' '.join(argv)} failed with exit code {code}")


def time_to_accuracy(log: Path, out: Path) -> None:
    rows = re.findall(r"^\| (nin[^|]*|seed script[^|]*) \| ([\d.]+) \| ([\d.]+)% \|$", log.read_text(), re.M)
    figure = new_figure(6.4, 3.6)
    axes = figure.add_subplot()
    for label, who, style in (("nin, the fashion-mnist recipe", "nin", "o-"),
                              ("the seed's training script", "seed", "s--")):
        points = [(float(m), float(a)) for name, m, a in rows if name.startswith(who) and "result" not in name]
        axes.plot(*zip(*points), style, label=label)
    result = [(float(m), float(a)) for name, m, a in rows if "result" in name]
    axes.plot(*zip(*result), "*", markersize=14, label="nin, the result read with flips")
    axes.axhline(93.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set(xlabel="minutes of wall time (2-core AMD EPYC, bf16)", ylabel="test accuracy (%)", ylim=(0, 100),
             title="Time to 93% on Fashion-MNIST")
    axes.legend(loc="center right")
    figure.savefig(out)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    run("plot", ROOT / "results/make-run-bf16-tta/seed0", "--out", IMAGES / "curves-make-run.png")
    time_to_accuracy(ROOT / "results/time-to-accuracy/time-to-accuracy.log", IMAGES / "time-to-accuracy.png")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        test = load_dataset("fashion-mnist", None, "test")
        images = scratch / "fashion-mnist-test"  # the figure's title names the image by its folder and file
        images.mkdir()
        for stem, name in FIG4.items():
            index = int((test.labels == test.classes.index(name)).nonzero()[0])
            Image.fromarray(test.images[index, 0].numpy()).save(images / f"fig4-{stem}.png")
            run("visualize", WEIGHTS, images / f"fig4-{stem}.png", "--label", name, "--out", IMAGES,
                "--device", "cpu")
        run("eval", "--weights", "fashion-mnist", "--amp", "off", "--report", scratch / "report")
        shutil.copy(scratch / "report" / "confusion.png", IMAGES / "confusion.png")
        shutil.copy(scratch / "report" / "per_class.png", IMAGES / "per-class.png")


if __name__ == "__main__":
    main()
