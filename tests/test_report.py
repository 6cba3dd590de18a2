import os
import pytest

from report import epoch_seconds, fastest_epoch_seconds, format_mean_std, format_result, run_seconds


def record(status="complete", test_acc=0.5, seconds=()):
    return {"status": status, "test_acc": test_acc, "epochs": [{"seconds": s} for s in seconds]}


def test_mean_std_is_the_sample_std():
    assert format_mean_std([0.1, 0.2, 0.3]) == "0.200 ± 0.100"  # n-1: the population std is 0.082
    assert format_mean_std([0.7]) == "0.700"  # one value: no spread to show


def test_runs_without_a_result_are_left_out_and_counted():
    records = [record(test_acc=0.8), record(test_acc=0.6), record("diverged", test_acc=None)]
    assert format_result(records) == "0.700 ± 0.141 (1 diverged)"
    assert format_result([record("diverged", test_acc=None)]) == "- (1 diverged)"


def test_the_fastest_epoch_ignores_epochs_slowed_by_other_work():
    slowed = record(seconds=(230, 971, 235))
    assert fastest_epoch_seconds(slowed) == 230
    assert epoch_seconds(slowed) == pytest.approx(1436 / 3)
    assert fastest_epoch_seconds(record()) is None and epoch_seconds(record()) is None


def test_a_runs_cost_is_its_cpu_time_where_recorded_else_its_fastest_epoch_times_its_epochs():
    slowed = record(seconds=(230, 971, 235))
    assert run_seconds(slowed) == 3 * 230  # wall times only: the fastest, unslowed by other work
    slowed["epochs"] = [{**e, "cpu_seconds": c} for e, c in zip(slowed["epochs"], (200, 210, 205))]
    assert run_seconds(slowed) == 615  # the process's own CPU time, whatever ran beside it
    assert run_seconds({"seconds": {"features": 40.0, "fit": 2.5}, "epochs": []}) == 42.5  # a baseline
    assert run_seconds(record()) == 0.0


def test_one_rule_for_where_outputs_go(tmp_path):
    import ex1_cnn
    import ex2_why
    from lab.outputs import FIGURES_DIR, destination
    readme = ex2_why.get_args([])
    scratch = str(tmp_path / "scratch")
    for argv, inputs_published, publish in [
        ([], True, True),
        (["lesion", "--data-dir", "/elsewhere"], True, True),  # where the data is changes no result
        (["--grid", "21"], True, False),                        # another grid is another table
        ([], False, False),                                     # checkpoints that are not the published ones
    ]:
        folder, published = destination(ex2_why.get_args(argv), readme, scratch, inputs_published,
                                        ex2_why.WHERE_FLAGS)
        assert published == publish and folder == (FIGURES_DIR if publish else scratch), argv
    sweep = ex1_cnn.get_args(["--sweep", "--cpu"])
    shard = ex1_cnn.get_args(["--sweep", "--cpu", "--shard", "0/2", "--workers", "1"])
    assert destination(sweep, sweep, scratch)[1] and not destination(shard, sweep, scratch)[1]
    fig = str(tmp_path / "fig")
    assert destination(ex2_why.get_args(["--fig-dir", fig]), readme, scratch) == (fig, True)


def test_rewriting_a_table_says_which_cells_changed(tmp_path, capsys):
    """A README command run on another machine rewrites a committed table: it says how much moved."""
    from lab.outputs import write_table
    table = "| network | ratio |\n|---|---:|\n| plain-56 | {} |\n| residual-56 | 5.30 |\n\ncaption\n"
    write_table(table.format("1811.09"), "t", str(tmp_path), publish=False)
    write_table(table.format("1811.09"), "t", str(tmp_path), publish=False)
    assert "changed" not in capsys.readouterr().out  # the same numbers: nothing to say
    write_table(table.format("1801.15"), "t", str(tmp_path), publish=False)
    assert "1 cell of 8 changed, the most 1811.09 -> 1801.15 (-0.5%)" in capsys.readouterr().out


