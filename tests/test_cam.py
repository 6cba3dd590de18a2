import json
import os

import pytest
import torch

import ex2_cam
from cam import CAM, GradCAM, auc, deletion_insertion, drop_and_increase, upsample_and_scale
from conftest import ROOT, assert_one_line_error, cli_in_process, cli_subprocess
from lab.errors import UserError
from models import CifarResNet


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = CifarResNet(1, width=4, residual=True).eval()
    for m in model.modules():  # non-trivial BN statistics so eval mode is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_cam_spatial_mean_plus_bias_is_the_logit(net):
    x = torch.randn(6, 3, 32, 32)
    with CAM(net, net.features, net.classifier) as cam:
        raw, logits, classes = cam(x, raw=True)
    assert raw.shape == (6, 8, 8)
    torch.testing.assert_close(raw.mean(dim=(1, 2)) + net.classifier.bias[classes],
                               logits.gather(1, classes[:, None])[:, 0])
    torch.testing.assert_close(classes, logits.argmax(1))  # default: the predicted class


def test_cam_is_the_formula_by_hand(net):
    x = torch.randn(2, 3, 32, 32)
    A = net.features(x)
    with CAM(net, net.features, net.classifier) as cam:
        raw, _, _ = cam(x, classes=[3, 7], raw=True)
        maps, _, _ = cam(x, classes=[3, 7])
    for i, c in enumerate([3, 7]):
        by_hand = sum(net.classifier.weight[c, k] * A[i, k] for k in range(A.shape[1]))
        torch.testing.assert_close(raw[i], by_hand)
    assert maps.shape == (2, 32, 32)
    assert maps.amin(dim=(1, 2)).abs().max() < 1e-6 and (maps.amax(dim=(1, 2)) - 1).abs().max() < 1e-6


def test_each_image_gets_the_map_of_its_own_class(net):
    x = torch.randn(4, 3, 32, 32)
    classes = torch.tensor([0, 5, 5, 9])
    with CAM(net, net.features, net.classifier) as cam:
        batch, _, _ = cam(x, classes, raw=True)
        for i in range(4):
            alone, _, _ = cam(x[i:i + 1], classes[i:i + 1], raw=True)
            torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=1e-5)
        other, _, _ = cam(x, torch.tensor([1, 1, 1, 1]), raw=True)
    assert not torch.allclose(batch[0], other[0])


def test_gradcam_on_the_last_layer_is_relu_cam_up_to_a_positive_factor(net):
    x = torch.randn(5, 3, 32, 32)
    with CAM(net, net.features, net.classifier) as cam:
        raw_cam, _, classes = cam(x, raw=True)
    with GradCAM(net, net.features) as gradcam:
        raw_grad, _, same = gradcam(x, raw=True)
        scaled, _, _ = gradcam(x)
    assert torch.equal(classes, same)
    hw = raw_cam.shape[1] * raw_cam.shape[2]  # the factor is 1 / (h w) from the average pooling
    torch.testing.assert_close(raw_grad * hw, torch.relu(raw_cam))
    expected = upsample_and_scale(torch.relu(raw_cam), (32, 32))
    torch.testing.assert_close(scaled, expected, atol=1e-5, rtol=1e-4)


def test_hooks_are_gone_after_the_context_manager(net):
    def hooks():
        return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules())
    with CAM(net, net.features, net.classifier) as cam:
        assert hooks() == 1
        cam(torch.randn(1, 3, 32, 32))
    with GradCAM(net, net.features[-1]) as gradcam:
        gradcam(torch.randn(1, 3, 32, 32))
    assert hooks() == 0
    with pytest.raises(ValueError, match="out of range"):
        with CAM(net, net.features, net.classifier) as cam:
            cam(torch.randn(1, 3, 32, 32), classes=10)
    assert hooks() == 0  # also after an error inside the block


