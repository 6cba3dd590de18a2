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
