import os

import pytest
import torch

import bench
from conftest import assert_one_line_error, cli_in_process
from models import CifarResNet


def test_mlp_benchmark_compares_pipelines_and_threads_and_says_its_command(mnist_dir, tmp_path, capsys):
    bench.main(bench.get_args(["mlp", "--data-dir", mnist_dir, "--val-size", "50", "--batch-size", "16",
                               "--max-steps", "3", "--device", "cpu", "--fig-dir", str(tmp_path)]))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("depth")]
    assert len(lines) == len(bench.MLP_DEPTHS)
    for line in lines:  # three timings, all positive, and two comparisons per depth
        numbers = [float(w.rstrip("x;,")) for w in line.split() if w.rstrip("x;,").replace(".", "").isdigit()]
        assert len(numbers) >= 4 and all(n > 0 for n in numbers[1:]), line
        assert sum(line.count(w) for w in ("faster than", "slower than", "as fast as")) == 2, line
    saved = (tmp_path / "bench_mlp.md").read_text()
    # numbers made with other flags say so: never under the README's plain `python bench.py mlp`
    assert saved.startswith("```\n$ python bench.py mlp --") and "--max-steps 3" in saved


@pytest.mark.slow
def test_cnn_benchmark_reports_every_layout_against_torch_mm(cifar_folder, tmp_path, capsys, monkeypatch):
    real = os.cpu_count
    monkeypatch.setattr(os, "cpu_count", lambda: min(2, real() or 1))  # a pool of at most 2 processes
    bench.main(bench.get_args(["cnn", "--data-dir", cifar_folder, "--val-size", "10", "--batch-size", "8",
                               "--max-steps", "2", "--device", "cpu", "--fig-dir", str(tmp_path)]))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "images/s" in line]
    expected = 2 + 2 * len({os.cpu_count(), 1}) + (os.cpu_count() > 1)
    assert len(rows) == expected and all("% of torch.mm" in r for r in rows)
    assert any("channels_last" in r for r in rows) and any("contiguous" in r for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["mlp", "--batch-size", "0"], "--batch-size: must be an integer from 1"),
    (["mlp", "--max-steps", "-1"], "--max-steps: must be an integer from 1"),
    (["mlp", "--batch-size", "60000", "--val-size", "50"], "too few batches to time"),
])
def test_bad_flags_are_one_line_errors(argv, message, mnist_dir, tmp_path, capsys):
    argv = argv + ["--data-dir", mnist_dir, "--device", "cpu", "--fig-dir", str(tmp_path)]
    assert_one_line_error(*cli_in_process(bench, argv, capsys), message)


def test_macs_of_resnet20_match_the_known_count():
    # He et al.'s ResNet-20 is about 41 M multiply-accumulates per 32x32 image
    macs = bench.conv_linear_macs(CifarResNet(3, 16), torch.zeros(1, 3, 32, 32))
    assert 40e6 < macs < 42e6


def test_a_slower_setting_is_called_slower_not_0_9x_faster():
    import bench
    assert bench.compared(2.0, 1.0, "it") == "2.0x faster than it"
    assert bench.compared(1.0, 1.25, "it") == "1.2x slower than it"
    assert bench.compared(1.0, 1.02, "it") == "as fast as it"


def test_only_publish_replaces_the_committed_measurements(tmp_path, monkeypatch):
    """`python bench.py mlp` on a loaded machine must not rewrite the idle numbers the README links."""
    monkeypatch.setattr(bench, "SCRATCH_DIR", str(tmp_path / "scratch"))
    (folder, publish), _ = bench.output_place(bench.get_args(["mlp"]))
    assert not publish and folder == str(tmp_path / "scratch")
    (folder, publish), _ = bench.output_place(bench.get_args(["mlp", "--publish"]))
    assert publish and os.path.abspath(folder) == os.path.join(os.path.dirname(bench.__file__), "figures")
