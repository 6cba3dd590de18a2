"""Exercise 2.2: the surgery is exact, the benchmark and its AP are what they say, the script works."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import ex1_mlp
import ex2_fcn
from cam import CAM
from conftest import ROOT, assert_one_line_error, cli_in_process
from detection import (Canvases, average_precision, capacity, detect, make_canvases, match, summarize,
                       training_windows)
from models import MLP, CifarResNet, ConvMLP

WINDOW = (28, 28)


# ----------------------------------------------------------------------------- the surgery

@pytest.mark.parametrize("layers_per_block,residual,rezero", [(1, False, False), (1, True, False),
                                                              (2, True, False), (1, True, True)])
def test_the_conv_form_is_the_mlp_on_every_window(layers_per_block, residual, rezero):
    torch.manual_seed(0)
    mlp = MLP(8, 4, layers_per_block=layers_per_block, residual=residual, rezero=rezero).eval()
    if rezero:
        for block in mlp.blocks:
            block.gate.data.fill_(0.7)  # a gate of 0 would hide a branch that is converted wrongly
    conv = ConvMLP(mlp, WINDOW).eval()
    x = torch.randn(2, 1, 37, 45)
    maps = conv(x)
    assert maps.shape == (2, 10, 37 - 27, 45 - 27)
    windows = F.unfold(x, WINDOW).transpose(1, 2)                      # (2, L, 784), row-major windows
    expected = mlp(windows.reshape(-1, 784)).view(2, -1, 10).transpose(1, 2).reshape(maps.shape)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)
    one = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(conv(one)[:, :, 0, 0], mlp(one.flatten(1)), atol=1e-5, rtol=1e-5)


def test_the_cnn_conv_form_is_its_cam_plus_the_bias_and_averages_to_the_logits():
    torch.manual_seed(0)
    net = CifarResNet(1, width=4).eval()
    x = torch.randn(3, 3, 32, 32)
    maps = net.class_maps(x)                                            # (3, 10, 8, 8)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), net(x), atol=1e-5, rtol=1e-5)
    bias = net.classifier.bias[:, None, None]
    with CAM(net, net.features, net.classifier) as cam:
        for c in range(10):
            raw, _, _ = cam(x, classes=c, raw=True)
            torch.testing.assert_close(maps[:, c] - bias[c], raw, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- AP, by hand

def ap(flags, n_true):
    return average_precision(torch.tensor(flags, dtype=torch.bool), n_true)


def test_average_precision_is_voc_all_points_on_hand_computed_cases():
    assert ap([True, True], 2) == pytest.approx(1.0)
    assert ap([], 3) == 0.0
    assert math.isnan(ap([False], 0))
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3: the envelope is 1 up to 1/3, then 2/3
    assert ap([True, False, True], 3) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)
    # a false positive first: precision 1/2 at recall 1/2, 2/3 at recall 1
    assert ap([False, True, True], 2) == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 3)
    # VOC 2007's 11-point AP would give (6 * 1 + 5 * 0) / 11 = 0.545 here, all-points gives 0.5
    assert ap([True, False], 2) == pytest.approx(0.5)


def test_matching_counts_duplicates_wrong_digits_and_misses_as_false_positives():
    truth = Canvases(torch.zeros(2, 96, 96, dtype=torch.uint8),
                     [torch.tensor([[10., 10., 38., 38.]]), torch.tensor([[50., 50., 78., 78.]])],
                     [torch.tensor([3]), torch.tensor([3])])
    box = torch.tensor
    found = [(box([[10., 10., 38., 38.], [12., 10., 40., 38.], [60., 60., 88., 88.], [10., 10., 38., 38.]]),
              box([0.9, 0.8, 0.7, 0.95]), box([3, 3, 3, 5])),
             (box([[59., 50., 87., 78.]]), box([0.6]), box([3]))]  # 9 pixels off: IoU 19/37 >= 0.5
    matched = match(found, truth, range(10), 0.5)
    scores, hits, n = matched[3]
    assert n == 2 and scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert hits.tolist() == [True, False, False, True]  # the duplicate and the miss are false
    assert matched[5][1].tolist() == [False] and matched[5][2] == 0
    summary = summarize(matched, threshold=0.75)
    assert summary["detections"] == 3 and summary["precision"] == pytest.approx(1 / 3)
    assert summary["recall"] == pytest.approx(1 / 2)
    assert summary["ap"][3] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert math.isnan(summary["ap"][5]) and summary["map"] == pytest.approx(summary["ap"][3])


# ----------------------------------------------------------------------------- canvases and windows

def digits(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 256, (n, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10


@pytest.mark.parametrize("size,max_digits", [((96, 96), 5), ((96, 96), 9), ((40, 70), 2)])
def test_canvases_hold_their_digits_in_non_overlapping_frames_and_are_seeded(size, max_digits):
    images, labels = digits()
    c = make_canvases(images, labels, 60, size, max_digits, torch.Generator().manual_seed(0))
    again = make_canvases(images, labels, 60, size, max_digits, torch.Generator().manual_seed(0))
    assert torch.equal(c.images, again.images)
    counts = [len(b) for b in c.boxes]
    assert min(counts) == 0 and max(counts) <= max_digits and sum(counts) > 0
    for image, boxes, labs in zip(c.images, c.boxes, c.labels):
        covered = torch.zeros(size, dtype=torch.int)
        for (x1, y1, x2, y2), lab in zip(boxes.long().tolist(), labs.tolist()):
            assert 0 <= x1 and x2 <= size[1] and 0 <= y1 and y2 <= size[0] and (x2 - x1, y2 - y1) == (28, 28)
            covered[y1:y2, x1:x2] += 1
            patch = image[y1:y2, x1:x2]
            assert any(torch.equal(patch, images[j]) for j in (labels == lab).nonzero()[:, 0])
        assert covered.max() <= 1                       # frames never overlap
        assert not image[covered == 0].any()            # and nothing is drawn outside them


def test_a_canvas_too_small_for_the_digits_is_refused():
    images, labels = digits()
    assert capacity((96, 96), WINDOW) == 9
    with pytest.raises(ValueError, match="do not fit"):
        make_canvases(images, labels, 1, (96, 96), 10, torch.Generator())


def test_fine_tuning_windows_are_labelled_by_their_overlap_with_the_true_boxes():
    images, labels = digits()
    c = make_canvases(images, labels, 30, (96, 96), 5, torch.Generator().manual_seed(0))
    x, y = training_windows(c, WINDOW, 6, 0.7, 0.5, 10, torch.Generator().manual_seed(0))
    assert x.shape[1:] == WINDOW and len(x) == len(y)
    digit_windows = x[y < 10]
    # a digit's window holds its digit shifted by at most 4 pixels: most of its pixels are ink
    assert len(digit_windows) and (digit_windows > 0).float().mean() > 0.5
    assert (y == 10).sum() > len(digit_windows)
    assert set(y.tolist()) <= set(range(11))


def test_detect_finds_one_box_where_the_map_peaks_and_nothing_where_background_wins():
    maps = torch.full((1, 11, 30, 30), -10.0)
    maps[0, 10] = 10.0                                  # background everywhere
    maps[0, 7, 5, 20], maps[0, 10, 5, 20] = 10.0, -10.0  # but a 7 in the window at row 5, column 20
    maps[0, 7, 5, 21], maps[0, 10, 5, 21] = 5.0, 0.0    # and a weaker 7 beside it
    (boxes, scores, labels), = detect(maps, WINDOW, 10, 0.05, 0.3, 100)
    assert boxes.tolist() == [[20., 5., 48., 33.]] and labels.tolist() == [7]
    assert scores[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the script

TINY = ["--canvas-size", "56", "--max-digits", "3", "--canvases", "20", "--train-canvases", "40",
        "--val-canvases", "10", "--epochs", "2", "--device", "cpu", "--seeds", "1"]


@pytest.fixture(scope="module")
def classifier(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    ex1_mlp.main(ex1_mlp.get_args(["--width", "8", "--depth", "2", "--residual", "--epochs", "2",
                                   "--val-size", "50", "--device", "cpu", "--data-dir", mnist_dir,
                                   "--out-dir", str(out)]))
    path, = out.glob("*/best.pt")
    return str(path)


def run(argv):
    return ex2_fcn.main(ex2_fcn.get_args(argv))


def test_the_script_fine_tunes_benchmarks_and_redraws_byte_for_byte(classifier, mnist_dir, tmp_path):
    where = ["--classifier", classifier, "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs")]
    table = run(TINY + where + ["--fig-dir", str(tmp_path / "a"), "--seeds", "2"])
    folder = next((tmp_path / "runs").glob("detector_*_s0_*"))
    assert len(list((tmp_path / "runs").glob("detector_*_s1_*"))) == 1
    assert " ± " in open(table).read() and "over 2 runs (seeds 0-1)" in open(table).read()
    saved = json.loads((folder / "benchmark.json").read_text())["content"]
    assert set(saved["detectors"]) == {"surgery", "finetuned"}
    assert len(saved["detectors"]["surgery"]["ap"]) == 10
    assert saved["examples"]["canvases"]["shape"] == [3, 56, 56]  # the figure's canvases, saved with it
    assert (folder / "best.pt").exists()
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    assert ckpt["arch"]["kwargs"]["num_classes"] == 11
    # --plot-only, without MNIST: the same table and figure, byte for byte
    run(TINY + where[:2] + ["--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "runs"),
                            "--plot-only", "--fig-dir", str(tmp_path / "b"), "--seeds", "2"])
    for name in ("ex2_fcn_table.md", "ex2_fcn_detections.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert open(table).read() == (tmp_path / "b" / "ex2_fcn_table.md").read_text()


def test_a_benchmark_interrupted_after_the_fine_tuning_is_measured_on_the_next_run(classifier, mnist_dir,
                                                                                   tmp_path):
    where = ["--classifier", classifier, "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
             "--fig-dir", str(tmp_path / "figs")]
    run(TINY + where)
    folder, = (tmp_path / "runs").glob("detector_*")
    first = (folder / "benchmark.json").read_text()
    (folder / "benchmark.json").unlink()
    run(TINY + where)
    again = json.loads((folder / "benchmark.json").read_text())["content"]
    first = json.loads(first)["content"]
    assert again["detectors"]["finetuned"]["ap"] == first["detectors"]["finetuned"]["ap"]


def test_detect_reads_an_image_and_prints_its_digits(classifier, mnist_dir, tmp_path, capsys):
    from PIL import Image
    where = ["--classifier", classifier, "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
             "--fig-dir", str(tmp_path / "figs")]
    run(TINY + where)
    image = tmp_path / "canvas.png"
    canvas = torch.zeros(60, 80, dtype=torch.uint8)
    canvas[10:38, 30:58] = 200
    Image.fromarray(canvas.numpy()).save(image)
    boxes, scores, labels = run(TINY + where + ["--detect", str(image)])
    assert boxes.shape[1] == 4 and boxes[:, 2].max() <= 80 and boxes[:, 3].max() <= 60
    assert "digits at score >=" in capsys.readouterr().out


def test_benchmarks_swapped_between_two_detector_folders_are_refused(classifier, mnist_dir, tmp_path, capsys):
    """Both benchmarks (and their example canvases) have the same shape: only the settings each
    names, its run's, tell them apart."""
    where = ["--classifier", classifier, "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
             "--fig-dir", str(tmp_path / "figs"), "--seeds", "2"]
    run(TINY + where)
    a, b = (next((tmp_path / "runs").glob(f"detector_*_s{s}_*")) / ex2_fcn.BENCHMARK_FILE for s in (0, 1))
    first, second = a.read_bytes(), b.read_bytes()
    a.write_bytes(second), b.write_bytes(first)
    code, err = cli_in_process(ex2_fcn, TINY + where + ["--plot-only"], capsys)
    assert_one_line_error(code, err, "holds detector benchmark results of other settings")