def test_t_quantiles_are_those_of_a_statistics_table():
    from report import t_quantile
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert abs(t_quantile(0.975, df) - table) < 2e-3


def test_a_paired_difference_is_taken_seed_by_seed_with_its_t_interval():
    from report import paired_difference
    a = [{"config": {"seed": s}, "v": v} for s, v in ((0, 0.5), (1, 0.6), (2, 0.7))]
    b = [{"config": {"seed": s}, "v": v} for s, v in ((2, 0.6), (0, 0.45), (1, 0.5), (3, 0.9))]
    mean, half, per_seed = paired_difference(a, b, lambda r: r["v"])
    assert per_seed == pytest.approx({0: 0.05, 1: 0.1, 2: 0.1})      # seed 3 has no partner
    sd = (sum((d - 0.25 / 3) ** 2 for d in (0.05, 0.1, 0.1)) / 2) ** 0.5
    assert mean == pytest.approx(0.25 / 3) and half == pytest.approx(4.3027 * sd / 3 ** 0.5, rel=1e-3)


def test_text_from_a_file_cannot_open_or_close_a_readme_block(tmp_path):
    """A caption edited in a saved result to hold a block's end marker stays data in the README."""
    from lab.outputs import update_readme, write_table
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- t -->\nold\n<!-- /t -->\nb\n")
    text = write_table("| x |\n|---|\n\nMade by `evil <!-- /t --> injected`.\n", "t", str(tmp_path), False)
    update_readme("t", open(text).read(), str(readme))
    content = readme.read_text()
    assert content.count("<!-- /t -->") == 1 and content.endswith("<!-- /t -->\nb\n")
    assert "&lt;!-- /t --&gt;" in content


def test_two_commands_writing_one_table_leave_the_readme_and_figures_agreeing(tmp_path, monkeypatch):
    """The table's file and the README's block are written under one lock: a second writer waits
    before writing either (before, it wrote figures/ at once and the README after the first)."""
    import threading
    import time
    from lab import outputs
    from lab.files import FolderLock
    figures = tmp_path / "figures"
    figures.mkdir()
    monkeypatch.setattr(outputs, "FIGURES_DIR", str(figures))
    monkeypatch.setattr(outputs, "README", str(tmp_path / "README.md"))
    (tmp_path / "README.md").write_text("<!-- t -->\nold\n<!-- /t -->\n")
    holder = FolderLock(str(tmp_path))  # the first command, inside its README update
    assert holder.acquire()
    second = threading.Thread(target=outputs.write_table, args=("second\n", "t", str(figures), True))
    second.start()
    time.sleep(0.5)
    assert not (figures / "t.md").exists()  # waiting for the lock, it has written nothing yet
    holder.release()
    second.join(10)
    assert (figures / "t.md").read_text() == "second\n" and "<!-- t -->\nsecond\n<!-- /t -->" in \
        (tmp_path / "README.md").read_text()


def test_a_readme_command_with_its_own_fig_dir_saves_beside_it_not_over_the_committed_result(tmp_path):
    from lab.outputs import FIGURES_DIR, REPO_DIR, analysis_path
    beside = str(tmp_path / "ex2_why_gradients.json")
    assert analysis_path("gradients", str(tmp_path), True, "ex2_why") == beside
    assert analysis_path("gradients", FIGURES_DIR, True, "ex2_why") == \
        os.path.join(REPO_DIR, "results", "ex2_why", "gradients.json")


def test_a_figure_that_cannot_be_drawn_never_deletes_a_committed_one(tmp_path):
    """A --plot-only that cannot draw a figure (its statistics file gone, no data) removes a stale
    one beside the runs, never the committed figures/ (issue 39)."""
    from lab.outputs import FIGURES_DIR, remove_stale
    stale = tmp_path / "ex1_mlp_gradients.png"
    stale.write_bytes(b"old")
    committed = os.path.join(FIGURES_DIR, "ex1_mlp_gradients.png")
    before = open(committed, "rb").read()
    remove_stale([str(stale), committed])
    assert not stale.exists() and open(committed, "rb").read() == before
