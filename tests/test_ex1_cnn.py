from lab import datafiles
from lab import outputs
import os
import shutil

import pytest
import torch

import ex1_cnn
from conftest import (CIFAR_PER_CLASS, assert_one_line_error, cifar_images, cli_in_process, kill_in_epoch,
                      cli_subprocess, make_cifar_official)
from data import load_cifar10
from lab.errors import DataError

CPU = torch.device("cpu")
TINY = ["--blocks", "1", "--width", "4", "--epochs", "1", "--val-size", "10", "--batch-size", "8",
        "--device", "cpu"]


def test_image_folder_copy_goes_through_the_real_loader_and_is_cached(cifar_folder, monkeypatch):
    ds = load_cifar10(cifar_folder, CPU, n_val=10)
    assert ds.source == "CIFAR-10 (JPEG copy)"
    n_train = 10 * CIFAR_PER_CLASS["train"]
    assert len(ds.train) + len(ds.val) == n_train and len(ds.test) == 10 * CIFAR_PER_CLASS["test"]
    assert ds.train.x.shape[1:] == (3, 32, 32) and ds.train.x.dtype == torch.uint8
    # PNG is lossless: every decoded image is the one written, with its label
    images, labels = cifar_images(n_train, seed=len("train"))
    written = {bytes(torch.from_numpy(img).permute(2, 0, 1).contiguous().numpy()): c
               for img, c in zip(images, labels)}
    for x, y in zip(ds.train.x, ds.train.y):
        assert written[bytes(x.numpy())] == y
    monkeypatch.setattr(datafiles, "decode_images", lambda *a: pytest.fail("decoded again"))
    again = load_cifar10(cifar_folder, CPU, n_val=10)
    assert torch.equal(again.train.x, ds.train.x)


def test_torchvision_format_goes_through_the_real_loader(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *args: True)  # our files, not the real md5s
    ds = load_cifar10(make_cifar_official(str(tmp_path)), CPU, n_val=10)
    assert ds.source == "CIFAR-10"
    assert len(ds.train) + len(ds.val) == 100 and len(ds.test) == 20
    images, labels = cifar_images(20, seed=5)
    assert torch.equal(ds.test.x[3], torch.from_numpy(images[3]).permute(2, 0, 1))
    assert ds.test.y[3] == labels[3]


def test_missing_class_folder_and_unreadable_image(cifar_folder):
    os.rename(os.path.join(cifar_folder, "test", "cat"), os.path.join(cifar_folder, "test", "kat"))
    with pytest.raises(DataError, match="cat"):
        load_cifar10(cifar_folder, CPU, n_val=10)
    os.rename(os.path.join(cifar_folder, "test", "kat"), os.path.join(cifar_folder, "test", "cat"))
    bad = os.path.join(cifar_folder, "train", "dog", "0005.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match="0005.png"):
        load_cifar10(cifar_folder, CPU, n_val=10)


def test_cache_is_not_used_once_an_image_has_changed(cifar_folder):
    load_cifar10(cifar_folder, CPU, n_val=10)  # builds the decoded cache
    folder = os.path.join(cifar_folder, "test", "cat")
    name = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, name), "wb") as f:  # same files, so a count cannot tell
        f.write(b"not an image")
    with pytest.raises(DataError, match=name):
        load_cifar10(cifar_folder, CPU, n_val=10)


def test_warmup_cosine_schedule():
    from training import warmup_cosine
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_main_one_epoch_end_to_end(cifar_folder, tmp_path):
    out = tmp_path / "runs"
    record = ex1_cnn.main(ex1_cnn.get_args(TINY + ["--residual", "--data-dir", cifar_folder,
                                                   "--out-dir", str(out)]))
    assert record["status"] == "complete"
    assert record["epochs"][0]["seconds"] > 0  # the time per epoch is part of the record
    folder = out / ex1_cnn.run_name(record["config"])
    assert folder.name.startswith("res_n1_e1_s0_")
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    assert ckpt["config"]["residual"] and ckpt["epoch"] == 1 and "val_acc" in ckpt
    from models import build_model
    model = build_model(ckpt["arch"])  # the checkpoint alone rebuilds its network
    model.load_state_dict(ckpt["model"])
    # the reported test accuracy is that of the saved best-validation checkpoint
    from data import batches, normalize_images
    from training import evaluate
    test = load_cifar10(cifar_folder, CPU, n_val=10).test
    accuracy = evaluate(model, batches(test, 7, transform=normalize_images))["acc"]
    assert accuracy == pytest.approx(record["test_acc"])


