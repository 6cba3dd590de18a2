import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from lab.runs import (CHECKPOINT_FILE, checkpointed_runs, find_finished, folder_name, is_published,
                      published_dir)
from lab.kinds import parse_shard
from lab.runs import unique
from lab.sweeps import shard
from lab.errors import UserError
from lab.files import write_json_atomic


def write_record(folder, config, status, epochs=(), **summary):
    """A run record as RunFolder writes it, made by hand."""
    write_json_atomic({"config": config, "meta": {}, "status": status, "epochs": list(epochs), **summary},
                      os.path.join(folder, "metrics.json"))


def test_shards_partition_the_runs():
    configs = [{"depth": d, "seed": s} for d in (2, 8, 32, 64) for s in range(3)]
    costs = [c["depth"] for c in configs]
    for n in (1, 2, 3, 5, 16):
        parts = [shard(configs, costs, k, n) for k in range(n)]
        flat = [c for part in parts for c in part]
        assert sorted(map(str, flat)) == sorted(map(str, configs))  # each run in exactly one shard
        if n <= len(configs):
            assert all(parts)  # none idle while another has two
        assert parts == [shard(list(configs), costs, k, n) for k in range(n)]  # the same on every machine
    loads = [sum(c["depth"] for c in shard(configs, costs, k, 2)) for k in range(2)]
    assert abs(loads[0] - loads[1]) <= max(costs)


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "1/0"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(text)


def test_folder_names_differ_for_every_setting_and_are_stable():
    base = {"depth": 2, "epochs": 21, "lr": 1e-4, "seed": 0}
    assert folder_name("plain_d2", base) == folder_name("plain_d2", dict(reversed(base.items())))
    names = {folder_name("plain_d2", dict(base, **change))
             for change in ({}, {"epochs": 8}, {"lr": 1e-3}, {"seed": 1}, {"extra": None})}
    assert len(names) == 5
    assert folder_name("plain_d2", base).startswith("plain_d2_e21_s0_")
    assert unique([base, dict(base), {"depth": 8}]) == [base, {"depth": 8}]


def test_a_run_folder_whose_config_does_not_match_its_name_is_an_error(tmp_path):
    config = {"epochs": 1, "seed": 0, "lr": 0.1}
    name = folder_name("x", config)
    write_record(str(tmp_path / name), dict(config, lr=0.5), "complete", test_acc=0.5)
    with pytest.raises(UserError, match="does not match its name; delete that folder"):
        find_finished([str(tmp_path)], name, config)


def test_only_complete_runs_that_kept_a_checkpoint_are_analysed(tmp_path):
    """A run still training has a best.pt too: the analyses (ex2_*) must not take its partly
    trained network for a result; nor a diverged run, nor a finished one without its best.pt."""
    def make(prefix, status, checkpoint=True, epochs=1):
        config = {"epochs": epochs, "seed": 0}
        folder = str(tmp_path / folder_name(prefix, config))
        summary = {} if status == "running" else {"best_epoch": 1, "best_val_acc": 0.5, "test_acc": 0.5,
                                                  "test_loss": 1.0}
        write_record(folder, config, status, [{"epoch": 1, "val_acc": 0.5}], **summary)
        path = os.path.join(folder, CHECKPOINT_FILE)
        if checkpoint:
            open(path, "wb").close()
        return path
    kept = make("a", "complete")
    make("b", "running"), make("c", "diverged"), make("d", "complete", checkpoint=False)
    other = make("e", "complete", epochs=2)
    assert [path for _, path in checkpointed_runs(str(tmp_path))] == [kept, other]
    assert [path for _, path in checkpointed_runs(str(tmp_path), "a_*")] == [kept]
    assert checkpointed_runs(str(tmp_path / "missing")) == []


def test_only_what_lies_inside_the_committed_results_counts_as_published(tmp_path):
    inside = os.path.join(published_dir("ex1_cnn"), "res_n9_e8_s0_x", CHECKPOINT_FILE)
    assert is_published(inside, "ex1_cnn") and is_published(published_dir("ex1_cnn"), "ex1_cnn")
    assert not is_published(published_dir("ex1_cnn") + "_old/run/best.pt", "ex1_cnn")  # a sibling folder
    assert not is_published(inside, "ex1_mlp") and not is_published(str(tmp_path), "ex1_cnn")


@pytest.mark.parametrize("record,message", [
    ([1, 2, 3], "holds a list"), ({"config": {}, "epochs": []}, "no 'meta'"),
])
def test_corrupt_metrics_are_named_with_what_to_do(tmp_path, record, message):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=f"{message}.*delete the run folder"):
        find_finished([str(tmp_path)], "run", {})


