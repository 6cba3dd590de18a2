import copy
import json
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ex2_why
from conftest import ROOT, assert_one_line_error, cli_in_process
from lab.errors import UserError
from models import MLP, CifarResNet


def tiny_resnet(residual=True, seed=0):
    torch.manual_seed(seed)
    model = CifarResNet(1, 4, residual=residual)
    for m in model.modules():  # running statistics as a trained network has them, not 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("deleted", [0, 1, 2])  # 1 and 2 are downsampling blocks
def test_a_deleted_residual_block_is_the_block_whose_branch_outputs_zero(deleted):
    model = tiny_resnet()
    x = torch.randn(3, 3, 32, 32)
    zeroed = copy.deepcopy(model)
    block = zeroed.features[ex2_why.blocks_of(zeroed)[deleted]]
    nn.init.zeros_(block.branch[-1].weight)  # the branch's last BN: its output is 0
    nn.init.zeros_(block.branch[-1].bias)
    with torch.no_grad():
        torch.testing.assert_close(ex2_why.lesioned(model, [deleted])(x), zeroed(x))
        assert not torch.allclose(model(x), zeroed(x))  # the deletion changed something
    assert len(ex2_why.blocks_of(ex2_why.lesioned(model, [deleted]))) == 2
    assert len(ex2_why.blocks_of(model)) == 3  # the original is untouched


def test_a_filter_normalized_direction_has_the_weights_norm_filter_by_filter():
    model = tiny_resnet()
    d = ex2_why.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.dim() > 1:  # conv filters and the classifier's rows
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d[name], p.detach())
        else:  # BN parameters and biases are not perturbed
            assert torch.count_nonzero(d[name]) == 0


def test_the_landscape_at_the_origin_is_the_checkpoints_loss_and_moves_along_the_directions():
    model = tiny_resnet()
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (10,))
    g = torch.Generator().manual_seed(0)
    dirs = (ex2_why.filter_normalized_direction(model, g), ex2_why.filter_normalized_direction(model, g))
    surface = ex2_why.loss_surface(model, x, y, dirs, [0.0, 0.5])
    assert surface[0, 0].item() == pytest.approx(ex2_why.mean_loss(model, x, y), rel=1e-6)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(0.5 * dirs[0][n])
    assert surface[1, 0].item() == pytest.approx(ex2_why.mean_loss(moved, x, y), rel=1e-5)
    assert surface[1, 0] != surface[0, 0]


