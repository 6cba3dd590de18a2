"""Exercise 1.3: plain vs residual CNNs on CIFAR-10 (He et al. 2016, Fig. 6 and Table 6).

    python ex1_cnn.py --blocks 3 --residual            # ResNet-20; best-validation checkpoint saved
    python ex1_cnn.py --blocks 3 --residual --cpu      # the same with the CPU preset
    python ex1_cnn.py --sweep [--cpu]                  # plain vs residual at depths 8, 20, 32
    python ex1_cnn.py --sweep --cpu --plot-only        # redraw the figure and table from saved runs

Deeper plain networks train worse than shallower ones; residual networks of the same
depth and parameter count do not. The checkpoint of each run (runs/ex1_cnn/<run>/best.pt)
is what ex2_cam.py explains.
"""
import math
import os

import torch

from data import CIFAR10_VAL_SIZE, load_cifar10, normalize_images, random_crop_flip
from models import CifarResNet
from utils import (ArgumentParser, Run, UserError, check_positive, collect_runs, count,
                   epoch_seconds, fit, format_result, get_device, hardware, pending_runs,
                   print_result, run_cli, run_jobs, run_result, save_figure, seed_everything,
                   update_readme, write_text_atomic)

PROG = "ex1_cnn.py"
SWEEP_BLOCKS = (1, 3, 5)
# The CPU preset: what a 2-core machine affords for the default sweep (six runs) in about
# 2 hours: fewer epochs and one seed. With 6 epochs ResNet-20 stopped at 0.787 test
# accuracy on the JPEG copy; 8 take it past 0.80 (README). On a GPU use the defaults.
CPU_PRESET = {"epochs": 8, "seeds": 1}


def get_args(argv=None):
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--blocks", type=int, default=3, help="blocks per stage n; depth is 6n+2")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage w (then 2w, 4w)")
    p.add_argument("--residual", action="store_true", help="add the identity shortcuts")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up to --lr, then cosine decay to 0")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-subset", type=int, default=0,
                   help="train on the first N images of the (shuffled) training split; 0: all")
    p.add_argument("--val-size", type=int, default=CIFAR10_VAL_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true",
                   help=f"CPU preset: {', '.join(f'--{k} {v}' for k, v in CPU_PRESET.items())}")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", default="data",
                   help="torchvision's CIFAR-10 files, or an ImageFolder copy here or in data/cifar10-jpeg")
    p.add_argument("--out-dir", default="runs/ex1_cnn")
    p.add_argument("--fig-dir", default="figures")
    p.add_argument("--sweep", action="store_true", help="plain vs residual at each --blocks-list, --seeds seeds")
    p.add_argument("--blocks-list", default=",".join(map(str, SWEEP_BLOCKS)),
                   help="sweep blocks per stage (add 9 for depth 56 on a GPU)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1,
                   help="sweep processes; on a CPU each gets cores/workers threads")
    p.add_argument("--plot-only", action="store_true", help="with --sweep: redraw from saved runs")
    args = p.parse_args(argv)
    if args.cpu:
        for key, value in CPU_PRESET.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    check_positive(p, args, "blocks", "width", "epochs", "lr", "batch_size", "seeds", "workers",
                   "val_size")
    if args.train_subset < 0 or args.warmup_epochs < 0 or args.weight_decay < 0:
        p.error("--train-subset, --warmup-epochs and --weight-decay must not be negative")
    try:
        args.blocks_list = [int(b) for b in args.blocks_list.split(",")]
    except ValueError:
        p.error(f"--blocks-list takes comma-separated integers, got {args.blocks_list!r}")
    if any(b < 1 for b in args.blocks_list):
        p.error("--blocks-list must be positive")
    return args


def run_config(args, blocks, residual, seed):
    """What defines a run (and must match for a saved run to count as this one)."""
    return {"blocks": blocks, "width": args.width, "residual": residual, "epochs": args.epochs,
            "lr": args.lr, "warmup_epochs": args.warmup_epochs, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "train_subset": args.train_subset, "val_size": args.val_size, "seed": seed}


def run_name(config):
    return f"{'res' if config['residual'] else 'plain'}_n{config['blocks']}_s{config['seed']}"


def build_model(config, num_classes=10):
    return CifarResNet(config["blocks"], config["width"], config["residual"], num_classes)


def warmup_cosine(total_steps, warmup_steps):
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def load_data(args, device):
    data = load_cifar10(args.data_dir, device, args.val_size)
    if args.train_subset:
        if args.train_subset > len(data.train):
            raise UserError(f"--train-subset {args.train_subset} exceeds the {len(data.train)} training images")
        data.train.x, data.train.y = data.train.x[:args.train_subset], data.train.y[:args.train_subset]
    return data


def train(config, data, device, out_dir, progress=True):
    """Train one configuration; returns its run record (metrics.json)."""
    generator = seed_everything(config["seed"])
    # channels-last lets cuDNN use tensor-core kernels; on the CPU the default layout is as fast
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = build_model(config, len(data.classes)).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                                nesterov=True, weight_decay=config["weight_decay"])
    steps = math.ceil(len(data.train) / config["batch_size"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        config["epochs"] * steps, round(config["warmup_epochs"] * steps)))

    def train_transform(x):  # uint8 batch -> augmented, normalized float batch
        return normalize_images(random_crop_flip(x, generator)).contiguous(memory_format=memory_format)

    def eval_transform(x):
        return normalize_images(x).contiguous(memory_format=memory_format)

    meta = {"data": data.source, "hardware": hardware(device)}
    run = Run(os.path.join(out_dir, run_name(config)), config, meta)
    return fit(model, data, optimizer, run, epochs=config["epochs"], batch_size=config["batch_size"],
               generator=generator, scheduler=scheduler, train_transform=train_transform,
               eval_transform=eval_transform, progress=progress, desc=run_name(config))