@pytest.mark.slow
def test_two_sweeps_on_one_folder_train_each_run_once(mnist_dir, tmp_path):
    argv = ["--sweep", "--depths", "2,4", "--variants", "plain", "--seeds", "1", "--width", "4",
            "--epochs", "2", "--val-size", "50", "--batch-size", "8", "--workers", "1", "--device", "cpu",
            "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"), "--fig-dir", str(tmp_path / "fig")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "ex1_mlp.py")] + argv, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trained = 0
    for out in outputs:
        line = next((x for x in out.splitlines() if x.startswith("sweep: trained")), "sweep: trained 0")
        trained += int(line.split()[2])
    assert trained == 2, outputs  # two runs, each trained by exactly one of the two sweeps
    for folder in (tmp_path / "runs").iterdir():
        if folder.name != "figures":
            record = json.loads((folder / "metrics.json").read_text())
            assert record["status"] == "complete" and len(record["epochs"]) == 2
            assert (folder / "best.pt").exists()


def test_a_new_record_says_which_code_made_it_and_runs_without_git(monkeypatch):
    import torch
    import utils
    meta = utils.provenance()
    assert meta["torch"] == str(torch.__version__) and type(meta["torch"]) is str  # a plain str for JSON
    if os.path.isdir(os.path.join(ROOT, ".git")):
        assert len(meta["commit"]) == 40 and int(meta["commit"], 16) >= 0

    def no_git(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")
    monkeypatch.setattr(subprocess, "run", no_git)
    assert utils.provenance() == {"torch": str(torch.__version__)}  # a copy without .git: no commit key


def test_a_resume_accepts_a_start_that_predates_provenance_but_not_other_data():
    from lab.runs import _same_numbers
    old = {"data": "MNIST", "hardware": "cpu"}  # a record written before meta carried the commit
    assert _same_numbers({**old, "commit": "0" * 40, "torch": "2.14.1"}) == _same_numbers(old)
    assert _same_numbers({**old, "data": "other"}) != _same_numbers(old)


def probe_record():
    return {"config": {"method": "linear"}, "meta": {}, "status": "complete", "epochs": [], "test_acc": 0.5,
            "best_val_acc": 0.5, "chosen": 0.01, "selection": {"0.01": 0.5},
            "images": {"train": 45000, "val": 5000, "test": 10000}, "seconds": {"features": 30.0, "fit": 2.0}}


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["seconds"].update(features=-5000.0), "'seconds': 'features': must be"),
    (lambda r: r["images"].update(test=-3), "'images': 'test': must be"),
    (lambda r: r.pop("images"), "no 'images'"),
    (lambda r: r.update(seconds="fast"), "'seconds': a str where a dict belongs"),
])
def test_a_records_whole_content_is_checked_against_its_declared_schema(tmp_path, edit, message):
    """Issue 39's edited records: each field a script's runs add is declared (ex2_finetune's
    PROBE_FIELDS) and the reader refuses the record in one line, before any table reads it."""
    import json
    import ex2_finetune
    from lab.errors import UserError
    from lab.runs import read_record
    record = probe_record()
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert read_record(str(tmp_path), ex2_finetune.PROBE_FIELDS) == record
    edit(record)
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=re.escape(message)):
        read_record(str(tmp_path), ex2_finetune.PROBE_FIELDS)


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(best_epoch=3), "best epoch 3 is past its 2 epochs"),
    (lambda r: r.update(best_val_acc=0.9), "not that of its best epoch"),
    (lambda r: r["epochs"][1].update(epoch=5), "not numbered"),
])
def test_a_records_fields_must_agree_with_one_another(tmp_path, edit, message):
    import json
    from lab.errors import UserError
    from lab.runs import read_record
    record = {"config": {}, "meta": {}, "status": "complete", "test_acc": 0.5, "test_loss": 1.0,
              "best_epoch": 2,
              "best_val_acc": 0.6, "epochs": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}]}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert read_record(str(tmp_path)) == record
    edit(record)
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=message):
        read_record(str(tmp_path))


def test_a_published_run_reached_through_a_bind_mount_is_still_published(tmp_path, monkeypatch):
    """--force never deletes a published run: it is recognized by its device and inode, not by its
    path, so results/<exercise> bind-mounted elsewhere (issue 39's case) is still published."""
    import lab.runs as runs
    results = tmp_path / "results"
    (results / "ex1_mlp" / "plain_d2_e1_s0_abc").mkdir(parents=True)
    monkeypatch.setattr(runs, "RESULTS_DIR", str(results))
    view = tmp_path / "a"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(results / "ex1_mlp"), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("bind mounts need root")
    try:
        assert runs.is_published(str(view / "plain_d2_e1_s0_abc"), "ex1_mlp") is True
        assert runs.is_published(str(view), "ex1_mlp") is True
        assert runs.is_published(str(tmp_path / "elsewhere" / "plain_d2_e1_s0_abc"), "ex1_mlp") is False
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)
