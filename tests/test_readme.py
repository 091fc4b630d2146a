"""The README runs as it is written: its Python example, and every command of its shell blocks (shortened
where it would train for minutes: fewer epochs and images, as the table below says), on a small image folder,
its archive and a few image files in a scratch folder."""
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nin.cli import main as nin
from tiny_run import write_folder_dataset

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def shortened(words: list[str]) -> list[str]:
    """What a README command gets appended so that it runs in seconds (it is otherwise run as written)."""
    if words[:2] == ["nin", "train"] and "--epochs" not in words:
        return ["--epochs", "1"]
    if words[:2] == ["nin", "reproduce"] and "--list" not in words:  # argparse: the last --seeds wins
        return ["--seeds", "1", "--epochs", "1", "--train-subset", "256", "--test-subset", "256"]
    return []


def readme_example() -> str:
    block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```\s*<!-- /python-example -->",
                      README.read_text(), re.S)
    assert block, "README.md lost its python-example block"
    return block.group(1)


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; at most 150 (the rest belongs in docs/)"


def test_the_readme_python_example_trains_evaluates_and_exports(tmp_path, monkeypatch, fashion_mnist_root, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.5  # 64 steps lift it far above chance (0.1)
    assert (tmp_path / "fmnist-nin.onnx").is_file() and (tmp_path / "fmnist-nin.json").is_file()
    assert (tmp_path / "fmnist-weights.safetensors").is_file()


@pytest.fixture
def readme_workdir(tmp_path, monkeypatch):
    """photos/ (train/ and test/ by class), photos.tar.gz of the same layout, cat.jpg and shirt.png."""
    photos = write_folder_dataset(tmp_path / "photos", train_per_class=40, test_per_class=5)
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(photos / split, arcname=split)
    Image.open(next((photos / "test" / "red").glob("*.png"))).convert("RGB").save(tmp_path / "cat.jpg")
    pixels = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "shirt.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_runs(readme_workdir, fashion_mnist_root, capsys):
    commands = readme_commands()
    assert any(c.startswith("nin train") for c in commands) and any(c.startswith("make ") for c in commands)
    for command in commands:
        words = shlex.split(command)
        if words[0] == "make":  # `make run`/`make test` set up a machine and train: checked as a dry run
            done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            continue
        assert words[0] == "nin", f"the README's command {command!r} is neither nin nor make: teach this test to run it"
        argv = words[1:] + shortened(words)
        code = nin(argv)
        out = capsys.readouterr()
        assert code == 0, f"{command} (run as nin {shlex.join(argv)}) exited {code}: {out.err[-2000:]}"
    assert (readme_workdir / "runs/photos/checkpoint.pt").is_file()
    assert (readme_workdir / "runs/archive/checkpoint.pt").is_file()
    assert (readme_workdir / "exports/photos.onnx").is_file() and (readme_workdir / "runs/photos/curves.png").is_file()
    assert (readme_workdir / "reports/photos/confusion.png").is_file() and any((readme_workdir / "figures").glob("*.png"))
