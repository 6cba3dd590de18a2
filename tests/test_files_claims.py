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
