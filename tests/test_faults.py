"""Faults a user or another machine can inject: each is one line on stderr, exit code 2,
no traceback, and nothing finished is lost (issue 11's cases, numbered as there)."""
from lab import datafiles
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import ex1_cnn
import ex1_mlp
from conftest import kill_in_epoch, ROOT, assert_one_line_error, cli_in_process

TINY = ["--width", "4", "--epochs", "1", "--val-size", "50", "--batch-size", "32", "--device", "cpu"]


def sweep(mnist_dir, tmp_path, *extra):
    return TINY + ["--sweep", "--depths", "2", "--variants", "plain", "--seeds", "1", "--workers", "1",
                   "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--fig-dir", str(tmp_path / "fig"), *extra]


def single(mnist_dir, tmp_path, *extra):
    return TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"), *extra]


def run_folder(tmp_path):
    return next(p for p in (tmp_path / "runs").iterdir() if p.name != "figures")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def interrupted_run(mnist_dir, tmp_path, monkeypatch):
    """A run folder as a kill leaves it: metrics.json 'running', last.pt after epoch 1 of 2."""
    kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path, "--epochs", "2")))
    monkeypatch.undo()
    folder = run_folder(tmp_path)
    assert (folder / "last.pt").exists()
    return folder


def test_a_crafted_last_pt_runs_no_code(mnist_dir, tmp_path, capsys, monkeypatch):
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "payload": RunsCode(marker)}, folder / "last.pt")
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(code, err, "last.pt is not a checkpoint this code can read safely")
    assert not marker.exists()


def test_a_zero_byte_last_pt_is_named_not_announced_as_resume(mnist_dir, tmp_path, capsys, monkeypatch):
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    (folder / "last.pt").write_bytes(b"")
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(code, err, "last.pt is not a checkpoint")
    assert "delete it to restart this run from epoch 0" in err


def test_repeated_sweep_values_are_one_run(mnist_dir, tmp_path, capsys):
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path, "--depths", "2,2", "--workers", "2")))
    out = capsys.readouterr().out
    assert "sweep: 1 run, 0 already finished, 1 to train" in out and "over 1 seed." in out


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 3]", "holds a list"),
    ('{"config": {}, "epochs": []}', "not a run record this code can use (no 'meta')"),
    ('{"config": {"dep', "unreadable"),
])
def test_corrupt_metrics_json(mnist_dir, tmp_path, capsys, content, message):
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path)))
    (run_folder(tmp_path) / "metrics.json").write_text(content)
    code, err = cli_in_process(ex1_mlp, sweep(mnist_dir, tmp_path, "--plot-only"), capsys)
    assert_one_line_error(code, err, message)
    assert "delete the run folder" in err


@pytest.mark.parametrize("replace", ["empty", "other-run"])
def test_a_bad_best_pt_for_the_gradient_figure(mnist_dir, tmp_path, capsys, replace):
    argv = sweep(mnist_dir, tmp_path, "--depths", "2,8")
    ex1_mlp.main(ex1_mlp.get_args(argv))
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "figures")
    d2, d8 = [f for f in folders if "_d2_" in f.name][0], [f for f in folders if "_d8_" in f.name][0]
    if replace == "empty":
        (d8 / "best.pt").write_bytes(b"")
    else:  # a depth-2 checkpoint in the depth-8 folder
        (d8 / "best.pt").write_bytes((d2 / "best.pt").read_bytes())
    (d8 / ex1_mlp.STATS_FILE).unlink()
    code, err = cli_in_process(ex1_mlp, argv + ["--plot-only"], capsys)
    assert_one_line_error(code, err, "best.pt")
    assert "delete the run folder" in err


