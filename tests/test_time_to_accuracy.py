"""benchmarks/time_to_accuracy.py's data options: a wrong combination is refused before anything trains."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


@pytest.mark.parametrize("argv", [["--dataset", "folder"],  # a folder needs its root
                                  ["--root", "images.tar.gz"],  # a root is for a folder
                                  ["--dataset", "cifar10", "--root", "data"]])  # the seed side reads these two only
def test_a_wrong_data_option_is_refused_with_exit_2_and_nothing_written(tmp_path, argv):
    result = subprocess.run([sys.executable, str(SCRIPT), *argv, "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--dataset fashion-mnist, or --dataset folder with --root" in result.stderr
    assert not (tmp_path / "run").exists()