# ----------------------------------------------------------------------------- sweep

def sweep_configs(args):
    return [run_config(args, b, residual, s) for b in args.blocks_list for residual in (False, True)
            for s in range(args.seeds)]


def _sweep_setup(job_args):
    args, device = job_args
    return load_data(args, device)


def _sweep_run(job, data):
    (args, device), config = job
    train(config, data, device, args.out_dir, progress=args.workers == 1)


def sweep(args, device):
    configs = sweep_configs(args)
    todo = pending_runs(configs, args.out_dir, run_name)
    if todo:
        load_data(args, device)  # fail here, in one line; this also builds the decoded cache
        wall = run_jobs(_sweep_run, [((args, device), c) for c in todo], [c["blocks"] for c in todo],
                        args.workers, desc="sweep", setup=_sweep_setup, setup_args=(args, device))
        print(f"sweep: trained {count(len(todo), 'run')} in {wall / 60:.1f} min wall time ({hardware(device)})")
    make_figures(args, configs)


# ----------------------------------------------------------------------------- figures

def _collect(args, configs):
    return collect_runs(args.out_dir, configs, run_name, lambda c: (c["residual"], c["blocks"]),
                        f"python {PROG} --sweep{' --cpu' if args.cpu else ''}")


def _caption(found, args):
    record = next(iter(found.values()))[0]
    subset = f", {args.train_subset} training images" if args.train_subset else ""
    return (f"{record['meta']['data']}, {args.epochs} epochs{subset}, SGD lr {args.lr:g}, "
            f"batch {args.batch_size}; {record['meta']['hardware']}")


def _final(name):
    """The value of `name` at a run's last epoch (None if that epoch has none: it diverged)."""
    return lambda record: record["epochs"][-1].get(name)


def make_table(found, args):
    lines = ["| depth | network | final val. accuracy | final train loss | test accuracy (best val.) "
             "| s per epoch |", "|---:|---|---:|---:|---:|---:|"]
    for b in sorted(args.blocks_list):
        for residual in (False, True):
            records = found.get((residual, b))
            if not records:
                continue
            cells = [format_result(records, key) for key in (_final("val_acc"), _final("train_loss"),
                                                             run_result)]
            cells.append(format_result(records, epoch_seconds, digits=0))
            lines.append(f"| {6 * b + 2} | {'residual' if residual else 'plain'} | " + " | ".join(cells) + " |")
    n_seeds = max(len(r) for r in found.values())
    timed = [epoch_seconds(r) * len(r["epochs"]) for rs in found.values() for r in rs if epoch_seconds(r)]
    total = f" The runs' epochs took {sum(timed) / 60:.0f} min in all." if timed else ""
    lines += ["", f"Mean ± std over {n_seeds} seed(s) (std 0 with one seed); s per epoch is the wall "
                  f"time of training plus validation.{total} {_caption(found, args)}. "
                  f"Made by `python {PROG} --sweep{' --cpu' if args.cpu else ''}`."]
    return "\n".join(lines) + "\n"


def plot_curves(found, args, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(args.blocks_list, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (residual, b), records in sorted(found.items()):
        for ax, key in zip(axes, ("val_acc", "train_loss")):
            n = min(len(r["epochs"]) for r in records)
            mean = torch.tensor([[e.get(key, float("nan")) for e in r["epochs"][:n]] for r in records]).mean(0)
            ax.plot(range(1, n + 1), mean, color=colors[b], ls="-" if residual else "--", marker=".",
                    label=f"{'residual' if residual else 'plain'}-{6 * b + 2}")
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="CIFAR-10: validation accuracy")
    axes[1].set(xlabel="epoch", ylabel="training loss", title="training loss (augmented batches)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, _caption(found, args) + "; solid: residual, dashed: plain", path, caption_height=0.04)


def make_figures(args, configs):
    found = _collect(args, configs)
    os.makedirs(args.fig_dir, exist_ok=True)
    table = make_table(found, args)
    write_text_atomic(table, os.path.join(args.fig_dir, "ex1_cnn_table.md"))
    update_readme(args.fig_dir, "ex1_cnn_table", table)
    plot_curves(found, args, os.path.join(args.fig_dir, "ex1_cnn_curves.png"))
    print(table)
    print(f"figures written to {args.fig_dir}/")


def main(args):
    device = get_device(args.device)
    if args.sweep:
        return make_figures(args, sweep_configs(args)) if args.plot_only else sweep(args, device)
    if args.plot_only:
        raise UserError("--plot-only goes with --sweep")
    data = load_data(args, device)
    config = run_config(args, args.blocks, args.residual, args.seed)
    print(f"{run_name(config)} (depth {6 * args.blocks + 2}): {data.source}, "
          f"{len(data.train)} training images, {hardware(device)}")
    record = train(config, data, device, args.out_dir)
    print_result(record, os.path.join(args.out_dir, run_name(config)))
    return record


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
