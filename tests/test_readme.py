"""The README's Python example runs as it is written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```\s*<!-- /python-example -->",
                      README.read_text(), re.S)
    assert block, "README.md lost its python-example block"
    return block.group(1)


def test_the_readme_python_example_trains_evaluates_and_exports(tmp_path, monkeypatch, fashion_mnist_root, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.5  # 64 steps lift it far above chance (0.1)
    assert (tmp_path / "fmnist-nin.onnx").is_file() and (tmp_path / "fmnist-nin.json").is_file()
