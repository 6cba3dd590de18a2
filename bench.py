"""Speed of this repository's data pipeline against the usual DataLoader one, same process.

    python bench.py mlp      # epoch time, MNIST MLP at depths 2 and 32
    python bench.py cnn      # images/s of ResNet-20 training on CIFAR-10, and GFLOP/s vs torch.mm

Each line prints a ratio against a baseline measured in the same run, so the numbers
compare like with like on whatever machine runs it.
"""
import os
import time

import torch
import torch.nn.functional as F

from data import (CIFAR10_MEAN, CIFAR10_STD, CROP_PADDING, MNIST_MEAN, MNIST_STD, batches,
                  epoch_order, load_cifar10, load_mnist, normalize_images, random_crop_flip)
from models import MLP
from utils import ArgumentParser, get_device, hardware, run_cli, update_readme, write_text_atomic

PROG = "bench.py"
MLP_DEPTHS = (2, 32)
CNN_BLOCKS = 3          # ResNet-20
CNN_STEPS = 60          # per measurement: enough to average out, short enough to run often
LOADER_WORKERS = 2
MATMUL_SIZE = 2048


def get_args(argv=None):
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("what", choices=["mlp", "cnn"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-size", type=int, default=5000, help="held out as in training, so the epoch is the same")
    p.add_argument("--fig-dir", default="figures", help="where the printed results are also written")
    p.add_argument("--max-steps", type=int, default=0,
                   help="time at most this many steps per measurement (0: a whole epoch)")
    return p.parse_args(argv)


def timed_steps(model, optimizer, loader, max_steps, prepare=lambda x, y: (x, y)):
    """Train over `loader`; returns (seconds, images). The first step is a warm-up, not timed."""
    model.train()
    n, start = 0, None
    for step, (x, y) in enumerate(loader):
        x, y = prepare(x, y)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if start is None:
            start = time.perf_counter()
            continue
        n += y.shape[0]
        if max_steps and step >= max_steps:
            break
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def bench_mlp(args, device):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data = load_mnist(args.data_dir, device, args.val_size)
    usual = datasets.MNIST(args.data_dir, train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]))
    n_epoch = len(data.train)
    lines = [f"MNIST MLP, width 16, batch {args.batch_size}, {hardware(device)}; "
             f"times scaled to one epoch of {n_epoch} images"]
    for depth in MLP_DEPTHS:
        results = {}
        for name in ("DataLoader", "in-memory"):
            torch.manual_seed(0)
            model = MLP(16, depth).to(device)
            # the same fused Adam in both, so the ratio is the data pipeline's alone
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
            if name == "DataLoader":  # the usual pipeline: PIL image -> ToTensor -> Normalize per sample
                loader = DataLoader(usual, batch_size=args.batch_size, shuffle=True)
                prepare = lambda x, y: (x.to(device).flatten(1), y.to(device))  # noqa: E731
                seconds, n = timed_steps(model, optimizer, loader, args.max_steps, prepare)
            else:
                order = epoch_order(n_epoch, torch.Generator().manual_seed(0), device)
                seconds, n = timed_steps(model, optimizer, batches(data.train, args.batch_size, order),
                                         args.max_steps)
            results[name] = seconds / n * n_epoch
        lines.append(f"depth {depth:>2}: DataLoader {results['DataLoader']:6.2f} s/epoch, "
                     f"in-memory {results['in-memory']:6.2f} s/epoch, "
                     f"ratio {results['DataLoader'] / results['in-memory']:5.1f}x")
    return lines


def conv_linear_macs(model, x):
    """Multiply-accumulates of one forward pass of `x` through the convs and linears of `model`."""
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * k)
        else:
            macs.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return sum(macs)


def matmul_gflops(device, n=MATMUL_SIZE, repeats=10):
    """The machine's float32 matrix-multiply rate: a large square torch.mm, timed."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per sample: a PIL image, then the transforms."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3) uint8, as CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def bench_cnn(args, device):
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from ex1_cnn import get_args as cnn_args, run_config, build_model

    data = load_cifar10(args.data_dir, device, args.val_size)
    config = run_config(cnn_args([]), CNN_BLOCKS, True, 0)
    steps = args.max_steps or CNN_STEPS
    usual = PILImages(data.train.x.cpu(), data.train.y.cpu(), transforms.Compose([
        transforms.RandomCrop(32, padding=CROP_PADDING), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]))
    generator = torch.Generator().manual_seed(0)
    ours = (lambda x: normalize_images(random_crop_flip(x, generator)))
    macs = conv_linear_macs(build_model(config).to(device), normalize_images(data.train.x[:1]))
    lines = [f"CIFAR-10 ResNet-20 (residual, n={CNN_BLOCKS}) training, batch {args.batch_size}, {steps} steps "
             f"per measurement, {hardware(device)}; {macs / 1e6:.1f} M multiply-accumulates per image"]
    rates = {}
    for name in ("DataLoader (PIL, 0 workers)", f"DataLoader (PIL, {LOADER_WORKERS} workers)", "in-memory tensors"):
        torch.manual_seed(0)
        model = build_model(config).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        if name.startswith("DataLoader"):
            workers = 0 if "0 workers" in name else LOADER_WORKERS
            loader = DataLoader(usual, batch_size=args.batch_size, shuffle=True, num_workers=workers)
            prepare = lambda x, y: (x.to(device), y.to(device))  # noqa: E731
            seconds, n = timed_steps(model, optimizer, loader, steps, prepare)
        else:
            order = epoch_order(len(data.train), torch.Generator().manual_seed(0), device)
            seconds, n = timed_steps(model, optimizer, batches(data.train, args.batch_size, order, ours), steps)
        rates[name] = n / seconds
    base = rates["DataLoader (PIL, 0 workers)"]
    for name, rate in rates.items():
        lines.append(f"{name:>28}: {rate:7.0f} images/s, {6 * macs * rate / 1e9:5.1f} GFLOP/s of model "
                     f"arithmetic, {rate / base:4.2f}x the 0-worker DataLoader")
    lines.append(f"{'torch.mm ' + str(MATMUL_SIZE) + 'x' + str(MATMUL_SIZE):>28}: {matmul_gflops(device):5.1f} "
                 "GFLOP/s (float32; training counts 6 FLOPs per multiply-accumulate, forward and backward)")
    return lines


def main(args):
    device = get_device(args.device)
    lines = bench_mlp(args, device) if args.what == "mlp" else bench_cnn(args, device)
    text = "\n".join(lines)
    print(text)
    # the README shows the last measurement, as printed, never numbers typed by hand
    block = f"```\n$ python bench.py {args.what}\n{text}\n```\n"
    write_text_atomic(block, os.path.join(args.fig_dir, f"bench_{args.what}.md"))
    update_readme(args.fig_dir, f"bench_{args.what}", block)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