def test_bad_mnist_files(tmp_path, capsys, monkeypatch):
    from conftest import make_mnist
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)
    root = make_mnist(str(tmp_path / "mnist"))
    images = os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")
    for content, message in ((b"garbage garbage garbage", "not an MNIST idx file"),
                             (b"", "not an MNIST idx file"),
                             (open(images, "rb").read()[:5000], "truncated")):
        with open(images, "wb") as f:
            f.write(content)
        code, err = cli_in_process(ex1_mlp, ["--epochs", "1", "--data-dir", root, "--out-dir",
                                             str(tmp_path / "r")], capsys)
        assert_one_line_error(code, err, message)
        assert "train-images-idx3-ubyte" in err and "download it again" in err
    missing = tmp_path / "nowhere"
    argv = ["--epochs", "1", "--data-dir", str(missing), "--out-dir", str(tmp_path / "r")]
    code, err = cli_in_process(ex1_mlp, argv, capsys)
    assert_one_line_error(code, err, "MNIST not found")
    assert not missing.exists()  # no empty MNIST/raw tree left behind


def test_hidden_files_in_cifar_class_folders_are_ignored(cifar_folder):
    from data import load_cifar10
    for split in ("train", "test"):
        with open(os.path.join(cifar_folder, split, "cat", ".DS_Store"), "wb") as f:
            f.write(b"\0\0\0\1Bud1")
    assert len(load_cifar10(cifar_folder, torch.device("cpu"), 10).test) == 20


def test_an_unwritable_out_dir_fails_before_training(mnist_dir, tmp_path, capsys, monkeypatch):
    import training
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: pytest.fail("trained first"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    for argv in (single(mnist_dir, tmp_path), sweep(mnist_dir, tmp_path, "--workers", "2")):
        argv[argv.index("--out-dir") + 1] = str(blocker / "runs")
        code, err = cli_in_process(ex1_mlp, argv, capsys)
        assert_one_line_error(code, err, "cannot create the output folder")


@pytest.mark.slow
def test_sigterm_of_a_sweep_is_one_message(mnist_dir, tmp_path):
    argv = sweep(mnist_dir, tmp_path, "--epochs", "50", "--workers", "2", "--depths", "2,4")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "ex1_mlp.py")] + argv, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    runs = tmp_path / "runs"
    import time
    deadline = time.time() + 60
    while not list(runs.glob("*/last.pt")) and time.time() < deadline:  # the workers are training
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ex1_mlp.py: interrupted; every finished epoch is saved"), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_figure_that_cannot_be_drawn_is_removed_and_said(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path)))
    gradients = tmp_path / "fig" / "ex1_mlp_gradients.png"
    assert gradients.exists()
    (run_folder(tmp_path) / ex1_mlp.STATS_FILE).unlink()  # and MNIST is gone: the stats cannot be made
    no_data = str(tmp_path / "no")
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path, "--plot-only", "--data-dir", no_data)))
    assert "gradient and activation figures skipped: they need MNIST" in capsys.readouterr().out
    assert not gradients.exists() and (tmp_path / "fig" / "ex1_mlp_table.md").exists()


def test_a_cnn_diverging_on_validation_saves_no_best(cifar_folder, tmp_path, monkeypatch):
    import training
    monkeypatch.setattr(training, "evaluate", lambda model, batches: {"loss": float("nan"), "acc": 0.1})
    record = ex1_cnn.main(ex1_cnn.get_args(["--blocks", "1", "--width", "4", "--epochs", "1", "--val-size",
                                            "10", "--batch-size", "8", "--device", "cpu", "--data-dir",
                                            cifar_folder, "--out-dir", str(tmp_path / "runs")]))
    assert record["status"] == "diverged" and record.get("test_acc") is None
    assert not list((tmp_path / "runs").glob("*/best.pt"))


def test_completed_results_survive_every_fault_above(mnist_dir, tmp_path, capsys):
    """Nothing finished is lost: the corrupt-input errors leave finished runs byte for byte."""
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path)))
    saved = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*")
             if p.is_file() and "figures" not in str(p)}
    # all finished: nothing to train, so no data is needed
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path, "--data-dir", str(tmp_path / "none"))))
    assert {p: p.read_bytes() for p in saved} == saved
    metrics = next(p for p in saved if p.name == "metrics.json")
    assert json.loads(metrics.read_text())["status"] == "complete"


