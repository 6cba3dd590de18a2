"""Which runs a command reads: the published results for their settings, whatever the user
trained into runs/ (issue 18, items 1-3)."""
import json
import shutil

import pytest

import ex1_cnn
import ex1_mlp
import training
from conftest import ROOT


def test_a_single_run_of_published_settings_prints_the_published_result(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    no_data = str(tmp_path / "no-data")
    cnn = ex1_cnn.main(ex1_cnn.get_args(["--blocks", "3", "--residual", "--cpu", "--data-dir", no_data,
                                         "--out-dir", str(tmp_path / "runs")]))
    mlp = ex1_mlp.main(ex1_mlp.get_args(["--depth", "32", "--residual", "--data-dir", no_data,
                                         "--out-dir", str(tmp_path / "runs")]))
    out = capsys.readouterr().out
    assert out.count("holds this finished run, published with the code") == 2
    assert cnn["test_acc"] > 0.75 and mlp["test_acc"] > 0.9
    assert f"checkpoint {ROOT}/results/ex1_cnn/res_n3_e8_s0_" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_published_run_without_its_checkpoint_is_never_printed_with_a_path_to_one(tmp_path, capsys):
    ex1_mlp.main(ex1_mlp.get_args(["--depth", "2", "--data-dir", str(tmp_path / "no-data"),
                                   "--out-dir", str(tmp_path / "runs")]))  # plain-2: metrics only in git
    out = capsys.readouterr().out
    assert "best.pt" not in out and "its checkpoint is not kept" in out


def test_a_users_run_of_published_settings_never_replaces_it_in_a_figure(tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(f"{ROOT}/results/ex1_cnn", runs, ignore=shutil.ignore_patterns("*.pt"))
    for metrics in runs.glob("*/metrics.json"):  # the user's runs: same settings, other numbers
        record = json.loads(metrics.read_text())
        if record["status"] == "complete":
            record["test_acc"] = 0.111
            metrics.write_text(json.dumps(record))
    ex1_cnn.main(ex1_cnn.get_args(["--sweep", "--cpu", "--plot-only", "--data-dir", str(tmp_path / "none"),
                                   "--out-dir", str(runs), "--fig-dir", str(tmp_path / "fig")]))
    table = (tmp_path / "fig" / "ex1_cnn_table.md").read_text()
    assert table == open(f"{ROOT}/figures/ex1_cnn_table.md").read() and "0.111" not in table


def test_checkpoints_not_in_git_are_trained_again_exactly(cifar_folder, tmp_path, capsys, monkeypatch):
    """Seeds 1 and 2 are published without checkpoints: --checkpoints makes exactly those, with
    the published numbers, and ex2_why names that command for the seed it was asked for."""
    from lab import runs
    published = tmp_path / "published"
    argv = ["--sweep", "--blocks-list", "1", "--seeds", "1", "--epochs", "1", "--width", "4",
            "--val-size", "10", "--batch-size", "8", "--device", "cpu", "--workers", "1",
            "--data-dir", cifar_folder]
    ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(published)]))
    for best in published.glob("*/best.pt"):
        best.unlink()
    monkeypatch.setattr(runs, "published_dir", lambda exercise: str(published))
    ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(tmp_path / "runs")]))
    assert "2 already finished, 0 to train" in capsys.readouterr().out
    ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(tmp_path / "runs"), "--checkpoints"]))
    assert "0 already finished, 2 to train" in capsys.readouterr().out
    for metrics in published.glob("*/metrics.json"):
        again = tmp_path / "runs" / metrics.parent.name
        assert (again / "best.pt").exists()
        first, second = (json.loads(p.read_text()) for p in (metrics, again / "metrics.json"))
        untimed = [[{k: v for k, v in e.items() if not k.endswith("seconds")} for e in r["epochs"]]
                   for r in (first, second)]
        assert untimed[0] == untimed[1]
        assert first["test_acc"] == second["test_acc"]


def test_ex2_why_names_the_command_that_makes_the_missing_seed(tmp_path, capsys):
    import ex2_why
    from conftest import assert_one_line_error, cli_in_process
    argv = ["--seed", "1", "--runs-dir", str(tmp_path), "--device", "cpu"]
    assert_one_line_error(*cli_in_process(ex2_why, argv, capsys),
                          "python ex1_cnn.py --sweep --cpu --seeds 2 --checkpoints")
