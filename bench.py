"""Speed of this repository's data pipeline against the usual DataLoader one, same process.

    python bench.py mlp      # epoch time, MNIST MLP at depths 2 and 32: pipelines and threads
    python bench.py cnn      # ResNet-20 training images/s: pipelines, layouts, GFLOP/s vs torch.mm

Each line prints a ratio against a baseline measured in the same run, so the numbers
compare like with like on whatever machine runs it.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

from data import (CIFAR10_MEAN, CIFAR10_STD, CROP_PADDING, MNIST_MEAN, MNIST_STD, batches,
                  epoch_order, load_cifar10, load_mnist, normalize_images, random_crop_flip)
from models import MLP, CifarResNet
from lab import ArgumentParser, UserError, kinds, outputs, run_cli
from utils import get_device, machine

PROG = "bench.py"
SCRATCH_DIR = os.path.join("runs", "bench")  # results of non-default flags: never the README's
MLP_DEPTHS = (2, 32)
MLP_WIDTH = 16
CNN_BLOCKS = 3          # ResNet-20
CNN_STEPS = 60          # per measurement: enough to average out, short enough to run often
LOADER_WORKERS = 2
MATMUL_SIZE = 2048
# the CNN's kind of optimizer (Nesterov SGD, weight decay): a step costs the same whatever the values
CNN_SGD = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


SAME_SPEED = (0.95, 1.05)  # ratios within this band are measurement noise on a shared CPU


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("what", choices=["mlp", "cnn"], help="which training to time")
    p.add_device_flag()
    p.add_argument("--data-dir", default="data", help="where MNIST / CIFAR-10 are")
    p.add_argument("--batch-size", type=kinds.BATCH, default=128, help="training batch size")
    p.add_argument("--val-size", type=kinds.IMAGES, default=5000,
                   help="held out as in training, so the epoch is the same")
    p.add_argument("--fig-dir", default=None,
                   help=f"where the printed results are also written (default: {SCRATCH_DIR}, or "
                        "figures/ with --publish)")
    p.add_argument("--publish", action="store_true",
                   help="replace the committed figures/bench_*.md (run it on an idle machine: the "
                        "README quotes them as idle measurements)")
    p.add_argument("--max-steps", type=kinds.IMAGES, default=None,
                   help="time at most this many steps per measurement (default: a whole epoch for mlp, "
                        f"{CNN_STEPS} for cnn)")
    return p


def get_args(argv=None):
    return make_parser().parse_args(argv)


def cnn_optimizer(model):
    """The optimizer whose steps the CNN benchmarks time."""
    return torch.optim.SGD(model.parameters(), **CNN_SGD)


def timed_steps(model, optimizer, loader, max_steps, prepare=lambda x, y: (x, y)):
    """Train over `loader`; returns (seconds, images). The first step is a warm-up, not timed."""
    n, start = 0, None
    model.train()
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
    if start is None or n == 0:
        raise UserError("too few batches to time: lower --batch-size or raise --max-steps")
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def bench_mlp(args, device):
    """Seconds per epoch: the usual DataLoader pipeline against ours, and ours on 1 thread
    against all threads (width-16 products are too small to share between threads)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data = load_mnist(args.data_dir, device, args.val_size)
    usual = datasets.MNIST(args.data_dir, train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]))
    n_epoch = len(data.train)
    all_threads = os.cpu_count() or 1
    setups = [("DataLoader", 1), ("in-memory", all_threads), ("in-memory", 1)]
    lines = [f"MNIST MLP, width {MLP_WIDTH}, batch {args.batch_size}, fused Adam, {machine(device)}; "
             f"times scaled to one epoch of {n_epoch} images"]
    for depth in MLP_DEPTHS:
        results = {}
        for name, threads in setups:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = MLP(MLP_WIDTH, depth).to(device)
            # the same fused Adam in all, so a ratio is the pipeline's or the threads' alone
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
            if name == "DataLoader":  # the usual pipeline: PIL image -> ToTensor -> Normalize per sample
                loader = DataLoader(usual, batch_size=args.batch_size, shuffle=True)
                prepare = lambda x, y: (x.to(device).flatten(1), y.to(device))  # noqa: E731
                seconds, n = timed_steps(model, optimizer, loader, args.max_steps, prepare)
            else:
                order = epoch_order(n_epoch, torch.Generator().manual_seed(0), device)
                seconds, n = timed_steps(model, optimizer, batches(data.train, args.batch_size, order),
                                         args.max_steps)
            results[(name, threads)] = seconds / n * n_epoch
        loader, many, one = (results[k] for k in setups)
        lines.append(f"depth {depth:>2}: DataLoader {loader:6.2f} s/epoch (1 thread); in-memory "
                     f"{many:6.2f} s/epoch on {all_threads} threads, {one:6.2f} on 1 thread: "
                     f"1 thread in memory is {compared(loader, one, 'the DataLoader')} and "
                     f"{compared(many, one, f'{all_threads} threads')}")
    torch.set_num_threads(all_threads)
    return lines


