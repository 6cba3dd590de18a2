"""Files read with their fields checked, and writes that fail: one line naming the file, nothing
finished lost, and a rerun that ends where an uninterrupted run ends (issue 19, items 1-4)."""
from lab import datafiles
import json
import os
import resource
import subprocess
import sys

import pytest
import torch

import ex1_mlp
import ex2_cam
import ex2_why
from conftest import ROOT, assert_one_line_error, cli_in_process
from data import CIFAR10_CACHE, load_cifar10
from test_cam import save_checkpoint

CPU = torch.device("cpu")
TINY = ["--width", "4", "--val-size", "50", "--batch-size", "32", "--device", "cpu"]


def run_with_file_limit(script, argv, limit):
    """`python script argv` with a file-size limit (RLIMIT_FSIZE): a write past `limit` bytes
    fails with EFBIG, as on a full scratch disk. Returns (exit code, stderr)."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=limit_files, timeout=300)
    return proc.returncode, proc.stderr


def without_times(record):
    return [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in record["epochs"]]


@pytest.mark.slow
def test_a_checkpoint_write_past_a_file_size_limit_is_one_line_and_the_rerun_is_exact(mnist_dir, tmp_path):
    argv = TINY + ["--depth", "2", "--epochs", "2", "--data-dir", mnist_dir,
                   "--out-dir", str(tmp_path / "runs")]
    code, err = run_with_file_limit("ex1_mlp.py", argv, limit=8_000)  # metrics.json fits, last.pt does not
    assert_one_line_error(code, err, "last.pt: File too large")  # the epoch's commit point, written first
    folder = next((tmp_path / "runs").iterdir())
    assert json.loads((folder / "metrics.json").read_text())["status"] == "running"  # intact, readable
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]  # no debris
    resumed = ex1_mlp.main(ex1_mlp.get_args(argv))
    straight = ex1_mlp.main(ex1_mlp.get_args(TINY + ["--depth", "2", "--epochs", "2", "--data-dir", mnist_dir,
                                                     "--out-dir", str(tmp_path / "straight")]))
    assert resumed["status"] == "complete" and without_times(resumed) == without_times(straight)
    assert resumed["test_acc"] == straight["test_acc"]


@pytest.mark.slow
def test_the_cifar_cache_is_optional_when_it_cannot_be_written(cifar_folder, tmp_path):
    argv = ["--blocks", "1", "--width", "4", "--epochs", "1", "--val-size", "10", "--batch-size", "8",
            "--device", "cpu", "--data-dir", cifar_folder, "--out-dir", str(tmp_path / "runs")]
    code, err = run_with_file_limit("ex1_cnn.py", argv, limit=120_000)  # the cache is 184 kB, a run less
    assert code == 0, err
    assert err.count("could not write the decoded-image cache") == 1 and "File too large" in err
    assert not os.path.exists(os.path.join(cifar_folder, CIFAR10_CACHE))
    assert not [f for f in os.listdir(cifar_folder) if f.startswith(".tmp")]
    record = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert record["status"] == "complete"


@pytest.mark.parametrize("labels", ["out-of-range", "int32", "too-few"])
def test_a_cache_with_bad_labels_is_rebuilt_not_trained_on(cifar_folder, labels):
    good = load_cifar10(cifar_folder, CPU, n_val=10)
    cache = os.path.join(cifar_folder, CIFAR10_CACHE)
    saved = torch.load(cache, weights_only=True)
    x, y, tx, ty = saved["arrays"]
    y = {"out-of-range": y + 14, "int32": y.int(), "too-few": y[:-1]}[labels]
    torch.save({"key": saved["key"], "arrays": (x, y, tx, ty)}, cache)  # the key still matches
    again = load_cifar10(cifar_folder, CPU, n_val=10)
    assert torch.equal(again.train.y, good.train.y) and again.train.y.dtype == torch.int64


def cnn_checkpoint(tmp_path, change):
    path = save_checkpoint(str(tmp_path / "runs" / "res_n1_e8_s0_x" / "best.pt"))
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    return path


CONFIG_CASES = {
    "empty": lambda ckpt: ckpt.update(config={}),
    "a list": lambda ckpt: ckpt.update(config=[1, 2]),
    "no val_size": lambda ckpt: ckpt["config"].pop("val_size"),
    "a string val_size": lambda ckpt: ckpt["config"].update(val_size="5000"),
    "a string seed": lambda ckpt: ckpt["config"].update(seed="0"),
    "arch a string": lambda ckpt: ckpt.update(arch="CifarResNet"),
    "NaN weights": lambda ckpt: next(v for v in ckpt["model"].values() if v.is_floating_point()).fill_(
        float("nan")),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_checkpoint_fields_are_checked_in_ex2_cam_and_ex2_why(case, tmp_path, cifar_folder, capsys):
    path = cnn_checkpoint(tmp_path, CONFIG_CASES[case])
    if case != "a string seed":  # ex2_cam does not read the seed
        code, err = cli_in_process(ex2_cam, ["cifar10", "--checkpoint", path, "--data-dir", cifar_folder,
                                             "--fig-dir", str(tmp_path / "fig")], capsys)
        assert_one_line_error(code, err, "best.pt")
        assert "pass a best.pt of ex1_cnn.py" in err
    code, err = cli_in_process(ex2_why, ["gradients", "--runs-dir", str(tmp_path / "runs"), "--data-dir",
                                         cifar_folder, "--fig-dir", str(tmp_path / "fig"), "--device", "cpu"],
                               capsys)
    assert_one_line_error(code, err, "best.pt")


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("meta"), "no 'meta'"),
    (lambda r: r.update(test_acc="0.9"), "'test_acc'"),
    (lambda r: r.update(test_acc=float("nan")), "'test_acc': must be a number in [0, 1], got nan"),
    (lambda r: r.pop("test_acc"), "a complete run without its test accuracy"),
    (lambda r: r["epochs"][0].update(val_acc="high"), "epoch 1: 'val_acc'"),
    (lambda r: r.update(status="done"), "status 'done'"),
])
def test_run_record_fields_are_checked_in_plot_only(change, message, mnist_dir, tmp_path, capsys):
    argv = TINY + ["--epochs", "1", "--sweep", "--depths", "2", "--variants", "plain", "--seeds", "1",
                   "--workers", "1", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--fig-dir", str(tmp_path / "fig")]
    ex1_mlp.main(ex1_mlp.get_args(argv))
    metrics = next((tmp_path / "runs").glob("*/metrics.json"))
    record = json.loads(metrics.read_text())
    change(record)
    metrics.write_text(json.dumps(record))
    code, err = cli_in_process(ex1_mlp, argv + ["--plot-only"], capsys)
    assert_one_line_error(code, err, message)
    assert str(metrics) in err and "delete the run folder" in err


def test_mnist_labels_outside_0_to_9_are_named(tmp_path, capsys, monkeypatch):
    import numpy as np
    from conftest import make_mnist, write_idx
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)
    root = make_mnist(str(tmp_path / "mnist"))
    write_idx(os.path.join(root, "MNIST", "raw", "t10k-labels-idx1-ubyte"), np.full(100, 12))
    code, err = cli_in_process(ex1_mlp, TINY + ["--data-dir", root, "--out-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "labels outside 0..9")


def test_layer_stats_fields_are_checked(mnist_dir, tmp_path, capsys):
    argv = TINY + ["--epochs", "1", "--sweep", "--depths", "2", "--variants", "plain", "--seeds", "1",
                   "--workers", "1", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--fig-dir", str(tmp_path / "fig")]
    ex1_mlp.main(ex1_mlp.get_args(argv))
    stats = next((tmp_path / "runs").glob(f"*/{ex1_mlp.STATS_FILE}"))
    saved = json.loads(stats.read_text())
    saved["content"] = {"init": {"weight": "big"}, "trained": {}}
    stats.write_text(json.dumps(saved))
    code, err = cli_in_process(ex1_mlp, argv + ["--plot-only"], capsys)
    assert_one_line_error(code, err, "is not a saved layer statistics result of this code ('init': 'weight'")


def test_a_saved_result_replaced_with_other_numbers_is_named(tmp_path, capsys):
    """`python ex2_cam.py cifar10 --data-dir <another copy>` recomputes the README's maps: the
    committed file it replaces is named in a line, not replaced without a word."""
    from lab.outputs import save_analysis
    path = str(tmp_path / "cifar10.json")
    save_analysis(path, "cifar10", {"seed": 0}, {"best.pt": "ab"}, {"auc": [0.25, float("nan")]})
    save_analysis(path, "cifar10", {"seed": 0}, {"best.pt": "ab"}, {"auc": [0.25, float("nan")]})
    assert "replaced" not in capsys.readouterr().out  # the same numbers again: nothing to say
    save_analysis(path, "cifar10", {"seed": 0}, {"best.pt": "ab"}, {"auc": [0.26, float("nan")]})
    assert f"{path}: replaced by this computation, whose numbers differ" in capsys.readouterr().out