def test_deletion_insertion_endpoints_and_auc(net):
    x = torch.randn(3, 3, 32, 32)
    classes = net(x).argmax(1)
    maps = torch.rand(3, 32, 32)
    curves = deletion_insertion(net, x, classes, maps, steps=4)
    full = net(x).softmax(1).gather(1, classes[:, None])[:, 0]
    gone = net(torch.zeros_like(x)).softmax(1).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(curves["deletion"][:, 0], full)
    torch.testing.assert_close(curves["deletion"][:, -1], gone)
    torch.testing.assert_close(curves["insertion"][:, -1], full)
    torch.testing.assert_close(auc(torch.tensor([[0.0, 1.0, 1.0]])), torch.tensor([0.75]))
    drop, inc = drop_and_increase(net, x, classes, torch.ones(3, 32, 32))
    assert torch.all(drop.abs() < 1e-5) and torch.all(inc == 0)  # an all-ones map changes nothing


# ----------------------------------------------------------------------------- the script

def save_checkpoint(path, residual=True, blocks=1, width=4, val_acc=0.5):
    """A checkpoint as ex1_cnn.py writes it, and its metrics.json."""
    import ex1_cnn
    from models import build_model
    args = ex1_cnn.get_args(["--blocks", str(blocks), "--width", str(width), "--val-size", "10"])
    config = ex1_cnn.run_config(args, blocks, residual, 0)
    arch = ex1_cnn.arch_of(config)
    torch.manual_seed(0)
    model = build_model(arch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model.state_dict(), "arch": arch, "config": config, "epoch": 1,
                "val_acc": val_acc}, path)
    record = {"config": config, "meta": {}, "status": "complete", "epochs": [], "best_val_acc": val_acc,
              "test_acc": val_acc}
    with open(os.path.join(os.path.dirname(path), "metrics.json"), "w") as f:
        json.dump(record, f)
    return path


def test_cifar_figure_and_evaluation(cifar_folder, tmp_path):
    ckpt = save_checkpoint(str(tmp_path / "runs" / "res_n1_e40_s0_x" / "best.pt"))
    save_checkpoint(str(tmp_path / "runs" / "res_n2_e40_s0_y" / "best.pt"), blocks=2, val_acc=0.4)
    save_checkpoint(str(tmp_path / "runs" / "plain_n1_e40_s0_z" / "best.pt"), residual=False, val_acc=0.9)
    common = ["--data-dir", cifar_folder, "--fig-dir", str(tmp_path / "fig"), "--device", "cpu"]
    out = ex2_cam.main(ex2_cam.get_args(["cifar10", "--checkpoint", ckpt, "--num-images", "4"] + common))
    assert os.path.getsize(out) > 0
    stats = ex2_cam.main(ex2_cam.get_args(["cifar10", "--evaluate", "--checkpoint", ckpt,
                                           "--eval-images", "20", "--steps", "4"] + common))
    assert set(stats) == {"CAM", "Grad-CAM", "random"} and len(stats["CAM"]["deletion"]) == 20
    table = (tmp_path / "fig" / "ex2_cam_faithfulness.md").read_text()
    assert "| CAM |" in table and "| random |" in table and "20 CIFAR-10 test images" in table
    # the residual run with the best validation accuracy (a better plain run does not count)
    assert ex2_cam.find_checkpoint(str(tmp_path / "runs"))[0] == ckpt
    # --plot-only, without CIFAR-10: the figure, the table and the curves again, byte for byte
    written = sorted((tmp_path / "fig").glob("*.[mp][dn]*"))
    before = {p: p.read_bytes() for p in written}
    common[1] = str(tmp_path / "none")
    figure = ["cifar10", "--checkpoint", ckpt, "--num-images", "4", "--plot-only"] + common
    ex2_cam.main(ex2_cam.get_args(figure))
    ex2_cam.main(ex2_cam.get_args(["cifar10", "--evaluate", "--checkpoint", ckpt, "--eval-images", "20",
                                   "--steps", "4", "--plot-only"] + common))
    assert len(written) == 3 and {p: p.read_bytes() for p in written} == before
    with pytest.raises(UserError, match="cifar10 results of other settings"):
        ex2_cam.main(ex2_cam.get_args(["cifar10", "--checkpoint", ckpt, "--num-images", "3", "--plot-only"]
                                      + common))
    other = save_checkpoint(str(tmp_path / "other" / "res_n1_e40_s0_x" / "best.pt"), val_acc=0.3)
    os.replace(other, ckpt)  # another network in the same place: the saved maps are not its own
    with pytest.raises(UserError, match="computed from other inputs"):
        ex2_cam.main(ex2_cam.get_args(figure))