def compared(baseline_seconds, seconds, baseline):
    """'2.3x faster than <baseline>', '1.2x slower than ...' or 'as fast as ...': `seconds`
    against the baseline's (within 5%: as fast)."""
    ratio = baseline_seconds / seconds
    if ratio >= SAME_SPEED[1]:
        return f"{ratio:.1f}x faster than {baseline}"
    if ratio <= SAME_SPEED[0]:
        return f"{1 / ratio:.1f}x slower than {baseline}"
    return f"as fast as {baseline}"


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


def _cnn_rate(data, device, batch_size, steps, threads, memory_format, seed=0):
    """Training images/s of ResNet-20 on our in-memory pipeline with this thread count and layout."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = CifarResNet(CNN_BLOCKS).to(device, memory_format=memory_format)
    optimizer = cnn_optimizer(model)
    generator = torch.Generator().manual_seed(seed)
    order = epoch_order(len(data.train), generator, device)
    seconds, n = timed_steps(model, optimizer, batches(
        data.train, batch_size, order,
        lambda x: normalize_images(random_crop_flip(x, generator)).contiguous(memory_format=memory_format)),
        steps)
    return n / seconds


def _side_by_side(args_tuple):
    """One of several single-thread processes timing at once (what a CNN sweep worker does)."""
    data_dir, val_size, batch_size, steps, seed = args_tuple
    device = torch.device("cpu")
    data = load_cifar10(data_dir, device, val_size)
    return _cnn_rate(data, device, batch_size, steps, 1, torch.channels_last, seed)


def bench_cnn(args, device):
    from torch.utils.data import DataLoader
    from torchvision import transforms

    data = load_cifar10(args.data_dir, device, args.val_size)
    steps = args.max_steps or CNN_STEPS
    cores = os.cpu_count() or 1
    usual = PILImages(data.train.x.cpu(), data.train.y.cpu(), transforms.Compose([
        transforms.RandomCrop(32, padding=CROP_PADDING), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]))
    macs = conv_linear_macs(CifarResNet(CNN_BLOCKS).to(device), normalize_images(data.train.x[:1]))
    mm = matmul_gflops(device)
    lines = [f"CIFAR-10 ResNet-20 (residual, n={CNN_BLOCKS}) training, batch {args.batch_size}, "
             f"{steps} steps per measurement, {machine(device)}; "
             f"{macs / 1e6:.1f} M multiply-accumulates per image; torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} "
             f"{mm:.1f} GFLOP/s (float32, all threads); training counts 6 FLOPs per multiply-accumulate"]
    rates = {}
    for workers in (0, LOADER_WORKERS):
        torch.set_num_threads(cores)
        torch.manual_seed(0)
        model = CifarResNet(CNN_BLOCKS).to(device)
        optimizer = cnn_optimizer(model)
        loader = DataLoader(usual, batch_size=args.batch_size, shuffle=True, num_workers=workers)
        seconds, n = timed_steps(model, optimizer, loader, steps, lambda x, y: (x.to(device), y.to(device)))
        rates[f"DataLoader (PIL, {workers} workers), {cores} threads, contiguous"] = n / seconds
    for threads in sorted({cores, 1}, reverse=True):
        for fmt, label in ((torch.contiguous_format, "contiguous"), (torch.channels_last, "channels_last")):
            rate = _cnn_rate(data, device, args.batch_size, steps, threads, fmt)
            rates[f"in-memory, {threads} thread{'s' if threads > 1 else ''}, {label}"] = rate
    if device.type == "cpu" and cores > 1:  # the CNN sweep's layout: one single-thread process per core
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(cores) as pool:
            side = pool.map(_side_by_side, [(args.data_dir, args.val_size, args.batch_size, steps, i)
                                            for i in range(cores)])
        rates[f"in-memory, {cores} processes of 1 thread, channels_last (sum)"] = sum(side)
    torch.set_num_threads(cores)
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        gflops = 6 * macs * rate / 1e9
        lines.append(f"{name:>62}: {rate:6.0f} images/s, {gflops:5.1f} GFLOP/s = {100 * gflops / mm:3.0f}% "
                     f"of torch.mm, {rate / base:4.2f}x the first line")
    return lines


def output_place(args):
    """((folder, publish), the defaults): only the README's command with --publish replaces the
    committed measurements in figures/; every other run writes to SCRATCH_DIR or --fig-dir."""
    defaults = get_args([args.what, "--publish"])
    return outputs.destination(args, defaults, SCRATCH_DIR), defaults


def main(args):
    device = get_device(args.device)
    (fig_dir, publish), defaults = output_place(args)
    lines = bench_mlp(args, device) if args.what == "mlp" else bench_cnn(args, device)
    text = "\n".join(lines)
    print(text)
    # the README shows the last measurement of its command, as printed, never numbers typed by hand
    shown = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "publish"})
    command = outputs.command_line(PROG, {"what": args.what}, shown, defaults)
    path = outputs.write_table(f"```\n$ {command}\n{text}\n```\n", f"bench_{args.what}", fig_dir, publish)
    print(f"written to {path}")


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