DEAD_PID = 2 ** 22 + 1  # above Linux's pid_max: no process has it


def test_detect_refuses_a_fifo_and_a_bomb_in_one_line_and_a_rerun_clears_a_killed_write(
        classifier, mnist_dir, tmp_path, capsys, monkeypatch):
    import os
    from PIL import Image
    where = ["--classifier", classifier, "--data-dir", mnist_dir, "--out-dir", str(tmp_path / "runs"),
             "--fig-dir", str(tmp_path / "figs")]
    run(TINY + where)
    fifo = tmp_path / "canvas.png"
    os.mkfifo(fifo)  # opened, it would block until killed
    code, err = cli_in_process(ex2_fcn, TINY + where + ["--detect", str(fifo)], capsys)
    assert_one_line_error(code, err, "is not a regular file")
    bomb = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses twice that: 300x300 is a bomb here
    code, err = cli_in_process(ex2_fcn, TINY + where + ["--detect", str(bomb)], capsys)
    assert_one_line_error(code, err, "decompression bomb")
    monkeypatch.undo()
    folder, = (tmp_path / "runs").glob("detector_*")
    dead, alive = folder / f".tmp-{DEAD_PID}-x", folder / f".tmp-{os.getpid()}-x"
    for path in (dead, alive):  # a killed benchmark write's leftover, and a live writer's file
        path.write_bytes(b"half a benchmark")
    run(TINY + where)
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize("argv,message", [
    (["--canvas-size", "20"], "--canvas-size 20 is smaller than a digit"),
    (["--max-digits", "10"], "--max-digits 10: at most 9 digits"),
    (["--threshold", "1.5"], "--threshold"),
    (["--nms-iou", "0"], "--nms-iou"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ex2_fcn.get_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_checkpoint_that_is_not_an_mnist_classifier_is_refused_and_nothing_written(tmp_path, capsys):
    from lab.files import save_atomic
    path = tmp_path / "cnn.pt"
    net = CifarResNet(1, width=4)
    save_atomic({"model": net.state_dict(), "arch": {"name": "CifarResNet", "kwargs": {"blocks_per_stage": 1,
                 "width": 4}}, "config": {"val_size": 50}}, str(path))
    argv = ["--classifier", str(path), "--out-dir", str(tmp_path / "runs")]
    code, err = cli_in_process(ex2_fcn, argv, capsys)
    assert_one_line_error(code, err, "is not a checkpoint of a MLP")
    mlp = MLP(8, 2, in_features=100)
    save_atomic({"model": mlp.state_dict(), "arch": {"name": "MLP", "kwargs": {"width": 8, "depth": 2,
                 "in_features": 100}}, "config": {"val_size": 50}}, str(path))
    code, err = cli_in_process(ex2_fcn, argv, capsys)
    assert_one_line_error(code, err, "is not an MNIST classifier of 10 classes")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ----------------------------------------------------------------------------- the committed results

def test_the_published_detector_beats_the_surgery_alone():
    found = list((__import__("pathlib").Path(ROOT) / "results" / "ex2_fcn").glob("detector_*/benchmark.json"))
    if not found:
        pytest.skip("no published Exercise 2.2 results yet")
    for path in found:
        detectors = json.loads(path.read_text())["content"]["detectors"]
        assert detectors["finetuned"]["map"] > detectors["surgery"]["map"], path


def test_the_table_names_the_settings_that_made_it_not_where_it_went():
    import ex2_fcn
    assert ex2_fcn.results_command(ex2_fcn.get_args(["--seeds", "5", "--plot-only", "--fig-dir", "x"])) == \
        "python ex2_fcn.py --seeds 5"
    assert ex2_fcn.results_command(ex2_fcn.get_args(["--plot-only"])) == "python ex2_fcn.py"


@pytest.mark.parametrize("detector, field, value, says", [
    ("finetuned", "map", 1.7, "'map': must be a number in [0, 1]"),
    ("surgery", "ap", [0.5] * 9, "'ap': 9 items, not 10"),
    ("surgery", "true_boxes", 7, "measured on different canvases"),
    ("surgery", "ms_per_canvas", "fast", "'ms_per_canvas': 'fast' is not a number"),
])
def test_a_saved_benchmark_is_checked_whole_before_use(detector, field, value, says, tmp_path):
    import glob
    import re
    from lab.errors import UserError
    committed = sorted(glob.glob(os.path.join(ROOT, "results", "ex2_fcn", "*", "benchmark.json")))[0]
    saved = json.loads(open(committed).read())
    path = tmp_path / ex2_fcn.BENCHMARK_FILE
    path.write_text(json.dumps(saved))
    read = ex2_fcn.benchmark_of(str(tmp_path), saved["settings"])  # as committed: read
    assert read["detectors"] == saved["content"]["detectors"]
    assert read["examples"]["canvases"].shape == (3, 96, 96)
    saved["content"]["detectors"][detector][field] = value
    path.write_text(json.dumps(saved))
    with pytest.raises(UserError, match=re.escape(says)):
        ex2_fcn.benchmark_of(str(tmp_path), saved["settings"])
