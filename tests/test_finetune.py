"""Exercise 2.1 (2024): frozen features, the classical baselines, and fine-tuning only what it says."""
import os
import pickle

import numpy as np
import pytest
import torch

import ex2_finetune
import training
from conftest import (ROOT, assert_one_line_error, assert_resumes_to_the_uninterrupted_run, cifar_images,
                      cli_in_process)
from data import Dataset, Split, load_cifar100
from ex2_finetune import PARTS, fit_linear_probe, knn_predict, nearest_neighbours
from lab.errors import UserError
from models import PartlyFrozenLite0

CPU = torch.device("cpu")
SIZE = 64  # a small input (at 32 px the final features are all but zero)


def tiny_data(n_train=24, n_val=8, n_test=8, n_classes=10):
    x, y = cifar_images(n_train + n_val + n_test, seed=3)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y).long() % n_classes
    a, b = n_train, n_train + n_val
    return Dataset(Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]), "synthetic",
                   tuple(str(c) for c in range(n_classes)))


def args(tmp_path):
    return ex2_finetune.get_args(["--out-dir", str(tmp_path)])


def probe_config(tmp_path, method):
    config = next(c for c in ex2_finetune.probe_configs(args(tmp_path)) if c["method"] == method)
    return {**config, "size": SIZE, "steps": 20} if method == "linear" else {**config, "size": SIZE}


def tiny_finetune_config(tmp_path, part, optimizer="sgd"):
    return {**ex2_finetune.finetune_config(args(tmp_path), part, optimizer, 0), "size": SIZE, "epochs": 2,
            "batch_size": 8}


# ----------------------------------------------------------------------------- the baselines by hand

def test_knn_by_hand_majority_and_ties_to_the_more_similar():
    angles = torch.tensor([0.0, 0.1, 0.2, 3.0, 3.1])  # points on the unit circle: three of class 0 near 0 rad
    train_x = torch.stack([angles.cos(), angles.sin()], 1)
    train_y = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.0], [np.cos(0.16), np.sin(0.16)]], dtype=torch.float32)
    idx, sims = nearest_neighbours(train_x, query, 3)
    assert idx[0].tolist() == [0, 1, 2]
    assert knn_predict(train_y[idx], sims, 1, 2).tolist() == [0, 1]   # the nearest: 0 rad, and 0.2 rad
    assert knn_predict(train_y[idx], sims, 3, 2).tolist() == [0, 0]   # two votes of class 0 to one
    # k = 2 at 0.16 rad: one vote each; class 1's neighbour (0.04 rad away) is the more similar
    assert knn_predict(train_y[idx], sims, 2, 2).tolist() == [0, 1]


def test_the_linear_probe_fits_a_separable_case_and_its_penalty_shrinks_it():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    w, b = fit_linear_probe(x, y, 2, weight_decay=1e-4, steps=100)
    assert ((x @ w + b).argmax(1) == y).float().mean() > 0.97
    w_strong, _ = fit_linear_probe(x, y, 2, weight_decay=10.0, steps=100)
    assert w_strong.norm() < 0.2 * w.norm()
    # the classes' weight difference points along the true direction (1, 0.5, 0, 0, 0)
    direction = (w[:, 1] - w[:, 0]) / (w[:, 1] - w[:, 0]).norm()
    assert direction[0] > 0.8 and direction[1] > 0.3


def test_probe_runs_leave_the_network_and_its_features_unchanged(tmp_path, monkeypatch):
    """Fitting the classifiers reads the frozen features; it changes neither them nor the network."""
    data = tiny_data()
    loaded = []
    real = ex2_finetune.load_efficientnet_lite0

    def keep(device, model=None):
        loaded.append(real(device, model))
        return loaded[-1]

    monkeypatch.setattr(ex2_finetune, "load_efficientnet_lite0", keep)
    before = {k: v.clone() for k, v in real(CPU).state_dict().items()}
    _, linear = ex2_finetune.train(probe_config(tmp_path, "linear"), data, CPU, str(tmp_path), False)
    _, knn = ex2_finetune.train(probe_config(tmp_path, "knn"), data, CPU, str(tmp_path), False)
    assert len(loaded) == 1  # the second run read the saved features
    assert all(torch.equal(before[k], v) for k, v in loaded[0].state_dict().items())
    folder = ex2_finetune.features_folder(str(tmp_path), probe_config(tmp_path, "knn"))
    saved = torch.load(os.path.join(folder, "train.pt"), weights_only=True)["content"]
    _, transform = ex2_finetune.cifar_transforms(None, torch.channels_last, SIZE, ex2_finetune.LITE_MEAN,
                                                 ex2_finetune.LITE_STD)
    again = ex2_finetune.extract_features(real(CPU), data.train, transform)
    assert torch.allclose(saved["features"], again, atol=1e-6) and saved["features"].shape == (24, 1280)
    assert saved["features"].abs().sum() > 0
    for record in (linear, knn):
        assert record["status"] == "complete" and 0 <= record["test_acc"] <= 1
        assert record["chosen"] in record["config"]["grid"] and record["seconds"]["features"] > 0


