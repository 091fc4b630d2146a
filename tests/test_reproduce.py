"""`nin reproduce`: every row of the paper is a recipe, and every recipe trains on its real file format."""
import json
from pathlib import Path

import pytest

from nin.cli import main
from nin.reproduce import _command, _verdict, all_rows as paper_rows_and_best, paper_rows, select_rows
from formats import write_cifar10, write_cifar100, write_mnist, write_svhn

PAPER = {"table1-dropout": 10.41, "table1-dropout-aug": 8.81, "table2": 35.68, "table3": 2.35, "table4": 0.47,
         "table5-fc": 11.59, "table5-fc-dropout": 10.88, "table5-gap": 10.41, "sec4.6-fc": 17.56,
         "sec4.6-fc-dropout": 15.99, "sec4.6-gap": 16.46, "fig3-no-dropout": 14.51}
TINY = ["--epochs", "1", "--train-subset", "16", "--test-subset", "8", "--batch-size", "8", "--device", "cpu"]
NARROW = ["--width", "0.25"]  # where every recipe trains: what is checked is that each runs, at a quarter of the time


def test_list_shows_every_row_of_the_paper_with_its_number(capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    for row, error in PAPER.items():
        assert row in listing and f"{error:.2f}%" in listing
    assert {name: recipe.paper_error for name, recipe in paper_rows().items()} == PAPER


def test_targets_select_groups_rows_or_everything():
    assert select_rows("table1") == ["table1-dropout", "table1-dropout-aug"]
    assert select_rows("sec4.6") == ["sec4.6-fc", "sec4.6-fc-dropout", "sec4.6-gap"]
    assert select_rows("table3") == ["table3"] and len(select_rows("all")) == 12


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory):
    """CIFAR-10, CIFAR-100, SVHN (train, extra, test) and MNIST in their real on-disk formats."""
    root = tmp_path_factory.mktemp("paper-data")
    write_cifar10(root, n=4)  # 5 batches of 4 = 20 training images
    write_cifar100(root, n=20)
    for split in ("train", "extra", "test"):
        write_svhn(root, split, n=10)
    write_mnist(root / "MNIST" / "raw", n=20)
    return root


def test_every_recipe_trains_a_few_steps_and_lands_in_results_md(paper_data, tmp_path, capsys):
    assert main(["reproduce", "all", "--root", str(paper_data), "--out", str(tmp_path), *TINY, *NARROW]) == 0
    table = (tmp_path / "results.md").read_text()
    for row, error in PAPER.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
        assert f"{error:.2f}%" in line and str(tmp_path / row / "seed0") in line
        assert (tmp_path / row / "seed0" / "checkpoint.pt").is_file()
    assert "hardware:" in table


def test_a_missing_data_set_stops_before_any_training(paper_data, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["reproduce", "table1", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 *TINY]) == 2
    assert "CIFAR-10 not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reproduce_needs_a_target(capsys):
    assert main(["reproduce"]) == 2
    assert "needs a TARGET" in capsys.readouterr().err


BEST = {"cifar10-best": 7.43, "cifar10-best-bn": 7.43, "cifar100-best": 28.39, "cifar100-best-bn": 28.39,
        "svhn-best": 2.35, "svhn-best-bn": 2.35, "mnist-best": 0.47, "mnist-best-bn": 0.47,
        "fashion-mnist-best": 5.0, "fashion-mnist-best-bn": 5.0}


def test_best_known_recipes_come_in_pairs_faithful_and_batchnorm_with_their_targets(capsys):
    assert select_rows("best") == sorted(BEST)
    for name, error in BEST.items():
        recipe = paper_rows_and_best()[name]
        assert recipe.target_error == error and not recipe.paper
        assert recipe.model.endswith("_bn") == name.endswith("-bn")  # BatchNorm only in the -bn variant
    assert main(["reproduce", "--list"]) == 0
    assert "cifar10-best-bn" in capsys.readouterr().out


def test_every_best_known_recipe_trains_a_few_steps(paper_data, fashion_mnist_root, tmp_path):
    for name in BEST:
        where = [] if name.startswith("fashion") else ["--root", str(paper_data)]  # Fashion-MNIST: its own place
        assert main(["reproduce", name, *where, "--out", str(tmp_path / name), *TINY, *NARROW]) == 0
        assert (tmp_path / name / name / "seed0" / "checkpoint.pt").is_file()
    results = (tmp_path / "svhn-best-bn" / "results.md").read_text()
    assert "| svhn-best-bn | best-known recipe: the error to beat | SVHN | 2.35% |" in results


def test_what_a_recipe_is_for_lives_in_its_paper_table_not_in_the_run_config(tmp_path, capsys):
    from nin.config import TrainConfig, read_recipe

    recipe = read_recipe("table5-gap")
    assert recipe.paper == "Table 5: CIFAR-10, mlpconv + global average pooling" and recipe.paper_error == 10.41
    assert recipe.config.model == "nin_cifar10" and "paper" not in TrainConfig.__dataclass_fields__
    with pytest.raises(SystemExit) as stopped:  # reporting fields are no longer flags
        main(["train", "--paper-error", "3"])
    assert stopped.value.code == 2 and "unrecognized arguments: --paper-error 3" in capsys.readouterr().err
    older = tmp_path / "mine.toml"  # a recipe written before the [paper] table: still read
    older.write_text('description = "mine"\npaper = "Table 4: MNIST"\npaper_error = 0.47\nepochs = 2\n')
    assert (read_recipe(str(older)).paper_error, read_recipe(str(older)).config.epochs) == (0.47, 2)


