from lab import datafiles
import json
import os
import shutil

import pytest
import torch

import ex1_mlp
import training
from conftest import ROOT, assert_one_line_error, cli_in_process, cli_subprocess
from lab.errors import UserError

TINY = ["--width", "8", "--epochs", "1", "--val-size", "50", "--batch-size", "32", "--device", "cpu"]


def run_main(argv):
    return ex1_mlp.main(ex1_mlp.get_args(argv))


def folder_of(argv, out):
    """The run folder a single run of `argv` writes below `out`."""
    args = ex1_mlp.get_args(argv)
    config = ex1_mlp.run_config(args, args.depth, args.seed, args.residual, args.layers_per_block,
                                args.rezero)
    return out / ex1_mlp.run_name(config)


def test_main_trains_one_epoch_and_writes_its_run(mnist_dir, tmp_path):
    out = tmp_path / "runs"
    argv = TINY + ["--depth", "4", "--residual", "--layers-per-block", "2", "--data-dir", mnist_dir,
                   "--out-dir", str(out)]
    record = run_main(argv)
    folder = folder_of(argv, out)
    assert folder.name.startswith("res2_d4_e1_s0_")
    assert record["status"] == "complete" and len(record["epochs"]) == 1 and record["best_epoch"] == 1
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert not (folder / "last.pt").exists()  # only kept while a run is unfinished
    # the checkpoint alone rebuilds its network, read without unpickling code
    import models
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    model = models.build_model(ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    assert len(model.blocks) == 2 and ckpt["config"] == record["config"]


def test_learns_the_synthetic_task(mnist_dir, tmp_path):
    record = run_main(TINY[:2] + ["--epochs", "5", "--val-size", "50", "--batch-size", "16",
                                  "--lr", "3e-3", "--depth", "2", "--residual",
                                  "--data-dir", mnist_dir, "--out-dir", str(tmp_path)])
    assert record["best_val_acc"] > 0.5  # chance is 0.1


def test_divergence_is_recorded_not_raised(mnist_dir, tmp_path):
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path), "--lr", "1e30"]
    record = run_main(argv)
    assert record["status"] == "diverged"
    assert record.get("test_acc") is None and not (folder_of(argv, tmp_path) / "best.pt").exists()


def test_a_non_finite_validation_loss_is_divergence_and_never_the_best(mnist_dir, tmp_path, monkeypatch):
    # what --lr 1e6 did to the CNN: a finite training loss, then NaN on validation
    monkeypatch.setattr(training, "evaluate", lambda model, batches: {"loss": float("nan"), "acc": 0.1})
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path)]
    record = run_main(argv)
    assert record["status"] == "diverged" and record.get("test_acc") is None
    assert not (folder_of(argv, tmp_path) / "best.pt").exists()


def test_a_finished_run_is_not_trained_again_unless_forced(mnist_dir, tmp_path, monkeypatch, capsys):
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path)]
    first = run_main(argv)
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    assert run_main(argv) == first
    assert "holds this finished run (--force trains it again)" in capsys.readouterr().out
    monkeypatch.undo()
    assert run_main(argv + ["--force"])["status"] == "complete"


def test_a_single_run_never_overwrites_a_run_with_other_settings(mnist_dir, tmp_path):
    only_plain_2 = ["--seeds", "1", "--depths", "2", "--variants", "plain"]
    sweep = run_main(sweep_argv(mnist_dir, tmp_path) + only_plain_2)
    saved = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    run_main(TINY + ["--depth", "2", "--epochs", "2", "--data-dir", mnist_dir,
                     "--out-dir", str(tmp_path / "runs")])  # same network, more epochs: another folder
    assert all(p.read_bytes() == content for p, content in saved.items())
    assert sweep is None and len([p for p in (tmp_path / "runs").iterdir() if p.name != "figures"]) == 2


