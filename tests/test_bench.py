import bench


def test_mlp_benchmark_prints_and_saves_ratios(mnist_dir, tmp_path, capsys):
    bench.main(bench.get_args(["mlp", "--data-dir", mnist_dir, "--val-size", "50", "--batch-size", "16",
                               "--max-steps", "3", "--device", "cpu", "--fig-dir", str(tmp_path)]))
    out = capsys.readouterr().out
    assert out.count("ratio") == len(bench.MLP_DEPTHS)
    assert "ratio" in (tmp_path / "bench_mlp.md").read_text()


def test_cnn_benchmark_reports_throughput_and_gflops(cifar_folder, tmp_path, capsys):
    bench.main(bench.get_args(["cnn", "--data-dir", cifar_folder, "--val-size", "10", "--batch-size", "8",
                               "--max-steps", "2", "--device", "cpu", "--fig-dir", str(tmp_path)]))
    out = capsys.readouterr().out
    assert out.count("images/s") == 3 and "torch.mm" in out and "GFLOP/s" in out


def test_macs_of_resnet20_match_the_known_count():
    import torch
    from models import CifarResNet
    # He et al.'s ResNet-20 is about 41 M multiply-accumulates per 32x32 image
    macs = bench.conv_linear_macs(CifarResNet(3, 16), torch.zeros(1, 3, 32, 32))
    assert 40e6 < macs < 42e6
