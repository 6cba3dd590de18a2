from lab import datafiles
import os
import re

import pytest

from conftest import ROOT

CHECKPOINT_BUDGET = 20 * 2 ** 20  # the published checkpoints, in all
GENERATED = ("ex1_mlp_table", "ex1_cnn_table", "ex2_cam_faithfulness", "ex2_why_responses", "bench_mlp",
             "bench_cnn", "ex2_fcn_table", "ex2_distill_select", "ex2_distill_table", "ex2_distill_short",
             "ex2_cam_photos", "ex2_finetune_probe", "ex2_finetune_table")
# Results at a glance: each number it quotes, and the committed table it comes from
GLANCE = {"ex1_mlp_table": ("0.114 ± 0.000", "0.961 ± 0.002", "0.957 ± 0.000", "0.385 ± 0.033"),
          "ex1_cnn_table": ("-0.272 ± 0.008", "+0.019 ± 0.003"),
          "ex2_why_gradients": ("1801.15", "5.31"),
          "ex2_why_lesion": ("| residual-56 | 0.846 | 0.801 |", "| plain-56 | 0.513 | 0.128 |"),
          "ex2_fcn_table": ("0.458 ± 0.010", "0.856 ± 0.006"),
          "ex2_finetune_table": ("| 12.8k | 0.795 | 0.799 |", "| 0.85M | 0.828 ± 0.003 | 0.827 ± 0.002 |",
                                 "| 0.873 ± 0.006 | 0.869 ± 0.001 |", "| 0.450 ± 0.010 | 0.457 ± 0.012 |"),
          "ex2_distill_short": ("+0.065 [+0.044, +0.085]", "+0.044 [+0.022, +0.067]"),
          "ex2_distill_table": ("+0.003 [-0.008, +0.014]",),
          "ex2_cam_faithfulness": ("0.262 ± 0.189", "0.371 ± 0.206", "1000 CIFAR-10 test images"),
          "ex2_cam_photos": ("coffee | scikit-image skimage.data.coffee() | espresso",
                             "chelsea | scikit-image skimage.data.chelsea() | Egyptian cat")}
MAX_WORDS = 8000
GLANCE_LINES = 80  # the contents and the results at a glance come first


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
                                         ("ex1_cnn", ["--sweep", "--cpu", "--plot-only"]),
                                         ("ex2_fcn", ["--plot-only"])])
def test_committed_tables_are_what_the_committed_results_give(script, argv, tmp_path, monkeypatch):
    """--plot-only from the results in git, with no data: the tables the README shows."""
    import importlib
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline, and no MNIST
    module = importlib.import_module(script)
    module.main(module.get_args(argv + ["--data-dir", str(tmp_path / "no-data"), "--out-dir",
                                        str(tmp_path / "runs"), "--fig-dir", str(tmp_path)]))
    name = f"{script}_table.md"
    assert (tmp_path / name).read_text() == read("figures", name)


@pytest.mark.parametrize("script,argv,tables", [
    ("ex2_why", ["--plot-only"], [f"ex2_why_{a}.md" for a in ("gradients", "responses", "lesion",
                                                              "landscape")]),
    ("ex2_cam", ["cifar10", "--plot-only"], []),
    ("ex2_cam", ["cifar10", "--evaluate", "--plot-only"], ["ex2_cam_faithfulness.md"])])
def test_the_analyses_redraw_their_committed_tables_without_cifar10(script, argv, tables, tmp_path):
    """From results/ex2_why and results/ex2_cam, with no data: the tables the README shows, and
    a figure for each (their pixels depend on matplotlib's version; the tables do not)."""
    import importlib
    module = importlib.import_module(script)
    module.main(module.get_args(argv + ["--data-dir", str(tmp_path / "no-data"), "--fig-dir", str(tmp_path)]))
    for name in tables:
        assert (tmp_path / name).read_text() == read("figures", name), name
    assert len(list(tmp_path.glob("*.png"))) == max(1, len(tables))


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
    from lab.runs import collect
    args = ex1_cnn.get_args(ex1_cnn.README_SWEEP)
    found = collect(ex1_cnn.sweep_configs(args), ex1_cnn.roots(args), ex1_cnn.run_name)
    gaps = ex1_cnn.depth_gaps(ex1_cnn._by_network(found))
    readme = read("README.md")
    prose = readme.split("<!-- /ex1_cnn_table -->")[1].split("## Exercise 2.1")[0]
    for residual, row in gaps.items():
        for gap in row[:2]:  # validation accuracy and training loss
            if gap is not None and gap[1] is not None and len(gap[2]) >= 3:  # all three seeds in
                assert format_gap(gap) in prose, (residual, format_gap(gap))


def test_the_readme_states_the_whole_sweeps_time_the_table_gives():
    """The sweep was never run in one go: its wall time in the prose is the table's measured total of
    process-minutes (as run, and at each run's fastest epoch) over the two processes side by side."""
    readme = read("README.md")
    table = read("figures", "ex1_cnn_table.md")
    total, fastest = map(int, re.search(r"took (\d+) CPU-process minutes in all, (\d+) if", table).groups())
    prose = readme.split("<!-- /ex1_cnn_table -->")[1].split("## Exercise 2.1")[0]
    processes = 2  # one single-thread process per core of our 2-core machine
    for minutes in (total, fastest):
        assert f"{minutes} process-minutes" in prose
        assert f"{minutes / 60 / processes:.1f} hours" in prose


def per_block_lesions():
    """{network: [accuracy with block j+1 deleted]} from the committed lesion table."""
    table = read("figures", "ex2_why_lesion.md").split("| deleted block |")[1]
    header, _, *rows = table.strip().splitlines()
    names = [n.strip() for n in header.strip().strip("|").split("|")]
    out = {n: [] for n in names}
    for row in rows:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        for n, c in zip(names, cells):
            if c:
                out[n].append(c.split()[0])
    return out


