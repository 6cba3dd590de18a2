"""Files that are not what they claim: out-of-range records, FIFOs, deep JSON, odd names, NaN weights."""
import json
import os

import pytest
import torch

from lab.errors import UserError
from lab.files import load_checkpoint, read_json
from lab.runs import record_problem


def record(**epoch):
    return {"config": {}, "meta": {}, "status": "running",
            "epochs": [{"epoch": 1, "train_loss": 0.5, "val_acc": 0.5, "seconds": 3.0, **epoch}]}


@pytest.mark.parametrize("field,value", [("val_acc", 5.0), ("train_loss", -3.0), ("seconds", -1000.0),
                                         ("train_acc", -0.1)])
def test_a_record_field_out_of_its_range_is_refused(field, value):
    assert field in (record_problem(record(**{field: value})) or "")


def test_a_diverged_epochs_nan_and_inf_losses_are_results_not_damage():
    assert record_problem(record(train_loss=float("nan"))) is None
    assert record_problem(record(train_loss=float("inf"))) is None


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_json(str(fifo), "delete it")
    with pytest.raises(UserError, match="not a regular file"):
        load_checkpoint(str(fifo), "delete it")


def test_a_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested deeper"):
        read_json(str(path), "delete it")


def test_an_image_folder_with_a_name_that_is_not_utf8_is_signed(tmp_path):
    from lab.datafiles import folder_signature
    name = os.fsdecode(b"img-\xff.png")
    path = tmp_path / name
    path.write_bytes(b"x")
    assert len(folder_signature([(str(path), 0)])) == 64


def test_imagenette_weights_with_a_nan_are_refused(tmp_path):
    from torchvision.models import resnet18
    import ex2_cam
    state = resnet18(weights=None).state_dict()
    state["fc.bias"][0] = float("nan")
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(UserError, match="non-finite"):
        ex2_cam.load_resnet18(str(tmp_path / "r18.pth"), torch.device("cpu"))


def test_force_never_deletes_a_published_run(mnist_dir, capsys):
    """--force with --out-dir inside results/: refused, the published run stays whole."""
    import ex1_mlp
    from conftest import ROOT
    out = os.path.join(ROOT, "results", "ex1_mlp")
    argv = ["--depth", "2", "--residual", "--out-dir", out, "--force", "--device", "cpu"]
    folder = next(f for f in os.listdir(out) if f.startswith("res1_d2_e21_s0_"))
    before = json.load(open(os.path.join(out, folder, "metrics.json")))
    with pytest.raises(UserError, match="never deletes a published run"):
        ex1_mlp.main(ex1_mlp.get_args(argv))
    assert json.load(open(os.path.join(out, folder, "metrics.json"))) == before


def test_a_flipped_byte_in_a_checkpoint_is_named_not_loaded(tmp_path):
    """torch.load does not check the archive's CRCs: a changed byte inside a weight loads as a
    different number. The checked loader verifies them and names the file."""
    import zipfile
    from lab.files import load_checkpoint
    path = tmp_path / "best.pt"
    torch.save({"model": {"w": torch.full((1000,), 0.0008)}}, path)
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    blob = bytearray(path.read_bytes())
    header = member.header_offset  # the local header: its name and extra-field lengths at 26 and 28
    start = header + 30 + int.from_bytes(blob[header + 26:header + 28], "little") + int.from_bytes(
        blob[header + 28:header + 30], "little")
    blob[start + 2001] ^= 0x40  # a byte of the 501st float
    path.write_bytes(bytes(blob))
    silently = torch.load(path, weights_only=True)["model"]["w"]
    assert silently[500] != silently[0]  # the damage torch.load lets through
    with pytest.raises(UserError, match="best.pt is damaged.*CRC"):
        load_checkpoint(str(path), "restore it")


