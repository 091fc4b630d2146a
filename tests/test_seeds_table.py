"""benchmarks/seeds_table.py, which gpu_seeds.sh ends with: a row per run folder and the mean of the
finished ones, read from real run folders."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tiny_run import train_tiny_run

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "seeds_table.py"


def test_the_table_has_a_row_per_run_and_averages_only_the_finished_ones(tmp_path):
    finished = train_tiny_run(tmp_path / "a", epochs=2)
    rows = list(csv.DictReader(open(finished / "metrics.csv", newline="")))
    cut_off = shutil.copytree(finished, tmp_path / "cut-off")  # stopped by a timeout after its first epoch
    with open(cut_off / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])

    result = subprocess.run([sys.executable, str(SCRIPT), str(finished), str(cut_off), str(tmp_path / "none")],
                            capture_output=True, text=True, check=True)

    accuracy = 100 * float(rows[-1]["test_acc"])
    assert f"| run | test | 2/2 | {accuracy:.2f}% |" in result.stdout
    assert "| cut-off | test | 1/2 |" in result.stdout
    assert f"mean of 1 finished run(s): {accuracy:.2f} ± 0.00%" in result.stdout
    assert f"no run in: {tmp_path / 'none'}" in result.stdout


def test_a_run_with_test_time_views_counts_its_final_result_and_names_them(tmp_path):
    run = train_tiny_run(tmp_path, tta="flip")
    final = json.loads((run / "final.json").read_text())

    result = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True)

    assert f"| run | test | 1/1 | {100 * final['accuracy']:.2f}% | flip |" in result.stdout


def test_without_a_run_folder_it_says_so_in_one_line_and_exits_2():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "error: the following arguments are required: RUN_DIR" in result.stderr.splitlines()[-1]