@pytest.mark.parametrize("table, message", [
    ('[paper]\nrows = "Table 1"\n', "unknown key 'rows' in [paper]; known keys: description, row, error"),
    ('[paper]\nerror = "ten"\n', "[paper] error must be a number of percent, got 'ten'"),
])
def test_a_bad_paper_table_is_one_line(table, message, tmp_path, capsys):
    (tmp_path / "r.toml").write_text("epochs = 1\n" + table)
    assert main(["train", "--recipe", str(tmp_path / "r.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin: error: recipe ") and message in err and err.count("\n") == 1


def test_claims_runs_the_rows_of_the_papers_comparisons_and_writes_their_verdicts(fashion_mnist_root, tmp_path):
    assert select_rows("claims") == ["table5-gap", "table5-fc-dropout", "table5-fc", "sec4.6-fc-dropout",
                                     "sec4.6-gap", "sec4.6-fc", "fig3-no-dropout"]  # figure 3's twin: table5-gap
    assert main(["reproduce", "claims", "--dataset", "fashion-mnist", "--out", str(tmp_path),
                 "--epochs", "1", "--train-subset", "16", "--test-subset", "8", "--batch-size", "8",
                 "--device", "cpu", "--width", "0.25"]) == 0  # narrower networks: what a CPU can run
    lines = (tmp_path / "paper-claims.md").read_text().splitlines()
    assert lines[lines.index("| claim | rows, best first (the paper's order) | paper: error | ours: error (mean ± std)"
                             " | seeds | verdict |") + 1] == "|---|---|---|---|---:|---|"
    claims = [line for line in lines if line.startswith(("| Table 5", "| Section 4.6", "| Figure 3"))]
    assert len(claims) == 3 and all(line.count(" | ") == 5 for line in claims)
    assert "| table5-gap < table5-fc-dropout < table5-fc | 10.41% < 10.88% < 11.59% |" in claims[0]
    assert all(any(word in line for word in ("holds by", "reversed by", "a tie")) and "| 1 |" in line
               for line in claims)  # 8 test images: equal errors are likely
    said = next(line for line in lines if line.startswith("settings changed from the recipes: "))
    assert "dataset=fashion-mnist" in said and "epochs=1" in said and "width=0.25" in said
    assert (f"command: `nin reproduce claims --seeds 1 --out {tmp_path} --dataset fashion-mnist --device cpu --epochs 1 "
            "--train-subset 16 --test-subset 8 --batch-size 8 --width 0.25`") in lines  # the table says how to remake it
    assert "| table5-gap < fig3-no-dropout | 10.41% < 14.51% |" in claims[2]
    config = json.loads((tmp_path / "sec4.6-fc" / "seed0" / "config.json").read_text())
    assert config["width"] == 0.25 and config["model"] == "cnn_sec46" and config["head"] == "fc"


def test_reproduce_run_again_with_the_same_out_reuses_its_runs(fashion_mnist_root, tmp_path, capsys):
    argv = ["reproduce", "table5-gap", "--dataset", "fashion-mnist", "--out", str(tmp_path), *TINY]
    assert main(argv) == 0
    first = (tmp_path / "results.md").read_text()
    checkpoint = tmp_path / "table5-gap" / "seed0" / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    assert main(argv) == 0  # the finished run is read (evaluated again), not trained again
    assert checkpoint.stat().st_mtime_ns == written
    assert (tmp_path / "results.md").read_text() == first
    capsys.readouterr()
    assert main([*argv[:-len(TINY)], *TINY[:1], "2", *TINY[2:]]) == 2  # --epochs 2 against the run's 1
    err = capsys.readouterr().err
    assert "seed0 holds a run with epochs = 1, not 2: run with another --out" in err and err.count("\n") == 1


def test_the_tables_command_line_names_each_changed_setting_as_its_flag():
    command = _command("table4", 2, Path("runs/t4"), {"dataset": "fashion-mnist", "train_subset": 500,
                                                      "compile": False, "channels_last": True})
    assert command == ("nin reproduce table4 --seeds 2 --out runs/t4 --dataset fashion-mnist --train-subset 500 "
                       "--no-compile --channels-last")


def test_reproduce_leaves_a_results_md_it_did_not_write_alone(tmp_path, capsys):
    for name, target in (("results.md", "table5-gap"), ("paper-claims.md", "claims")):
        out = tmp_path / name.split(".")[0]
        out.mkdir()
        (out / name).write_text("# my own notes\n")
        assert main(["reproduce", target, "--dataset", "fashion-mnist", "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"{out / name} exists and was not written by nin reproduce" in err and err.count("\n") == 1
        assert (out / name).read_text() == "# my own notes\n" and [p.name for p in out.iterdir()] == [name]


def test_a_bad_override_is_named_with_its_own_choices_before_the_data_is_looked_for(tmp_path, capsys):
    assert main(["reproduce", "claims", "--eval-split", "bogus", "--root", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "eval_split must be one of test, val, got 'bogus'" in err and not (tmp_path / "out").exists()


def test_a_claim_whose_rows_have_equal_errors_is_a_tie_not_a_reversal():
    verdict = _verdict(("a", "b", "c"), [(10.0, 0.0), (10.001, 0.0), (12.0, 0.0)], seeds=1)
    assert verdict.startswith("a < b: a tie") and "reversed" not in verdict and "b < c: holds by 2.00" in verdict


@pytest.mark.parametrize("flags", [["--dataset", "folder"], ["--dataset", "fashion-mnist", "--width", "17"]],
                         ids=["folder-without-root", "width-17"])
def test_a_refused_reproduction_leaves_no_row_folders(flags, fashion_mnist_root, tmp_path, capsys):
    assert main(["reproduce", "claims", *flags, "--out", str(tmp_path / "out"), *TINY]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