def test_partial_sweep_writes_beside_its_runs_never_the_readme(cifar_folder, tmp_path, capsys):
    published = (outputs.README, os.path.join(outputs.FIGURES_DIR, "ex1_cnn_table.md"))
    before = {p: open(p, "rb").read() for p in published}
    argv = TINY + ["--sweep", "--blocks-list", "1", "--seeds", "1", "--data-dir", cifar_folder,
                   "--out-dir", str(tmp_path / "runs"), "--workers", "1"]
    ex1_cnn.main(ex1_cnn.get_args(argv))
    assert f"written to {tmp_path / 'runs' / 'figures'}/" in capsys.readouterr().out
    assert (tmp_path / "runs" / "figures" / "ex1_cnn_table.md").exists()
    assert all(open(p, "rb").read() == content for p, content in before.items())
    assert not ex1_cnn.is_readme_sweep(ex1_cnn.get_args(argv))
    assert ex1_cnn.is_readme_sweep(ex1_cnn.get_args(["--sweep", "--cpu", "--workers", "1"]))


def test_sweep_then_plot_only(cifar_folder, tmp_path):
    argv = TINY + ["--sweep", "--blocks-list", "1,2", "--seeds", "1", "--data-dir", cifar_folder,
                   "--out-dir", str(tmp_path / "runs"), "--fig-dir", str(tmp_path / "fig")]
    ex1_cnn.main(ex1_cnn.get_args(argv))
    table = (tmp_path / "fig" / "ex1_cnn_table.md").read_text()
    assert "| 8 | plain |" in table and "| 14 | residual |" in table and "JPEG copy" in table
    os.remove(tmp_path / "fig" / "ex1_cnn_curves.png")
    ex1_cnn.main(ex1_cnn.get_args(argv + ["--plot-only"]))
    assert (tmp_path / "fig" / "ex1_cnn_curves.png").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["--blocks", "0"], "--blocks: must be an integer from 1"),
    (["--width", "0"], "--width: must be an integer from 1"),
    (["--batch-size", "0"], "--batch-size: must be an integer from 1"),
    (["--data-dir", "{tmp}/none"], "CIFAR-10 not found"),
    (["--sweep", "--plot-only", "--epochs", "3"], "results: `python ex1_cnn.py --sweep --cpu --plot-only`"),
    (["--sweep", "--shard", "2/2"], "--shard: K/N needs 0 <= K < N"),
    (["--shard", "0/2"], "--plot-only and --shard go with --sweep"),
    (["--data-dir", "{cifar}", "--val-size", "10", "--train-subset", "1000"], "exceeds"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, cifar_folder, capsys, monkeypatch):
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{cifar}", cifar_folder) for a in argv]
    argv += ["--out-dir", str(tmp_path / "runs"), "--fig-dir", str(tmp_path / "fig")]
    assert_one_line_error(*cli_in_process(ex1_cnn, argv, capsys), message)


@pytest.mark.slow
def test_broken_folder_errors_through_a_real_process(cifar_folder, tmp_path):
    shutil.rmtree(os.path.join(cifar_folder, "train", "frog"))
    code, stderr = cli_subprocess("ex1_cnn.py", ["--data-dir", cifar_folder, "--out-dir", str(tmp_path)])
    assert_one_line_error(code, stderr, "frog")


def _record(status, test_acc, last_epoch):
    return {"status": status, "test_acc": test_acc, "epochs": [last_epoch],
            "meta": {"data": "CIFAR-10", "hardware": "CPU"}}


def _found(args, records, residual=True):
    return [(ex1_cnn.run_config(args, 1, residual, seed), r, None) for seed, r in enumerate(records)]


def test_diverged_runs_are_left_out_of_the_means_and_counted():
    args = ex1_cnn.get_args(["--blocks-list", "1"])
    found = _found(args, [_record("complete", 0.8, {"train_loss": 0.5, "val_acc": 0.7}),
                          _record("complete", 0.6, {"train_loss": 0.7, "val_acc": 0.5}),
                          _record("diverged", None, {"train_loss": float("nan")})])
    table = ex1_cnn.make_table(found, args, missing=0)
    # means of the two runs with a result, never a diverged run counted as accuracy 0 or NaN
    assert ("| 8 | residual | 0.600 ± 0.141 (1 diverged) | 0.600 ± 0.141 (1 diverged) "
            "| 0.700 ± 0.141 (1 diverged) |") in table