def test_an_unwritable_fig_dir_fails_before_training(mnist_dir, tmp_path, capsys, monkeypatch):
    import training
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: pytest.fail("trained first"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    argv = sweep(mnist_dir, tmp_path)
    argv[argv.index("--fig-dir") + 1] = str(blocker / "fig")
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), "cannot create the output folder")


def test_ctrl_c_of_ex2_cam_is_one_line_saying_its_files_are_whole(capsys, monkeypatch):
    import ex2_cam
    monkeypatch.setattr(ex2_cam, "main", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    code, err = cli_in_process(ex2_cam, ["cifar10"], capsys)
    assert code == 130 and err.strip() == f"ex2_cam.py: interrupted; {ex2_cam.INTERRUPTED}"


def test_ctrl_c_before_the_first_epoch_leaves_no_empty_run_folder(mnist_dir, tmp_path, monkeypatch):
    from conftest import kill_in_epoch
    kill_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path, "--epochs", "2")))
    assert list((tmp_path / "runs").iterdir()) == []


def test_printing_a_published_run_creates_no_output_folder(tmp_path, monkeypatch, capsys):
    """The quick start's command on a fresh clone, from another folder: nothing appears there."""
    monkeypatch.chdir(tmp_path)
    ex1_mlp.main(ex1_mlp.get_args(["--depth", "32", "--residual"]))
    assert "published with the code" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_a_run_killed_before_any_rename_resumes_to_the_uninterrupted_result(mnist_dir, tmp_path, monkeypatch):
    """An epoch is committed at one point (last.pt's rename): a kill just before any of a run's
    renames (metrics.json, last.pt, best.pt, in every epoch and at the end) leaves a folder that
    the same command resumes to the metrics of an uninterrupted run. Before, a kill between an
    improving epoch's best.pt and last.pt left a run that could never resume."""
    from lab import files
    argv = ["--epochs", "3", "--seed", "3", "--width", "16", "--lr", "0.01"]
    whole = ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path / "whole", *argv)))
    real, renames = files.os.replace, []
    monkeypatch.setattr(files.os, "replace", lambda a, b: (renames.append(b), real(a, b)))
    ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path / "count", *argv)))
    monkeypatch.undo()
    assert sum(r.endswith("best.pt") for r in renames) >= 2
    assert sum(r.endswith("last.pt") for r in renames) == 3

    def untimed(record):
        epochs = [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in record["epochs"]]
        return epochs, record["test_acc"]
    for k in range(1, len(renames) + 1):
        out, calls = tmp_path / f"cut{k}", []

        def killed(a, b):
            calls.append(b)
            if len(calls) == k:
                raise KeyboardInterrupt  # stands for kill -9: the rename never happens
            return real(a, b)
        monkeypatch.setattr(files.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, out, *argv)))
        monkeypatch.undo()
        resumed = ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, out, *argv)))
        assert untimed(resumed) == untimed(whole), f"killed before rename {k} ({os.path.basename(calls[-1])})"


@pytest.mark.parametrize("error, says", [
    (OSError(28, "No space left on device"), "error: No space left on device (free some space"),
    (BrokenPipeError(32, "Broken pipe"), "stopped: its output pipe was closed; rerun"),
])
def test_an_error_that_names_no_file_is_still_one_line_that_says_what_to_do(error, says, capsys, monkeypatch):
    import sys
    from lab.cli import run_cli

    def main(args):
        raise error
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # run_cli may swap it (a closed pipe): restored after
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, None, "x.py", "rerun")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and says in err and not err.rstrip().endswith(":")


def test_pytorchs_out_of_memory_is_one_line_and_another_runtime_error_stays_a_traceback(capsys):
    """Under `ulimit -v`, PyTorch's CPU allocator raises a RuntimeError, not MemoryError."""
    from lab.cli import run_cli

    def oom(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 4294967296 bytes. Error code 12")
    with pytest.raises(SystemExit) as exit_:
        run_cli(oom, None, "x.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("x.py: error: out of memory;") and err.count("\n") == 1

    def bug(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes"):
        run_cli(bug, None, "x.py")