def test_features_of_other_images_are_refused_in_one_line(tmp_path):
    data = tiny_data()
    config = probe_config(tmp_path, "knn")
    ex2_finetune.frozen_features(config, data, CPU, str(tmp_path), False)
    flipped = Split(data.test.x, data.test.y.flip(0))
    shuffled = Dataset(data.train, data.val, flipped, "synthetic", data.classes)
    with pytest.raises(UserError, match="features of other images.*delete .*test.pt"):
        ex2_finetune.frozen_features(config, shuffled, CPU, str(tmp_path), False)


def test_features_of_another_port_or_other_weights_are_never_reused(tmp_path):
    """Features extracted by the symmetric-padding port (before the fix) sat where the corrected
    network's would go, under the same settings: the padding and the weights' SHA-256 now name them."""
    config = probe_config(tmp_path, "knn")
    old_port = {**config, "padding": "symmetric"}
    assert ex2_finetune.features_folder(str(tmp_path), config) != \
        ex2_finetune.features_folder(str(tmp_path), old_port)
    assert ex2_finetune.feature_config(config)["weights_sha256"] == ex2_finetune.WEIGHTS_SHA256


def test_a_feature_file_cut_short_or_with_an_odd_time_is_refused_in_one_line(tmp_path):
    data = tiny_data()
    config = probe_config(tmp_path, "knn")
    ex2_finetune.frozen_features(config, data, CPU, str(tmp_path), False)
    path = os.path.join(ex2_finetune.features_folder(str(tmp_path), config), "test.pt")
    saved = torch.load(path, weights_only=True)
    for edit, says in ((lambda s: s.update(features=s["features"][:, :1000]),
                        r"shape \[8, 1000\], not float32 8x1280"),
                       (lambda s: s.update(seconds=-5000.0), "'seconds': must be a number")):
        changed = dict(saved["content"])
        edit(changed)
        torch.save({**saved, "content": changed}, path)
        with pytest.raises(UserError, match=f"is not a saved test features result of this code.*{says}"):
            ex2_finetune.frozen_features(config, data, CPU, str(tmp_path), False)


# ----------------------------------------------------------------------------- fine-tuning

def one_step(model):
    """The state dict after one SGD step of the model on a batch (its starting one returned too)."""
    data = tiny_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.nn.functional.interpolate(data.train.x.float() / 255, size=SIZE)
    training.train_one_epoch(model, [(x, data.train.y)], optimizer)
    return before, model.state_dict()


def test_fine_tuning_the_last_stage_changes_only_it_and_keeps_the_frozen_statistics():
    torch.manual_seed(0)
    model = PartlyFrozenLite0(10, PARTS["last"])
    before, after = one_step(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    learns = {k for k in before if model.learns(k)}
    assert changed and changed <= learns  # BatchNorm running statistics of frozen layers included
    assert any(k.startswith("_blocks.11.") for k in changed) and "_fc.weight" in changed
    assert not any(k.startswith(("_conv_stem", "_bn0", "_blocks.0.", "_blocks.10.")) for k in changed)
    assert not model._bn0.training and model._blocks[11].training and model.training


def test_fine_tuning_all_layers_changes_the_stem_too():
    torch.manual_seed(0)
    before, after = one_step(PartlyFrozenLite0(10, PARTS["all"]))
    assert not torch.equal(before["_conv_stem.weight"], after["_conv_stem.weight"])
    assert not torch.equal(before["_bn0.running_mean"], after["_bn0.running_mean"])


def test_a_fine_tuning_starts_from_the_imagenet_weights_with_a_new_head(tmp_path):
    model = ex2_finetune.pretrained_network("last", 10, CPU)
    imagenet = ex2_finetune.load_efficientnet_lite0(CPU).state_dict()
    assert model._fc.out_features == 10
    assert all(torch.equal(v, imagenet[k]) for k, v in model.state_dict().items() if not k.startswith("_fc"))


def test_a_fine_tuning_resumed_after_a_kill_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    config = tiny_finetune_config(tmp_path, "last", "adamw")
    assert_resumes_to_the_uninterrupted_run(ex2_finetune.train, config, tiny_data(), tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- CIFAR-100

def test_cifar100_in_torchvisions_format_loads_with_its_fine_labels(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda *a: True)  # our files, not the real md5s
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 120), ("test", 40)):
        images, _ = cifar_images(n, seed=n)
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": list(range(100)) * 2,
                 "coarse_labels": [0] * n}
        entry["fine_labels"] = entry["fine_labels"][:n]
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    ds = load_cifar100(str(tmp_path), CPU, n_val=20)
    assert ds.source == "CIFAR-100" and len(ds.classes) == 100 and ds.classes[7] == "c7"
    assert len(ds.train) == 100 and len(ds.val) == 20 and len(ds.test) == 40
    assert ds.test.y[:3].tolist() == [0, 1, 2]


