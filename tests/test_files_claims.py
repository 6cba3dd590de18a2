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
