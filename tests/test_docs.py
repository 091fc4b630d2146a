"""The documentation site and results/: the site builds with --strict, every number on a results page comes
from a file in results/, each study says where it came from, and no file holds a path of the machine that
made it."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DOCS = ROOT / "docs"
BINARY = {".png", ".jpg", ".jpeg", ".pt", ".safetensors", ".onnx", ".gz", ".zip", ".tar"}
# the places of the machines that made the files: a work tree, root's or a user's home, scratch space
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|tmp|home|Users|mnt|scratch|var/tmp)/")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
STUDY_FIELDS = ("**Question**", "**Command**", "**Commit**", "**Hardware**", "**Read in**")


def text_files(*folders: Path):
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() not in BINARY:
                yield path


def results_text() -> str:
    return "\n".join(path.read_text(errors="replace") for path in text_files(RESULTS))


def test_no_file_in_results_or_docs_holds_a_path_of_the_machine_that_made_it():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
             for path in [*text_files(RESULTS, DOCS), ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml"]
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, "absolute paths of a machine (write them relative to the repository):\n" + "\n".join(found)


def test_each_study_is_a_folder_whose_readme_says_where_it_came_from_and_which_page_reads_it():
    loose = [path.name for path in RESULTS.iterdir() if path.is_file() and path.name != "README.md"]
    assert not loose, f"results/ holds one folder per study (and its index README.md), not {loose}"
    index = (RESULTS / "README.md").read_text()
    for study in sorted(path for path in RESULTS.iterdir() if path.is_dir()):
        readme = study / "README.md"
        assert readme.is_file(), f"{study.name}/ has no README.md (the question, command, commit, hardware, page)"
        text = readme.read_text()
        missing = [field for field in STUDY_FIELDS if field not in text]
        assert not missing, f"results/{study.name}/README.md lacks {missing}"
        pages = re.findall(r"docs/results/[\w.-]+\.md", text)
        assert pages and all((ROOT / page).is_file() for page in pages), f"{study.name}: its docs page {pages}"
        assert f"{study.name}/" in index, f"results/README.md does not list {study.name}"


@pytest.mark.parametrize("page", sorted(path.name for path in (DOCS / "results").glob("*.md")))
def test_every_number_on_a_results_page_comes_from_a_file_in_results(page):
    text = (DOCS / "results" / page).read_text()
    for included in SNIPPET.findall(text):
        assert (ROOT / included).is_file() and included.startswith("results/"), f"{page} includes {included}"
    own = SNIPPET.sub("", text)
    kept = results_text()
    missing = sorted({number for number in DECIMAL.findall(own) if number not in kept})
    assert not missing, f"docs/results/{page} quotes numbers that no file in results/ holds: {missing}"


def test_the_readme_results_table_reads_results_and_links_each_row_to_its_page():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert 1 <= len(rows) <= 6, f"the README's results table has {len(rows)} rows (at most 6)"
    kept = results_text()
    for row in rows:
        links = re.findall(r"\]\((docs/results/[\w.-]+\.md)\)", row)
        assert links and (ROOT / links[0]).is_file(), f"a results row without its page: {row}"
        missing = [number for number in DECIMAL.findall(row) if number not in kept]
        assert not missing, f"README numbers that no file in results/ holds: {missing} in {row}"


def test_the_site_builds_with_strict(tmp_path):
    """`make docs` builds the same way; a broken link, a missing page or a bad docstring fails."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("the documentation's tools are missing: pip install -e '.[dev]' (make test installs them)")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-6000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli.html").read_text()
    assert "nin train" in cli and "--epochs" in cli and "nin reproduce" in cli  # generated from the parser
    assert "create_model" in (site / "reference" / "python.html").read_text()  # from the docstrings
    for page in ("index.html", "getting-started.html", "results/index.html", "results/cifar10.html"):
        assert (site / page).is_file(), page
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()  # nothing fetched when read offline
