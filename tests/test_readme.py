import os
import re

from conftest import ROOT

GENERATED = ("ex1_mlp_table", "ex1_cnn_table", "ex2_cam_faithfulness", "bench_mlp", "bench_cnn")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_readme_tables_are_the_files_the_code_wrote():
    readme = read("README.md")
    for name in GENERATED:
        block = readme.split(f"<!-- {name} -->\n")[1].split(f"<!-- /{name} -->")[0]
        assert block == read("figures", f"{name}.md"), name


def test_readme_figures_exist_and_ci_runs_the_readme_test_command():
    readme = read("README.md")
    for path in re.findall(r"\]\((figures/[^)]+)\)", readme):
        assert os.path.getsize(os.path.join(ROOT, path)) > 0, path
    command = "python -m pytest -q"
    assert command in readme and command in read(".ci", "run")
