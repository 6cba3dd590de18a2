"""Nothing silently wrong: a result is what its files say it is, or a one-line refusal
(issue 20, items numbered as there; 4, 5 and 8 are in test_checked_io and test_readme)."""
import json
import os

import numpy as np
import pytest
import torch

import ex1_cnn
import ex1_mlp
import ex2_cam
import ex2_why
from conftest import assert_one_line_error, cli_in_process
from data import load_cifar10
from lab.errors import DataError
from test_checked_io import run_with_file_limit
from test_faults import interrupted_run, run_folder, single, sweep

CPU = torch.device("cpu")


@pytest.mark.slow
def test_a_plot_only_cut_by_a_failed_write_leaves_every_figure_as_it_was(mnist_dir, tmp_path):
    argv = sweep(mnist_dir, tmp_path, "--depths", "2,8")
    ex1_mlp.main(ex1_mlp.get_args(argv))
    before = {p: p.read_bytes() for p in (tmp_path / "fig").iterdir()}
    assert any(p.suffix == ".png" and len(b) > 20_000 for p, b in before.items())
    code, err = run_with_file_limit("ex1_mlp.py", argv + ["--plot-only"], limit=20_000)
    assert_one_line_error(code, err, "File too large")
    assert {p: p.read_bytes() for p in (tmp_path / "fig").iterdir()} == before  # no debris either


def tiny_cnn_sweep(cifar_folder, runs):
    ex1_cnn.main(ex1_cnn.get_args(["--sweep", "--blocks-list", "1", "--seeds", "1", "--epochs", "1",
                                   "--width", "4", "--val-size", "10", "--batch-size", "8", "--device", "cpu",
                                   "--workers", "1", "--data-dir", cifar_folder, "--out-dir", str(runs)]))
    return {p.name.split("_")[0]: p for p in runs.iterdir() if p.name != "figures"}


SWAPPED = "is not the checkpoint of the run in its folder"


def test_a_checkpoint_swapped_between_run_folders_is_refused(cifar_folder, tmp_path, capsys):
    folders = tiny_cnn_sweep(cifar_folder, tmp_path / "runs")
    plain, res = (folders[k] / "best.pt" for k in ("plain", "res"))
    a, b = plain.read_bytes(), res.read_bytes()
    plain.write_bytes(b), res.write_bytes(a)
    argv = ["gradients", "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--data-dir", cifar_folder,
            "--fig-dir", str(tmp_path / "fig"), "--device", "cpu"]
    assert_one_line_error(*cli_in_process(ex2_why, argv, capsys), SWAPPED)
    argv = ["cifar10", "--checkpoint", str(res), "--data-dir", cifar_folder, "--fig-dir", str(tmp_path / "f")]
    assert_one_line_error(*cli_in_process(ex2_cam, argv, capsys), SWAPPED)


def test_a_lost_best_pt_is_not_a_complete_run(mnist_dir, tmp_path, capsys, monkeypatch):
    """Lost, best.pt is rebuilt only where last.pt holds its weights (the best epoch is the last
    finished one, as a kill between the two renames leaves it); else the run is refused."""
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    state = torch.load(folder / "last.pt", weights_only=True)
    state["record"]["epochs"][-1]["val_acc"] = state["best_val"] - 0.01  # the best was an earlier epoch
    torch.save(state, folder / "last.pt")
    (folder / "best.pt").unlink()
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(code, err, "best.pt is missing")
    assert json.loads((folder / "metrics.json").read_text())["status"] == "running"


def test_debris_of_a_killed_write_is_removed_at_the_next_start(mnist_dir, tmp_path, monkeypatch,
                                                                  cifar_folder):
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    (folder / ".tmp-abc123").write_bytes(b"half a checkpoint")
    record = ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path, "--epochs", "2")))
    assert record["status"] == "complete"
    assert not list(folder.glob(".tmp-*"))
    # the CIFAR cache's: a writer that is gone (no such process) left it; a live one's stays
    dead, alive = (os.path.join(cifar_folder, f".tmp-{pid}-x") for pid in (2 ** 22 + 1, os.getpid()))
    for path in (dead, alive):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
    load_cifar10(cifar_folder, CPU, n_val=10)
    assert not os.path.exists(dead) and os.path.exists(alive)


def test_a_resume_on_other_threads_is_refused(mnist_dir, tmp_path, capsys, monkeypatch):
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    state = torch.load(folder / "last.pt", weights_only=True)
    state["record"]["meta"].update(hardware="CPU (x86_64, 2 cores, 2 threads per process)", threads=2)
    torch.save(state, folder / "last.pt")
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(code, err, "trained with 2 threads per process, this process has 1")


def test_a_16_bit_png_is_converted_by_its_high_byte_and_an_empty_class_is_refused(cifar_folder, capsys):
    from PIL import Image
    grey = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    path = os.path.join(cifar_folder, "test", "cat", "0003.png")
    Image.fromarray(grey).save(path)
    ds = load_cifar10(cifar_folder, CPU, n_val=10)
    index = sorted(os.listdir(os.path.join(cifar_folder, "test", "cat"))).index("0003.png")
    image = ds.test.x[3 * 2 + index]  # class 3, its 2 test images in name order
    assert torch.equal(image[0], torch.from_numpy((grey >> 8).astype(np.uint8)))
    assert "16-bit grey image(s)" in capsys.readouterr().err
    for f in os.listdir(os.path.join(cifar_folder, "train", "dog")):
        os.remove(os.path.join(cifar_folder, "train", "dog", f))
    with pytest.raises(DataError, match="train/dog holds no images"):
        load_cifar10(cifar_folder, CPU, n_val=10)