def test_the_per_block_lesion_numbers_the_readme_quotes_are_the_committed_tables():
    blocks = per_block_lesions()
    section = read("README.md").split("### 3. Lesions")[1].split("### 4.")[0]
    prose = section.split("figures/ex2_why_lesion.md)")[1]
    quoted = {("plain-32", 1): "0.287", ("plain-32", 2): "0.239", ("residual-32", 6): "0.493",
              ("residual-32", 1): "0.653", ("residual-32", 11): "0.673", ("residual-56", 1): "0.626",
              ("residual-56", 2): "0.743", ("residual-56", 10): "0.783", ("residual-56", 19): "0.812"}
    for (network, block), value in quoted.items():
        assert blocks[network][block - 1] == value and value in prose, (network, block)
    assert max(blocks["plain-56"], key=float) == "0.239"
    below = {n: sum(float(v) < 0.15 for v in values) for n, values in blocks.items()}
    assert below["plain-32"] == 12 and below["plain-56"] == 19
    assert "12 of its 15 blocks" in prose and "19 of 27" in prose
    intact = {"residual-32": 0.830, "residual-56": 0.846}
    costly = {n: sum(float(v) < intact[n] - 0.1 for v in blocks[n]) for n in intact}
    assert costly == {"residual-32": 5, "residual-56": 2} and "5 of its 15 blocks" in prose


def test_the_readme_leads_with_contents_and_a_glance_whose_numbers_are_the_tables():
    readme = read("README.md")
    head = "\n".join(readme.splitlines()[:GLANCE_LINES])
    assert "**Contents.**" in head and "## Results at a glance" in head and "## Quick start" in readme
    glance = readme.split("## Results at a glance")[1].split("## Quick start")[0]
    assert glance.strip() in head
    for table, quoted in GLANCE.items():
        text = read("figures", f"{table}.md")
        for q in quoted:
            assert q in text, (table, q)
            number = q.split("|")[-2].strip() if q.startswith("|") else q.split(" | ")[-1]
            assert number in glance, (table, number)


def test_the_readme_is_at_most_its_word_budget():
    assert len(read("README.md").split()) <= MAX_WORDS


def test_no_caption_names_a_machines_data_folder():
    """Where the data came from is not a setting of a result: no 'Made by' command in the README,
    the committed tables or the saved results carries a --data-dir (or --out-dir, --fig-dir)."""
    import argparse
    import glob
    import re
    from lab.outputs import command_line
    args = argparse.Namespace(analyses="gradients", data_dir="/some/where", fig_dir="/x", seed=2)
    defaults = argparse.Namespace(analyses=["gradients"], data_dir="data", fig_dir=None, seed=0)
    assert command_line("ex2_why.py", {"analyses": "gradients"}, args, defaults) == \
        "python ex2_why.py gradients --seed 2"
    files = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "figures", "*.md")) + \
        glob.glob(os.path.join(ROOT, "results", "*", "*.json"))
    for path in files:
        with open(path) as f:
            text = f.read()
        for made_by in re.findall(r"Made by `([^`]*)`", text) + re.findall(r'"made_by": "([^"]*)"', text):
            assert not re.search(r"--(data|out|fig)-dir", made_by), (path, made_by)


def minutes(cell):
    """'about 7 h (833 process-minutes)' -> 420, '3 min 44 s' -> 3.7, '15 s / 100 s' -> 1.7: the
    longest time a cost-table cell gives, in minutes."""
    found = [float(n) * {"h": 60, "min": 1, "s": 1 / 60}[unit]
             for n, unit in re.findall(r"(\d+(?:\.\d+)?) (h|min|s)\b", cell)]
    return max(found, default=0.0)


def test_every_long_command_carries_its_cost_on_its_line():
    """Each command the cost table puts over 5 minutes says its cost where the README gives it."""
    readme = read("README.md")
    table = readme.split("## What each command costs")[1].split("\n## ")[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| `python")]
    long = [(re.findall(r"`([^`]+)`", command)[0], cost) for command, cost, _ in rows if minutes(cost) > 5]
    assert len(long) >= 6
    code_lines = [line.strip() for line in readme.splitlines() if line.startswith("    python")]
    for command, cost in long:
        lines = [line for line in code_lines if re.match(re.escape(command) + r"\s+#", line)]
        assert lines, f"{command} ({cost.strip()}) is in no command block of the README"
        for line in lines:
            assert re.search(r"\d+(\.\d+)? ?(h|min)\b", line.split("#", 1)[1]), line


def test_the_distillation_prose_quotes_its_committed_tables():
    """Issue 37: the intervals, per-seed gains and design numbers the distillation section gives
    are those of the committed tables."""
    section = read("README.md").split("## Exercise 2.2 (2024 edition)")[1].split("\n## ")[0]
    short, full = read("figures", "ex2_distill_short.md"), read("figures", "ex2_distill_table.md")
    rows = {line.split("|")[1].strip(): line for line in short.splitlines() if "[" in line}
    for student, low, high in (("residual-32", "5.0", "8.6"), ("residual-8", "2.1", "7.2")):
        per_seed = [float(v) for v in rows[student].split("|")[4].split(",")]
        assert (f"{100 * min(per_seed):.1f}", f"{100 * max(per_seed):.1f}") == (low, high)
        assert f"{low} to {high}" in section or f"by {low} to {high}" in section
    assert "+0.004, -0.001, +0.008" in full and "+0.004, -0.001 and +0.008" in section
    assert "+0.003 [-0.008, +0.014]" in full and "+0.003 [-0.008, +0.014]" in section
    assert "rules out a gain above 0.014" in section