def test_cifar100_missing_is_one_line_naming_where_it_looked(tmp_path, monkeypatch, capsys):
    from lab import datafiles
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)
    argv = ["--dataset", "cifar100", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "runs")]
    assert_one_line_error(*cli_in_process(ex2_finetune, argv, capsys), "CIFAR-100 not found")


def test_plot_only_redraws_the_committed_tables_without_data(tmp_path):
    ex2_finetune.main(ex2_finetune.get_args(["--plot-only", "--fig-dir", str(tmp_path)]))
    for name in ("ex2_finetune_probe", "ex2_finetune_table"):
        with open(os.path.join(ROOT, "figures", f"{name}.md")) as f:
            assert (tmp_path / f"{name}.md").read_text() == f.read()


def test_a_row_from_another_copy_of_the_data_is_not_captioned_with_the_baselines_test_set(tmp_path):
    """The caption's test-image count is the baselines'; a row whose runs read another data copy
    (a scratch run on a small copy) is named as such, not given that count."""
    import json
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(os.path.join(ROOT, "results", "ex2_finetune"), runs)
    chosen = next(runs.glob("cifar10_ft-all-adamw_*_s0_*"))
    record = json.loads((chosen / "metrics.json").read_text())
    record["meta"]["data_signature"] = "0123456789abcdef"
    (chosen / "metrics.json").write_text(json.dumps(record))
    probes = ex2_finetune.runs.collect(ex2_finetune.probe_configs(ex2_finetune.get_args([])), [str(runs)],
                                  ex2_finetune.run_name)
    grid = ex2_finetune.runs.collect(ex2_finetune.grid_configs(ex2_finetune.get_args([])), [str(runs)],
                                ex2_finetune.run_name)
    table = ex2_finetune.main_table(probes, grid, [], [], 10)
    caption = table.strip().splitlines()[-1]
    assert "10,000 test images for the baselines; **candidate: fine-tuned all layers, adamw (seed 0): read " \
           "from another copy of the data" in caption
    assert "sgd (seed 0): read from another" not in caption  # the other rows share the baselines' copy


# ----------------------------------------------------------------------------- the test set, read once

class UnreadableSplit:
    """A test split that fails the test if anything reads its images or labels."""
    def __len__(self):
        return 8

    def __getattr__(self, name):
        raise AssertionError(f"a selection candidate read the test set ({name})")


def test_no_candidate_of_the_fine_tuning_grid_reads_the_test_set(tmp_path):
    """Every grid candidate is a validation-only selection run: trained with the test split made
    unreadable it completes, says so, and records no test result; the chosen setting's seeds
    and the control are not candidates and read it."""
    grid = ex2_finetune.grid_configs(args(tmp_path))
    assert len(grid) == 4 and all(c["selection"] is True and c["seed"] == 0 for c in grid)
    config = {**grid[0], "size": SIZE, "epochs": 1, "batch_size": 8, "part": "last"}
    data = tiny_data()
    data.test = UnreadableSplit()
    outcome, record = ex2_finetune.train(config, data, CPU, str(tmp_path), progress=False)
    assert outcome == "trained" and record["status"] == "complete" and record["validation_only"] is True
    assert "test_acc" not in record and "best_val_acc" in record
    from lab.runs import read_record
    assert read_record(str(tmp_path / ex2_finetune.run_name(config)))["validation_only"] is True
    final = {**ex2_finetune.finetune_config(args(tmp_path), "last", "sgd", 1), "size": SIZE, "epochs": 1,
             "batch_size": 8}
    assert "selection" not in final
    _, record = ex2_finetune.train(final, tiny_data(), CPU, str(tmp_path), progress=False)
    assert "test_acc" in record


def test_the_control_is_the_same_network_from_random_initialization(tmp_path):
    config = {**ex2_finetune.finetune_config(args(tmp_path), "all", "adamw", 1, init="random"), "size": SIZE,
              "epochs": 1, "batch_size": 8}
    assert ex2_finetune.run_name(config).startswith("cifar10_scratch-all-adamw_64px_e1_s1_")
    torch.manual_seed(0)
    random = ex2_finetune.random_network("all", 10, CPU)
    imagenet = ex2_finetune.load_efficientnet_lite0(CPU).state_dict()
    assert set(random.state_dict()) == set(imagenet)
    assert not torch.equal(random.state_dict()["_conv_stem.weight"], imagenet["_conv_stem.weight"])
    assert all(p.requires_grad for p in random.parameters())