class TwoConvs(nn.Module):
    """logits = mean_ij W2 W1 x(i, j): two 1x1 convs, no BN, no ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 1, bias=False)
        self.conv2 = nn.Conv2d(5, 10, 1, bias=False)

    def forward(self, x):
        return self.conv2(self.conv1(x)).mean(dim=(2, 3))


def test_gradient_norms_match_a_hand_computation():
    torch.manual_seed(0)
    model = TwoConvs()
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 3, 3, 9])
    w1, w2 = model.conv1.weight[:, :, 0, 0].detach(), model.conv2.weight[:, :, 0, 0].detach()
    xbar = x.mean(dim=(2, 3))                                          # (B, 3)
    g = (F.softmax(xbar @ w1.T @ w2.T, 1) - F.one_hot(y, 10)) / len(y)  # dL/dlogits (B, 10)
    grad_w2 = g.T @ (xbar @ w1.T)                                      # (10, 5)
    grad_w1 = (g @ w2).T @ xbar                                        # (5, 3)
    norms = ex2_why.conv_gradient_norms(model, x, y)
    assert norms == pytest.approx([grad_w1.norm().item(), grad_w2.norm().item()], rel=1e-5)


def write_run(root, name, state):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    torch.save(state, os.path.join(folder, "best.pt"))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"config": {}, "meta": {}, "status": "complete", "epochs": [], "test_acc": 0.5}, f)


@pytest.mark.parametrize("case,message", [
    ("missing", "no finished ex1_cnn.py runs with checkpoints, 8 epochs and seed 0"),
    ("other-exercise", "not a checkpoint of a CifarResNet"),
    ("empty", "best.pt is not a checkpoint"),
    ("grid", "--grid: must be an integer from 2 to 1001, got 0"),
    ("analysis", "unknown analysis lesions"),
])
def test_bad_inputs_are_one_line_errors(case, message, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    os.makedirs(runs)
    argv = ["lesion", "--runs-dir", runs, "--fig-dir", str(tmp_path / "fig"), "--device", "cpu"]
    if case == "other-exercise":
        model = MLP(4, 2)
        write_run(runs, "res_n5_e8_s0_abc", {"model": model.state_dict(), "config": {"seed": 0},
                                             "arch": {"name": "MLP", "kwargs": {"width": 4, "depth": 2}}})
    elif case == "empty":
        write_run(runs, "res_n5_e8_s0_abc", {})
        with open(os.path.join(runs, "res_n5_e8_s0_abc", "best.pt"), "wb"):
            pass
    elif case == "grid":
        argv += ["--grid", "0"]
    elif case == "analysis":
        argv[0] = "lesions"
    assert_one_line_error(*cli_in_process(ex2_why, argv, capsys), message)


def test_all_four_analyses_end_to_end_on_tiny_runs(cifar_folder, tmp_path):
    import ex1_cnn
    runs = tmp_path / "runs"
    ex1_cnn.main(ex1_cnn.get_args(["--sweep", "--blocks-list", "1,5", "--seeds", "1", "--epochs", "1",
                                   "--width", "4", "--val-size", "10", "--batch-size", "8",
                                   "--device", "cpu", "--workers", "1",
                                   "--data-dir", cifar_folder, "--out-dir", str(runs)]))
    written = ex2_why.main(ex2_why.get_args(["--runs-dir", str(runs), "--epochs", "1",
                                             "--data-dir", cifar_folder,
                                             "--fig-dir", str(tmp_path / "fig"), "--grid", "3",
                                             "--lesion-draws", "2", "--lesion-max-k", "2",
                                             "--device", "cpu"]))
    names = sorted(os.path.basename(p) for p in written)
    assert names == [f"ex2_why_{analysis}.{ext}" for analysis in ("gradients", "landscape", "lesion",
                                                                  "responses") for ext in ("md", "png")]
    assert all(os.path.getsize(p) > 0 for p in written)
    table = (tmp_path / "fig" / "ex2_why_responses.md").read_text()
    assert "| 8 |" in table and "| 32 |" in table
    lesion = (tmp_path / "fig" / "ex2_why_lesion.md").read_text()
    assert "| plain-32 |" in lesion and "| residual-32 |" in lesion and "k=2" in lesion
    # each table says what made it: the checkpoints, and the command with the flags that differ
    assert f"From checkpoints {os.path.relpath(runs)}/*_e1_s0_*" in lesion
    assert (f"Made by `python ex2_why.py lesion --runs-dir {runs} --epochs 1 --lesion-draws 2 "
            "--lesion-max-k 2 --grid 3 --device cpu") in lesion
    # --plot-only, without CIFAR-10: every table and figure again, byte for byte, from the saved results
    before = {p: open(p, "rb").read() for p in written}
    argv = ["--runs-dir", str(runs), "--epochs", "1", "--data-dir", str(tmp_path / "none"), "--fig-dir",
            str(tmp_path / "fig"), "--grid", "3", "--lesion-draws", "2", "--lesion-max-k", "2", "--plot-only"]
    assert ex2_why.main(ex2_why.get_args(argv)) == written
    assert {p: open(p, "rb").read() for p in written} == before
    with pytest.raises(UserError, match="landscape results of other settings"):
        ex2_why.main(ex2_why.get_args(argv[:-1] + ["--grid", "5", "--plot-only"]))


def test_response_stds_match_a_hand_computation():
    model = tiny_resnet()
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    outputs = []
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # a copy: the ReLU after each BN works in place
    handles = [bn.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone())) for bn in bns]
    with torch.no_grad():
        model(ex2_why.normalize_images(x))
    for h in handles:
        h.remove()
    # per channel over images and positions (sample std), then the mean over channels
    expected = [o.transpose(0, 1).flatten(1).double().std(1).mean().item() for o in outputs]
    assert ex2_why.response_stds(model, x, batch_size=3) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("deleted", [0, 1])  # 1: a downsampling block
def test_a_deleted_plain_block_is_its_parameter_free_shortcut(deleted):
    model = tiny_resnet(residual=False)
    x = torch.randn(2, 3, 32, 32)
    i = ex2_why.blocks_of(model)[deleted]
    block = model.features[i]
    h = model.features[:i](x)
    h = ex2_why.shortcut(h, block.out_channels, block.stride)  # what stands in its place
    expected = model.classifier(model.features[i + 1:](h).mean(dim=(2, 3)))
    torch.testing.assert_close(ex2_why.lesioned(model, [deleted])(x), expected)
    assert not torch.allclose(ex2_why.lesioned(model, [deleted])(x), model(x))


@pytest.mark.parametrize("residual", [False, True])
def test_lesion_accuracies_from_shared_prefixes_are_those_of_full_forward_passes(residual):
    """The lesion study reuses the intact network's layers before the first deleted block: each
    accuracy must be that of the lesioned network run from its input."""
    model = tiny_resnet(residual).to(memory_format=ex2_why.MEMORY_FORMAT)
    x = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    deletions = [[], [0], [2], [1], [0, 2], [2, 1, 0]]
    with torch.no_grad():
        predicted = [ex2_why.lesioned(model, d)(ex2_why.as_input(x)).argmax(1) for d in deletions]
    y = predicted[4]  # the labels one lesioned network gets all right
    found = ex2_why.lesion_accuracies(model, deletions, x, y, batch_size=32)
    assert found == [int((p == y).sum()) / len(y) for p in predicted]
    assert found[4] == 1.0 and min(found) < 1.0


def test_a_missing_published_network_is_named_and_nothing_goes_to_the_readme(monkeypatch, capsys, tmp_path):
    """The published checkpoints less residual-56: the tables would lose its row without a word."""
    real_runs, chosen = ex2_why.runs.checkpointed_runs, []

    def without_res56(root, pattern):
        return [] if pattern.startswith("res_n9_") else real_runs(root, pattern)

    def destination(args, readme_args, scratch_dir, inputs_published=True, where=()):
        chosen.append(inputs_published)
        return str(tmp_path), inputs_published

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # before CIFAR-10 is read

    monkeypatch.setattr(ex2_why.runs, "checkpointed_runs", without_res56)
    monkeypatch.setattr(ex2_why.outputs, "destination", destination)
    monkeypatch.setattr(ex2_why, "load_cifar10", stop)
    with pytest.raises(KeyboardInterrupt):
        ex2_why.main(ex2_why.get_args(["gradients", "--device", "cpu"]))
    assert chosen == [False]
    assert "1 network not found (residual-56)" in capsys.readouterr().out


def test_an_analysis_with_no_network_to_read_is_skipped_computed_or_redrawn(cifar_folder, tmp_path, capsys):
    import ex1_cnn
    runs = tmp_path / "runs"
    ex1_cnn.main(ex1_cnn.get_args(["--sweep", "--blocks-list", "1", "--seeds", "1", "--epochs", "1",
                                   "--width", "4", "--val-size", "10", "--batch-size", "8", "--device", "cpu",
                                   "--workers", "1", "--data-dir", cifar_folder, "--out-dir", str(runs)]))
    argv = ["lesion", "--runs-dir", str(runs), "--epochs", "1", "--data-dir", cifar_folder, "--fig-dir",
            str(tmp_path / "fig"), "--device", "cpu"]
    for extra in ([], ["--plot-only"]):  # depth 8 only: the lesion study reads depths 32 and 56
        assert ex2_why.main(ex2_why.get_args(argv + extra)) == []
        assert "lesion skipped: no network of depth 32 or 56" in capsys.readouterr().out


def _edit(path, *keys_and_value):
    """An edit of a saved analysis: the value at r['content'][keys...] replaced (None: deleted)."""
    *keys, last, value = keys_and_value

    def edit(saved):
        node = saved["content"]
        for k in keys:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return path, edit


# (analysis, edit) -> the words of the refusal: each a file the README's figures were once drawn from
SAVED_CASES = [
    (_edit("lesion", "result", "res_n9", "intact", 1.5), "'intact': must be a number in [0, 1]"),
    (_edit("landscape", "result", "res_n5", "loss", 3, 4, float("nan")), "item 4: must be a number"),
    (_edit("gradients", "result", "res_n5", "init_ratios", 0, -2.0), "'init_ratios': item 0: must be"),
    (_edit("lesion", "facts", "images", 5000), "'images': must be an integer from 1 to 1000"),
    (_edit("landscape", "result", "res_n5", "coords", [0.0] * 5), "'coords': 5 items, not 11"),
    (_edit("responses", "result", "res_n5", 2, "x"), "item 2: 'x' is not a number"),
    (_edit("gradients", "result", "res_n5", "trained", None), "no 'trained'"),
    (_edit("lesion", "result", "plain_n5", "random", "3", [0.5]), "'3': 1 items, not 5"),
]


@pytest.mark.parametrize("case, says", SAVED_CASES)
def test_a_saved_analysis_is_checked_whole_against_its_schema_before_use(case, says, tmp_path):
    (analysis, edit), args = case, ex2_why.get_args([])  # the README's settings, as committed
    with open(os.path.join(ROOT, "results", "ex2_why", f"{analysis}.json")) as f:
        saved = json.load(f)
    digests = {ex2_why._key(name): sha for name, sha in saved["inputs"].items()}
    path = tmp_path / f"{analysis}.json"
    path.write_text(json.dumps(saved))
    assert ex2_why.read_result(analysis, args, digests, str(path))  # as committed: read
    edit(saved)
    path.write_text(json.dumps(saved))
    with pytest.raises(UserError, match=re.escape(says)):
        ex2_why.read_result(analysis, args, digests, str(path))
