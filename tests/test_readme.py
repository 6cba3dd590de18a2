import os
import re

import pytest

from conftest import ROOT

CHECKPOINT_BUDGET = 20 * 2 ** 20  # the published checkpoints, in all
GENERATED = ("ex1_mlp_table", "ex1_cnn_table", "ex2_cam_faithfulness", "ex2_why_responses", "bench_mlp",
             "bench_cnn")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_readme_tables_are_the_files_the_code_wrote():
    readme = read("README.md")
    for name in GENERATED:
        if f"<!-- {name} -->" in readme:
            block = readme.split(f"<!-- {name} -->\n")[1].split(f"<!-- /{name} -->")[0]
            assert block == read("figures", f"{name}.md"), name


def test_readme_figures_exist_and_ci_runs_the_readme_test_command():
    readme = read("README.md")
    for path in re.findall(r"\]\((figures/[^)]+)\)", readme):
        assert os.path.getsize(os.path.join(ROOT, path)) > 0, path
    command = "python -m pytest -q"
    assert command in readme and command in read(".ci", "run")


@pytest.mark.parametrize("script,argv", [("ex1_mlp", ["--sweep", "--plot-only"]),
                                         ("ex1_cnn", ["--sweep", "--cpu", "--plot-only"])])
def test_committed_tables_are_what_the_committed_results_give(script, argv, tmp_path, monkeypatch):
    """--plot-only from the results in git, with no data: the tables the README shows."""
    import importlib
    import data
    monkeypatch.setattr(data, "_try_download", lambda make, data_dir: None)  # offline, and no MNIST
    module = importlib.import_module(script)
    module.main(module.get_args(argv + ["--data-dir", str(tmp_path / "no-data"), "--out-dir",
                                        str(tmp_path / "runs"), "--fig-dir", str(tmp_path)]))
    name = f"{script}_table.md"
    assert (tmp_path / name).read_text() == read("figures", name)


def test_the_committed_checkpoints_are_listed_in_the_readme_and_small():
    import subprocess
    try:
        files = subprocess.run(["git", "ls-files", "results/**.pt", "results/*/*/*.pt"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    readme = read("README.md")
    assert sum(os.path.getsize(os.path.join(ROOT, f)) for f in files) <= CHECKPOINT_BUDGET
    for f in files:
        assert f"`{os.path.dirname(f)}/`" in readme, f


def test_gitignore_admits_exactly_the_checkpoints_the_readme_lists():
    listed = set(re.findall(r"^\| `(results/[^`]+)/` \|", read("README.md"), re.MULTILINE))
    admitted = {line[1:].rsplit("/", 1)[0] for line in read(".gitignore").splitlines()
                if line.startswith("!")}
    assert listed and listed == admitted
    assert all(not any(c in line for c in "*?[") for line in read(".gitignore").splitlines()
               if line.startswith("!"))  # by name, not by a pattern another run could match


def test_the_readme_prose_quotes_the_depth_gaps_the_results_give():
    """Exercise 1.3's prose states the 56-minus-20 gaps with their standard errors: computed
    here from results/, they must be the numbers the README's text gives (not only its table)."""
    import ex1_cnn
    from report import format_gap
    from runs import collect
    args = ex1_cnn.get_args(ex1_cnn.README_SWEEP)
    found = collect(ex1_cnn.sweep_configs(args), ex1_cnn.roots(args), ex1_cnn.run_name)
    gaps = ex1_cnn.depth_gaps(ex1_cnn._by_network(found))
    readme = read("README.md")
    prose = readme.split("<!-- /ex1_cnn_table -->")[1].split("## Exercise 2.1")[0]
    for residual, row in gaps.items():
        for gap in row[:2]:  # validation accuracy and training loss
            if gap is not None and gap[1] is not None and len(gap[2]) >= 3:  # all three seeds in
                assert format_gap(gap) in prose, (residual, format_gap(gap))