def make_imagenette(root, per_class=2):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for wnid in ex2_cam.IMAGENETTE_TO_IMAGENET:
        folder = os.path.join(root, "imagenette2-160", "val", wnid)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            img = torch.randint(0, 256, (160, 213, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(img).save(os.path.join(folder, f"{wnid}_{i}.JPEG"))
    return root


def test_imagenette_path_offline_with_local_weights(tmp_path):
    from torchvision.models import resnet18
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    root = make_imagenette(str(tmp_path / "data"))
    acc = ex2_cam.main(ex2_cam.get_args(["imagenette", "--weights", str(weights), "--data-dir", root,
                                         "--fig-dir", str(tmp_path / "fig"), "--num-images", "3",
                                         "--max-eval", "6", "--device", "cpu"]))
    assert 0.0 <= acc <= 1.0
    assert (tmp_path / "fig" / "ex2_cam_imagenette.png").stat().st_size > 0


def test_imagenette_checks_its_figure_folder_before_evaluating(tmp_path, capsys, monkeypatch):
    from torchvision.models import resnet18
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    root = make_imagenette(str(tmp_path / "data"), per_class=1)
    (tmp_path / "taken").write_text("a file where the figure folder should go")

    def evaluation_reached(*args, **kwargs):
        raise AssertionError("evaluated before checking the figure folder")
    monkeypatch.setattr(torch.utils.data, "DataLoader", evaluation_reached)
    argv = ["imagenette", "--weights", str(weights), "--data-dir", root,
            "--fig-dir", str(tmp_path / "taken" / "fig"), "--device", "cpu"]
    assert_one_line_error(*cli_in_process(ex2_cam, argv, capsys), "cannot create the output folder")


def test_imagenette_class_order_matches_torchvision(tmp_path):
    root = make_imagenette(str(tmp_path / "data"), per_class=1)
    from torchvision.datasets import Imagenette
    ds = Imagenette(root, split="val", size="160px")
    assert list(ds.wnids) == list(ex2_cam.IMAGENETTE_TO_IMAGENET)
    names = [ex2_cam.IMAGENETTE_TO_IMAGENET[w][0] for w in ds.wnids]
    assert names == [c[0] for c in ds.classes]


@pytest.mark.parametrize("argv,message", [
    (["cifar10", "--checkpoint", "{tmp}/none.pt"], "not found"),
    (["cifar10", "--checkpoint", "{mismatch}"], "not a checkpoint"),
    (["cifar10", "--num-images", "0"], "--num-images: must be an integer from 1 to 32"),
    (["cifar10", "--num-images", "1500"], "--num-images: must be an integer from 1 to 32"),
    (["cifar10", "--checkpoint", "{empty}"], "empty.pt is not a checkpoint"),
    (["cifar10", "--checkpoint", "{mlp}"], "not a checkpoint of a CifarResNet"),
    (["cifar10", "--checkpoint", "{ckpt}", "--class-index", "10", "--data-dir", "{cifar}"], "out of range"),
    (["cifar10", "--data-dir", "{tmp}"], "no published run with the settings"),
    (["cifar10", "--runs-dir", "{tmp}/no-runs"], "no finished residual ex1_cnn.py run"),
    (["imagenette", "--data-dir", "{tmp}/none", "--weights", "{tmp}/none.pth"], "--weights"),
    (["imagenette", "--data-dir", "{tmp}/none", "--weights", "{ckpt}"], "not a state dict of tensors"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, cifar_folder, capsys, monkeypatch):
    monkeypatch.setattr(ex2_cam, "CNN_RUNS", str(tmp_path / "no-runs"))
    monkeypatch.setattr(ex2_cam.runs, "published_dir", lambda exercise: str(tmp_path / "no-results"))
    ckpt = save_checkpoint(str(tmp_path / "ok" / "best.pt"))
    mismatch = tmp_path / "mismatch.pt"
    saved = torch.load(ckpt, weights_only=True)
    torch.save(dict(saved, model=CifarResNet(2, 4).state_dict()), mismatch)
    (tmp_path / "empty.pt").write_bytes(b"")
    from models import MLP
    mlp = tmp_path / "mlp.pt"  # a checkpoint of the other exercise
    arch = {"name": "MLP", "kwargs": {"width": 4, "depth": 2}}
    torch.save(dict(saved, model=MLP(4, 2).state_dict(), arch=arch), mlp)
    subs = {"{tmp}": str(tmp_path), "{mismatch}": str(mismatch), "{ckpt}": ckpt, "{cifar}": cifar_folder,
            "{empty}": str(tmp_path / "empty.pt"), "{mlp}": str(mlp)}
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    assert_one_line_error(*cli_in_process(ex2_cam, argv + ["--fig-dir", str(tmp_path)], capsys), message)


def test_no_imagenette_offline_is_one_line_error(tmp_path, capsys, monkeypatch):
    from torchvision.models import resnet18
    import torchvision.datasets.imagenette as imagenette
    monkeypatch.setattr(imagenette, "download_and_extract_archive",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    weights = tmp_path / "r.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    argv = ["imagenette", "--data-dir", str(tmp_path / "none"), "--weights", str(weights)]
    assert_one_line_error(*cli_in_process(ex2_cam, argv, capsys), "Imagenette")


@pytest.mark.slow
def test_unknown_dataset_from_a_real_process():
    code, stderr = cli_subprocess("ex2_cam.py", ["cifar100"])
    assert_one_line_error(code, stderr, "invalid choice")


def test_ties_in_a_map_are_ranked_in_pixel_order(net):
    """Upsampled maps have many ties; a stable sort ranks them the same way on every run."""
    x = torch.randn(2, 3, 32, 32)
    classes = net(x).argmax(1)
    flat = torch.ones(2, 32, 32)                                   # every pixel tied
    ramp = torch.linspace(1, 0, 32 * 32).view(1, 32, 32).expand(2, 32, 32)  # raster order, no ties
    tied, ordered = (deletion_insertion(net, x, classes, m, steps=4) for m in (flat, ramp))
    for k in ("deletion", "insertion"):
        torch.testing.assert_close(tied[k], ordered[k])


def test_the_default_checkpoint_is_the_published_one_whatever_the_user_trained(tmp_path, monkeypatch, capsys):
    """A user's better run in runs/ex1_cnn never replaces the README's network; --runs-dir picks it."""
    from lab.runs import published_dir
    user = save_checkpoint(str(tmp_path / "runs" / "res_n5_e8_s0_x" / "best.pt"), val_acc=0.99)
    path, why = ex2_cam.find_checkpoint()
    assert path.startswith(published_dir("ex1_cnn")) and "res_n5_e8_s0_" in path and "published" in why
    assert ex2_cam.find_checkpoint(str(tmp_path / "runs"))[0] == user
    monkeypatch.chdir(tmp_path)  # where runs/ex1_cnn would be
    args = ex2_cam.get_args(["cifar10"])
    assert ex2_cam.chosen_checkpoint(args) == path
    out = capsys.readouterr().out
    assert "res_n5_e8_s0_" in out and "(the published residual-32, seed 0" in out


@pytest.mark.parametrize("method", ["CAM", "Grad-CAM"])
def test_cam_and_gradcam_explain_the_network_in_eval_mode_and_restore_the_callers(method):
    """In training mode BatchNorm would normalize by the batch: one image's map would depend on
    the others'. Inside the `with` the model is in eval mode; after it, as the caller left it."""
    from cam import CAM, GradCAM
    from models import CifarResNet
    torch.manual_seed(0)
    model = CifarResNet(1, width=4, residual=True).train()
    x = torch.randn(4, 3, 32, 32)
    hooked = (CAM(model, model.features, model.classifier) if method == "CAM"
              else GradCAM(model, model.features))
    with hooked as explain:
        assert not model.training and not any(m.training for m in model.modules())
        together = explain(x, raw=True)[0]
        alone = explain(x[:1], raw=True)[0]
    assert torch.allclose(together[:1], alone, atol=1e-5)
    assert model.training and all(m.training for m in model.modules())


def _set(*keys_and_value):
    *keys, last, value = keys_and_value

    def edit(content):
        for k in keys:
            content = content[k]
        content[last] = value
    return edit


def _nan_auc(content):
    content["aucs"]["CAM"]["deletion"][2] = float("nan")


@pytest.mark.parametrize("argv, name, edit, says", [
    (["cifar10"], "cifar10", _set("pred", 3, -1), "'pred': item 3: must be an integer from 0 to 9"),
    (["cifar10"], "cifar10", _set("true", 0, 12), "'true': item 0: must be an integer from 0 to 9"),
    (["cifar10"], "cifar10", _set("explained", [1, 2]), "'explained': 2 items, not 8"),
    (["cifar10", "--evaluate"], "cifar10_faithfulness", _set("images", 5000),
     "'images': must be an integer from 1 to 1000"),
    (["photos"], "photos", _nan_auc, "'deletion': item 2: must be a number in [0, 1], got nan"),
])
def test_a_saved_cam_result_is_checked_whole_against_its_schema(argv, name, edit, says, tmp_path, capsys,
                                                                 monkeypatch):
    """Each refusal names the file, before any figure or table is drawn (the committed ones stay)."""
    with open(os.path.join(ROOT, "results", "ex2_cam", f"{name}.json")) as f:
        saved = json.load(f)
    edit(saved["content"])
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(ex2_cam.outputs, "analysis_path", lambda *a, **k: str(path))
    code, err = cli_in_process(ex2_cam, argv + ["--plot-only", "--fig-dir", str(tmp_path / "figs")], capsys)
    assert_one_line_error(code, err, says)
    assert str(path) in err and not os.listdir(tmp_path / "figs")


def test_an_interrupt_after_the_result_is_saved_says_what_was_written(cifar_folder, tmp_path, capsys,
                                                                       monkeypatch):
    """Ctrl-C (or SIGTERM) between the saved maps and their figure: the message does not say that
    nothing was written, and the saved result then draws the figure without the data."""
    ckpt = save_checkpoint(str(tmp_path / "runs" / "res_n1_e40_s0_x" / "best.pt"))
    common = ["--checkpoint", ckpt, "--num-images", "4", "--fig-dir", str(tmp_path / "fig"),
              "--device", "cpu"]
    real = ex2_cam.plot_cams
    monkeypatch.setattr(ex2_cam, "plot_cams", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    code, err = cli_in_process(ex2_cam, ["cifar10", "--data-dir", cifar_folder] + common, capsys)
    assert code == 130 and "nothing was written" not in err and "each file it wrote is whole" in err
    assert (tmp_path / "fig" / "ex2_cam_cifar10.json").exists()
    monkeypatch.setattr(ex2_cam, "plot_cams", real)
    ex2_cam.main(ex2_cam.get_args(["cifar10", "--plot-only", "--data-dir", str(tmp_path / "none")] + common))
    assert (tmp_path / "fig" / "ex2_cam_cifar10.png").exists()