def test_table_reports_the_saved_time_per_epoch_and_in_all():
    def timed(*seconds):
        return {"status": "complete", "test_acc": 0.5, "meta": {"data": "CIFAR-10", "hardware": "CPU"},
                "epochs": [{"train_loss": 1.0, "val_acc": 0.5, "seconds": s} for s in seconds]}
    args = ex1_cnn.get_args(["--blocks-list", "1"])
    table = ex1_cnn.make_table(_found(args, [timed(600, 600), timed(2400, 1200)], residual=False), args,
                               missing=3)
    assert "| 900 ± 424 |" in table  # the fastest epochs: 600 and 1200 s
    assert "took 80 CPU-process minutes in all, 60 if every epoch had been its run's fastest" in table
    assert "over 2 seeds" in table and "3 runs of the sweep not finished yet" in table


@pytest.mark.parametrize("argv,epochs,seeds", [
    ([], 40, 3), (["--cpu"], 8, 3), (["--cpu", "--seeds", "3"], 8, 3), (["--cpu", "--seeds", "1"], 8, 1),
    (["--cpu", "--epochs", "40"], 40, 3), (["--epochs", "8"], 8, 3),
])
def test_the_cpu_preset_never_overrides_a_flag_that_was_given(argv, epochs, seeds):
    args = ex1_cnn.get_args(argv)
    assert (args.epochs, args.seeds) == (epochs, seeds)
    assert len({c["seed"] for c in ex1_cnn.sweep_configs(args)}) == seeds


def test_shards_of_a_sweep_train_disjoint_runs_that_plot_together(cifar_folder, tmp_path):
    argv = TINY + ["--sweep", "--blocks-list", "1", "--seeds", "2", "--data-dir", cifar_folder,
                   "--workers", "1"]
    names = []
    for k in range(3):  # three "machines", each with its own run folder
        ex1_cnn.main(ex1_cnn.get_args(argv + ["--shard", f"{k}/3", "--out-dir", str(tmp_path / f"m{k}")]))
        names += [p.name for p in (tmp_path / f"m{k}").iterdir() if p.name != "figures"]
    assert len(names) == len(set(names)) == 4  # each run trained by exactly one shard
    merged = tmp_path / "merged"  # merging is copying the run folders into one --out-dir
    for k in range(3):
        shutil.copytree(tmp_path / f"m{k}", merged, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("figures"))
    ex1_cnn.main(ex1_cnn.get_args(argv + ["--plot-only", "--out-dir", str(merged), "--fig-dir",
                                          str(tmp_path / "fig")]))
    table = (tmp_path / "fig" / "ex1_cnn_table.md").read_text()
    assert "over 2 seeds" in table and "not finished" not in table


def test_a_long_cpu_run_says_so_before_it_trains(cifar_folder, tmp_path, capsys, monkeypatch):
    """Before its first epoch, and only when it trains: a finished run says nothing of hours."""
    import training
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["--device", "cpu", "--width", "4", "--val-size", "10", "--data-dir", cifar_folder,
            "--out-dir", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        ex1_cnn.main(ex1_cnn.get_args(argv))
    out = capsys.readouterr().err
    assert "note: 40 epochs on a CPU: about" in out and "--cpu trains the 8-epoch CPU preset" in out


def test_an_interrupted_cnn_run_resumes_to_the_uninterrupted_metrics(cifar_folder, tmp_path, monkeypatch):
    """The scheduler, the optimizer and the augmentation RNG all come back from last.pt."""
    argv = TINY[:] + ["--residual", "--data-dir", cifar_folder]
    argv[argv.index("--epochs") + 1] = "3"
    whole = ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(tmp_path / "whole")]))
    kill_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(tmp_path / "cut")]))
    monkeypatch.undo()
    resumed = ex1_cnn.main(ex1_cnn.get_args(argv + ["--out-dir", str(tmp_path / "cut")]))
    untimed = [[{k: v for k, v in e.items() if not k.endswith("seconds")} for e in r["epochs"]]
               for r in (whole, resumed)]
    assert untimed[0] == untimed[1] and whole["test_acc"] == resumed["test_acc"]


def test_an_image_replaced_with_its_old_mtime_restored_is_decoded_again(cifar_folder):
    """An image edited in place (same size), its modification time set back: the loader decodes
    the folder again (and finds the edit) instead of reading the stale cache."""
    import time
    first = load_cifar10(cifar_folder, CPU, n_val=10)  # builds the decoded cache
    folder = os.path.join(cifar_folder, "test", "cat")
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    st = os.stat(path)
    time.sleep(0.01)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        again = load_cifar10(cifar_folder, CPU, n_val=10)
    except DataError as e:  # the edit broke the file: named, so decoded again
        assert os.path.basename(path) in str(e)
    else:
        assert not torch.equal(first.test.x, again.test.x)