def test_a_resume_on_other_data_is_refused(mnist_dir, tmp_path, capsys, monkeypatch):
    """The same files with the training labels shuffled: the run would finish as no
    uninterrupted run on either data would."""
    import shutil
    import numpy as np
    import ex1_mlp
    from conftest import assert_one_line_error, cli_in_process, write_idx
    from test_faults import interrupted_run, single
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    other = tmp_path / "other"
    shutil.copytree(mnist_dir, other)
    labels = other / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    write_idx(labels, np.random.default_rng(1).permutation(np.frombuffer(labels.read_bytes()[8:], np.uint8)))
    argv = single(str(other), tmp_path, "--epochs", "2")
    code, err = cli_in_process(ex1_mlp, argv, capsys)
    assert_one_line_error(code, err, "resume it with the --data-dir it started with")
    assert json.loads((folder / "metrics.json").read_text())["status"] == "running"
    record = ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path, "--epochs", "2")))
    assert record["status"] == "complete"


def test_another_runs_best_pt_in_an_interrupted_folder_is_refused(mnist_dir, tmp_path, capsys, monkeypatch):
    import shutil
    import ex1_mlp
    from conftest import assert_one_line_error, cli_in_process
    from test_faults import interrupted_run, single
    other = ex1_mlp.main(ex1_mlp.get_args(single(mnist_dir, tmp_path / "b", "--epochs", "2", "--seed", "1")))
    assert other["status"] == "complete"
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    shutil.copy(next((tmp_path / "b" / "runs").glob("*/best.pt")), folder / "best.pt")
    code, err = cli_in_process(ex1_mlp, single(mnist_dir, tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(code, err, "best.pt is not this run's checkpoint")
    assert json.loads((folder / "metrics.json").read_text())["status"] == "running"


def test_layer_stats_swapped_between_two_runs_are_refused(mnist_dir, tmp_path, capsys):
    """Both files are well-formed statistics of the same shape: only their run's identity in
    each tells that the curves would be drawn under each other's names."""
    import ex1_mlp
    from conftest import assert_one_line_error, cli_in_process
    from test_faults import TINY
    argv = TINY + ["--epochs", "1", "--sweep", "--depths", "2", "--variants", "plain,res1", "--seeds", "1",
                   "--workers", "1", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--fig-dir", str(tmp_path / "fig")]
    ex1_mlp.main(ex1_mlp.get_args(argv))
    a, b = sorted((tmp_path / "runs").glob(f"*/{ex1_mlp.STATS_FILE}"))
    first, second = a.read_bytes(), b.read_bytes()
    a.write_bytes(second), b.write_bytes(first)
    figures = {p: p.read_bytes() for p in (tmp_path / "fig").iterdir()}
    code, err = cli_in_process(ex1_mlp, argv + ["--plot-only"], capsys)
    assert_one_line_error(code, err, "holds layer statistics results of other settings")
    assert {p: p.read_bytes() for p in (tmp_path / "fig").iterdir()} == figures


@pytest.mark.parametrize("kwargs,message", [
    ({"width": 200_000, "depth": 2}, "width 200000, outside 0..100,000"),  # would allocate 40 GB
    ({"width": 8, "depth": 3}, "do not fit its arch"),                   # in range, but not its weights
])
def test_a_checkpoints_arch_is_checked_before_anything_is_allocated(kwargs, message, tmp_path):
    from lab.checkpoints import load_model
    from lab.files import save_atomic
    from models import MLP
    path = tmp_path / "best.pt"
    save_atomic({"model": MLP(8, 2).state_dict(), "arch": {"name": "MLP", "kwargs": kwargs}, "config": {}},
                str(path))
    with pytest.raises(UserError, match=message):
        load_model(str(path), torch.device("cpu"), MLP, "delete it")


def test_an_arch_big_on_the_meta_device_is_refused_by_its_weights_not_built(tmp_path, monkeypatch):
    """Within the bounds, a checkpoint's arch still never allocates more than its file holds."""
    import models
    from lab.checkpoints import load_model
    from lab.files import save_atomic
    built = []
    monkeypatch.setattr(models.MLP, "__init__", lambda self, *a, **k: (
        built.append(torch.empty(0).device.type), torch.nn.Module.__init__(self))[1])
    path = tmp_path / "best.pt"
    save_atomic({"model": {"w": torch.zeros(2)}, "arch": {"name": "MLP", "kwargs": {"width": 90_000}},
                 "config": {}}, str(path))
    with pytest.raises(UserError, match="do not fit its arch"):
        load_model(str(path), torch.device("cpu"), models.MLP, "delete it")
    assert built == ["meta"]


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_mnist_download_leaves_nothing_behind(existed, tmp_path, monkeypatch):
    """torchvision makes MNIST/raw/ before its first request; offline, that tree stayed."""
    from urllib.error import URLError
    import torchvision.datasets.mnist
    from data import load_mnist
    from lab.errors import DataError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    data_dir = tmp_path / "data"
    if existed:
        data_dir.mkdir()
        (data_dir / "mine.txt").write_text("a user's file")
    with pytest.raises(DataError, match="MNIST not found"):
        load_mnist(str(data_dir), torch.device("cpu"))
    assert sorted(os.listdir(data_dir)) == ["mine.txt"] if existed else not data_dir.exists()


def test_a_plot_only_clears_what_a_killed_plot_only_left_in_the_figures_folder(mnist_dir, tmp_path):
    import ex1_mlp
    from test_faults import sweep
    argv = sweep(mnist_dir, tmp_path)
    ex1_mlp.main(ex1_mlp.get_args(argv))
    dead, alive = (tmp_path / "fig" / f".tmp-{pid}-abc" for pid in (2 ** 22 + 1, os.getpid()))
    for path in (dead, alive):  # a figure's temporary file of a killed process, and of a live one
        path.write_bytes(b"half a PNG")
    ex1_mlp.main(ex1_mlp.get_args(argv + ["--plot-only"]))
    assert not dead.exists() and alive.exists()


def test_a_last_pt_left_in_a_finished_run_is_removed_by_the_next_run(mnist_dir, tmp_path, monkeypatch):
    """kill -9 between the record's 'complete' and the removal of last.pt."""
    import shutil
    import ex1_mlp
    from test_faults import interrupted_run, single
    folder = interrupted_run(mnist_dir, tmp_path, monkeypatch)
    shutil.copy(folder / "last.pt", tmp_path / "last.pt")
    argv = ex1_mlp.get_args(single(mnist_dir, tmp_path, "--epochs", "2"))
    finished = ex1_mlp.main(argv)
    shutil.copy(tmp_path / "last.pt", folder / "last.pt")
    assert ex1_mlp.main(argv) == finished
    assert not (folder / "last.pt").exists()


def test_a_packed_tensor_comes_back_exact_and_a_short_one_is_refused():
    from lab.kinds import packed, unpacked
    t = torch.randn(3, 5)
    assert torch.equal(unpacked(packed(t)), t)
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    assert torch.equal(unpacked(packed(images)), images)
    cut = {**packed(t), "shape": [3, 6]}  # claims more than its bytes hold
    with pytest.raises(ValueError, match="not its shape"):
        unpacked(cut)


@pytest.mark.parametrize("script", ["ex1_mlp", "ex1_cnn"])
def test_missing_data_names_the_users_way_first_and_our_copy_last(script, tmp_path, capsys, monkeypatch):
    """A user has no ../shared: the download and the folder layout come first."""
    import importlib
    from conftest import assert_one_line_error, cli_in_process
    from lab import datafiles
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline
    module = importlib.import_module(script)
    argv = ["--epochs", "1", "--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "r")]
    code, err = cli_in_process(module, argv, capsys)  # settings never published: it must train
    assert_one_line_error(code, err, "could not download it")
    layout = "ubyte" if script == "ex1_mlp" else "cifar10-jpeg"
    assert err.index("rerun with a network") < err.index(layout) < err.index("../shared/datasets")


def test_a_saved_analysis_missing_what_its_figure_reads_is_one_line(tmp_path):
    """Settings and inputs right, content wrong: the decoder's KeyError is named, not a traceback."""
    from lab.outputs import read_analysis, save_analysis
    path = str(tmp_path / "cifar10.json")
    save_analysis(path, "cifar10", {"seed": 0}, {"best.pt": "ab"}, {"caption": "no title here"})
    with pytest.raises(UserError, match="is not a saved cifar10 result of this code .KeyError"):
        read_analysis(path, "cifar10", {"seed": 0}, {"best.pt": "ab"}, "python ex2_cam.py cifar10",
                      lambda c: (c["title"], c["caption"]))