def sweep_argv(mnist_dir, tmp_path):
    return TINY + ["--sweep", "--depths", "2,4", "--variants", "plain,res2", "--seeds", "2",
                   "--workers", "1", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--fig-dir", str(tmp_path / "fig")]


def test_sweep_writes_table_and_figures_and_resumes(mnist_dir, tmp_path, monkeypatch):
    run_main(sweep_argv(mnist_dir, tmp_path))
    table = (tmp_path / "fig" / "ex1_mlp_table.md").read_text()
    assert "residual, 2 layers/block" in table and "±" in table
    rows = [line for line in table.splitlines() if line.startswith(("| 2 |", "| 4 |"))]
    assert len(rows) == 2
    for name in ("depth", "curves", "gradients", "activations"):
        assert (tmp_path / "fig" / f"ex1_mlp_{name}.png").stat().st_size > 0

    # a kill -9 mid-run leaves a run with status 'running' and no best.pt: only it is redone
    victim = next((tmp_path / "runs").glob("plain_d4_e1_s1_*"))
    record = json.loads((victim / "metrics.json").read_text())
    record.update(status="running", epochs=[])
    (victim / "metrics.json").write_text(json.dumps(record))
    trained = []
    real_train = ex1_mlp.train
    monkeypatch.setattr(ex1_mlp, "train",
                        lambda config, *a, **k: trained.append(config) or real_train(config, *a, **k))
    run_main(sweep_argv(mnist_dir, tmp_path))
    assert [ex1_mlp.run_name(c) for c in trained] == [victim.name]


def untimed(epochs):
    return [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in epochs]


def test_interrupted_run_resumes_from_its_last_epoch(mnist_dir, tmp_path, monkeypatch):
    argv = TINY + ["--epochs", "3", "--depth", "2", "--data-dir", mnist_dir]
    whole = run_main(argv + ["--out-dir", str(tmp_path / "whole")])

    real_epoch, calls = training.train_one_epoch, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands for kill -9: nothing after this point runs
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run_main(argv + ["--out-dir", str(tmp_path / "cut")])
    saved = json.loads((folder_of(argv, tmp_path / "cut") / "metrics.json").read_text())
    assert saved["status"] == "running" and len(saved["epochs"]) == 2

    calls.clear()
    resumed = run_main(argv + ["--out-dir", str(tmp_path / "cut")])
    assert len(calls) == 1  # only epoch 3 was trained again
    # model, optimizer and RNG state all restored: the same numbers, apart from the wall time
    assert untimed(resumed["epochs"]) == untimed(whole["epochs"])
    assert resumed["test_acc"] == whole["test_acc"]


@pytest.mark.parametrize("argv,message", [
    (["--depth", "0"], "--depth: must be an integer from 1"),
    (["--depth", "7", "--residual", "--layers-per-block", "2"], "not a multiple"),
    (["--sweep", "--depths", "3", "--variants", "res2"], "--depths 3 is not a multiple"),
    (["--width", "-3"], "--width: must be an integer from 1"),
    (["--epochs", "0"], "--epochs: must be an integer from 1"),
    (["--lr", "-1"], "--lr: must be a number in (0,"),
    (["--device", "tpu"], "invalid choice"),
    (["--data-dir", "{tmp}/missing"], "MNIST not found"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # offline
    # --epochs 1: settings of no published run, which would be printed without reading any data
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out-dir", str(tmp_path), "--epochs", "1"]
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), message)


@pytest.mark.slow
def test_cli_error_from_a_real_process(tmp_path):
    code, stderr = cli_subprocess("ex1_mlp.py", ["--epochs", "1", "--data-dir", str(tmp_path / "none"),
                                                 "--out-dir", str(tmp_path / "runs")])
    assert_one_line_error(code, stderr, "MNIST not found")


def test_table_keeps_the_result_of_a_run_that_diverged_after_validating():
    meta = {"data": "MNIST", "hardware": "CPU"}
    found = {("plain", 2): [{"status": "complete", "test_acc": 0.9, "meta": meta},
                            {"status": "diverged", "test_acc": 0.5, "meta": meta}],
             ("plain", 8): [{"status": "diverged", "meta": meta}]}
    table = ex1_mlp.make_table(found, ex1_mlp.get_args(["--depths", "2,8", "--variants", "plain"]))
    assert "| 2 | 0.700 ± 0.283 (1 diverged) |" in table and "| 8 | - (1 diverged) |" in table


def _init_stats(variant, depth, seed=0):
    """layer_stats of a freshly initialized MLP of `variant` on a random batch."""
    from models import MLP
    residual, layers_per_block, rezero = ex1_mlp.VARIANTS[variant]
    torch.manual_seed(seed)
    model = MLP(16, depth, layers_per_block=layers_per_block, residual=residual, rezero=rezero)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    return ex1_mlp.layer_stats(model, x, y)


def test_at_initialization_the_residual_stream_grows_per_block_and_rezero_keeps_it_flat():
    rms = _init_stats("res1", 32)["activation_rms"]
    ratios = [b / a for a, b in zip(rms, rms[1:])]
    assert all(r > 1.05 for r in ratios)  # every block adds a non-negative relu(Wx + b)
    assert rms[-1] / rms[0] > 10  # so the growth compounds: geometric in depth
    flat = _init_stats("res1-rezero", 32)["activation_rms"]
    assert flat == pytest.approx([flat[0]] * len(flat))  # every gated block is the identity
    plain = _init_stats("plain", 32)["activation_rms"]
    assert plain[-1] < plain[1]  # without the skip the signal shrinks instead


def test_at_initialization_the_plain_nets_first_layers_get_vanishing_gradients():
    plain = _init_stats("plain", 32)["weight"]      # linear layers: input projection ... classifier
    residual = _init_stats("res2", 32)["weight"]
    assert plain[1] < 1e-3 * plain[-2]               # the first hidden layer vs the last
    assert residual[1] > 0.1 * residual[-2]          # the identity paths carry it back


def test_the_reported_epoch_is_the_best_one_not_the_last(mnist_dir, tmp_path, monkeypatch):
    accs = iter([0.5, 0.9, 0.6, 0.77])  # validation after epochs 1-3, then the test set
    monkeypatch.setattr(training, "evaluate", lambda model, batches: {"loss": 1.0, "acc": next(accs)})
    argv = TINY + ["--epochs", "3", "--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path)]
    record = run_main(argv)
    assert record["best_epoch"] == 2 and record["best_val_acc"] == 0.9 and record["test_acc"] == 0.77
    assert torch.load(folder_of(argv, tmp_path) / "best.pt", weights_only=True)["epoch"] == 2


def tensorboard_scalars(folder):
    """{tag: [(step, value)]} of the event files in `folder`, read by tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_one_scalar_per_epoch_per_tag_and_a_rerun_replaces_them(mnist_dir, tmp_path):
    logs = tmp_path / "tb"
    argv = TINY + ["--epochs", "2", "--depth", "2", "--data-dir", mnist_dir, "--out-dir",
                   str(tmp_path / "runs"), "--tensorboard", str(logs)]
    record = run_main(argv)
    folder = logs / folder_of(argv, tmp_path / "runs").name
    scalars = tensorboard_scalars(folder)
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning rate (end of epoch)"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert scalars["accuracy/val"][1][1] == pytest.approx(record["epochs"][1]["val_acc"])
    run_main(argv + ["--force"])  # trained again: its events replace the first run's, not add to them
    assert [step for step, _ in tensorboard_scalars(folder)["loss/train"]] == [1, 2]


def test_tensorboard_missing_is_one_line(mnist_dir, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path), "--tensorboard",
                   str(tmp_path / "tb")]
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), "pip install tensorboard")
    assert not list(tmp_path.glob("*/metrics.json"))  # said before the first epoch, not after it


def test_an_unwritable_tensorboard_folder_is_one_line_before_any_epoch(mnist_dir, tmp_path, capsys):
    (tmp_path / "tb").write_text("a file where the folder should go")
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--tensorboard", str(tmp_path / "tb" / "logs")]
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), "cannot create the output folder")
    assert not list(tmp_path.glob("runs/*/metrics.json"))


def test_a_published_result_printed_mentions_the_users_own_run_beside_it(mnist_dir, tmp_path, monkeypatch,
                                                                         capsys):
    """After --force, the plain command prints the published run first; the user's run is named too."""
    import shutil
    from lab import runs
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs")]
    run_main(argv)
    folder = folder_of(argv, tmp_path / "runs")
    shutil.copytree(folder, tmp_path / "results" / "ex1_mlp" / folder.name)  # as if it were published
    monkeypatch.setattr(runs, "RESULTS_DIR", str(tmp_path / "results"))
    capsys.readouterr()
    run_main(argv)
    out = capsys.readouterr().out
    assert "published with the code" in out and f"your own run of these settings is in {folder}" in out


@pytest.mark.parametrize("edit, says", [
    (lambda s: s["init"]["activation_rms"].pop(), "'activation_rms': 32 items, not 33"),
    (lambda s: s["trained"]["weight"].__setitem__(3, -1.0), "'weight': item 3: must be a number"),
    (lambda s: s["init"].__setitem__("bias", "small"), "'bias': a str where a list belongs"),
])
def test_saved_layer_statistics_are_checked_whole_before_use(edit, says, tmp_path):
    import glob
    import re
    pattern = os.path.join(ROOT, "results", "ex1_mlp", "plain_d32_*_s0_*", "layer_stats.json")
    committed = sorted(glob.glob(pattern))[0]
    saved = json.loads(open(committed).read())
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(os.path.join(os.path.dirname(committed), "best.pt"), folder)  # the stats name its SHA-256
    found = [(saved["settings"], None, str(folder))]
    args = ex1_mlp.get_args(["--sweep", "--depths", "32"])
    (folder / "layer_stats.json").write_text(json.dumps(saved))
    stats = saved["content"]
    assert ex1_mlp.gradient_stats(args, torch.device("cpu"), found)[("plain", 32)] == stats  # as committed
    edit(stats)
    (folder / "layer_stats.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match=re.escape(says)):
        ex1_mlp.gradient_stats(args, torch.device("cpu"), found)


def test_a_tensorboard_folder_whose_name_is_not_utf8_is_one_line(mnist_dir, tmp_path, capsys):
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xfftb")  # a name as a non-UTF-8 shell passes it
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--tensorboard", folder]
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), "needs a folder whose name is UTF-8")
    assert not list(tmp_path.glob("runs/*/metrics.json"))


def test_a_full_disk_under_the_tensorboard_folder_is_one_line_before_any_epoch(mnist_dir, tmp_path, capsys,
                                                                               monkeypatch):
    from lab import runs
    from lab.files import WriteError

    def full(text, path):
        raise WriteError(f"cannot write {path}: No space left on device (free some space or raise the limit, "
                         "then rerun)")
    monkeypatch.setattr(runs, "write_text_atomic", full)
    argv = TINY + ["--depth", "2", "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
                   "--tensorboard", str(tmp_path / "tb")]
    assert_one_line_error(*cli_in_process(ex1_mlp, argv, capsys), "tb/events.out.tfevents.probe: No space")
    assert not (tmp_path / "runs").exists()  # no run folder, no epoch