def test_a_sweep_whose_runs_are_all_started_elsewhere_says_so(mnist_dir, tmp_path, capsys, monkeypatch):
    interrupted_run(mnist_dir, tmp_path, monkeypatch)
    argv = single(mnist_dir, tmp_path, "--epochs", "2", "--sweep", "--depths", "2", "--variants", "plain",
                  "--seeds", "1", "--plot-only", "--fig-dir", str(tmp_path / "fig"))
    code, err = cli_in_process(ex1_mlp, argv, capsys)
    assert_one_line_error(code, err, "has finished yet: 1 started")
    assert "with the same flags first" not in err


def test_workers_are_reported_as_the_processes_that_ran(mnist_dir, tmp_path, capsys):
    ex1_mlp.main(ex1_mlp.get_args(sweep(mnist_dir, tmp_path, "--workers", "200")))
    out = capsys.readouterr().out
    assert "(1 process of 1 thread)" in out and "200" not in out


def test_force_on_a_symlinked_run_folder_names_it(mnist_dir, tmp_path, capsys):
    ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path)))
    folder = run_folder(tmp_path)
    target = tmp_path / "elsewhere"
    folder.rename(target)
    folder.symlink_to(target)
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--force"), capsys)
    assert_one_line_error(code, err, f"{folder} is a symbolic link")
    assert target.exists()


def exits_with_3(job, context):
    os._exit(3)


def no_setup(setup_args):
    return None


@pytest.mark.slow
def test_a_worker_killed_without_a_word_is_not_said_to_have_printed(capsys):
    from lab.sweeps import run_jobs
    from lab.errors import UserError
    with pytest.raises(UserError, match="it exited with code 3"):
        run_jobs(exits_with_3, [1, 2], 2, CPU, 1, "test", setup=no_setup, setup_args=None)


def test_a_corrupt_cifar_batches_folder_is_not_reported_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cifar-10-batches-py is corrupt or incomplete"):
        load_cifar10(str(tmp_path), CPU, n_val=10)


def test_a_failed_imagenette_download_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from torchvision.models import resnet18
    import torchvision.datasets.imagenette as imagenette
    def no_network(url, download_root, *args, **kwargs):  # torchvision makes the folder, then fails
        os.makedirs(download_root, exist_ok=True)
        raise OSError("no network")

    monkeypatch.setattr(imagenette, "download_and_extract_archive", no_network)
    weights = tmp_path / "r.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    argv = ["imagenette", "--data-dir", str(tmp_path / "none"), "--weights", str(weights),
            "--fig-dir", str(tmp_path / "fig")]
    assert_one_line_error(*cli_in_process(ex2_cam, argv, capsys), "Imagenette")
    assert not (tmp_path / "none").exists()



def test_a_run_without_data_leaves_no_empty_folder_and_tensorboard_on_a_finished_run_says_so(
        tmp_path, capsys, monkeypatch, mnist_dir):
    from lab import datafiles
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline
    out = tmp_path / "new" / "runs"
    argv = ["--depth", "3", "--data-dir", str(tmp_path / "none"), "--out-dir", str(out)]
    code, err = cli_in_process(ex1_mlp, argv, capsys)
    assert code == 2 and not (tmp_path / "new").exists()
    argv = single(mnist_dir, tmp_path, "--epochs", "1")
    ex1_mlp.main(ex1_mlp.get_args(argv))
    capsys.readouterr()
    ex1_mlp.main(ex1_mlp.get_args(argv + ["--tensorboard", str(tmp_path / "tb")]))
    assert "--tensorboard: nothing logged, the run is finished" in capsys.readouterr().out


def test_a_closed_stderr_or_an_ascii_locale_fails_no_command(mnist_dir, tmp_path):
    """`2>&-` (no stderr at all) and `LC_ALL=C PYTHONUTF8=0` (an ASCII terminal and locale): the
    run trains and says its result, the README's tables are drawn, exit code 0."""
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, os.path.join(ROOT, "ex1_mlp.py"), "--depth", "2", "--epochs", "1",
           "--val-size", "50", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs")]
    closed = subprocess.run(run, stdout=subprocess.PIPE, text=True, env=env, timeout=120,
                            preexec_fn=lambda: os.close(2))  # as `2>&-`
    assert closed.returncode == 0 and "test accuracy" in closed.stdout
    ascii_env = dict(env, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    plot = [sys.executable, os.path.join(ROOT, "ex1_mlp.py"), "--sweep", "--plot-only", "--depths", "32",
            "--variants", "plain", "--fig-dir", str(tmp_path / "fig")]  # one committed column: fewer figures
    drawn = subprocess.run(plot, capture_output=True, env=ascii_env, timeout=120)
    assert drawn.returncode == 0, drawn.stderr.decode(errors="replace")[-300:]
    assert "±".encode() in (tmp_path / "fig" / "ex1_mlp_table.md").read_bytes()  # files stay UTF-8


@pytest.mark.parametrize("script, argv", [
    ("ex2_cam.py", ["cifar10", "--plot-only", "--checkpoint", b"/nonexistent/\xff.pt"]),
    ("ex2_why.py", ["--plot-only", "--runs-dir", b"/nonexistent/\xffruns"]),
])
def test_a_file_name_that_is_not_utf8_is_named_in_one_line(script, argv):
    """A name the shell passes as bytes (here 0xff) is printed escaped in one line, never a
    UnicodeEncodeError (issue 39; on our machine the older code printed it too)."""
    from conftest import cli_subprocess
    code, out = cli_subprocess(script, [os.fsdecode(a) if isinstance(a, bytes) else a for a in argv])
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert code == 2 and len(errors) == 1 and "\\udcff" in errors[0] and "Traceback" not in out
