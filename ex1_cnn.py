"""Exercise 1.3: plain vs residual CNNs on CIFAR-10 (He et al. 2016, Fig. 6 and Table 6).

    python ex1_cnn.py --blocks 3 --residual            # ResNet-20; best-validation checkpoint saved
    python ex1_cnn.py --blocks 3 --residual --cpu      # the same with the CPU preset (8 epochs)
    python ex1_cnn.py --sweep --cpu                    # plain vs residual at depths 8, 20, 32, 56, 3 seeds
    python ex1_cnn.py --sweep --cpu --plot-only        # redraw the README's table and figure
    python ex1_cnn.py --sweep --shard 0/4              # a quarter of a sweep (e.g. a SLURM array task)

Deeper plain networks train worse than shallower ones; residual networks of the same
depth and parameter count do not. The checkpoint of each run (best.pt in its run folder)
is what ex2_cam.py and ex2_why.py read.
"""
import math
import os
import sys

import torch

from data import CIFAR10_VAL_SIZE, cifar_transforms, load_cifar10
from models import CifarResNet
from report import (cnn_name, cnn_style, depth_gap, epoch_times, fastest_epoch_seconds, format_gap,
                    format_result,
                    print_result, run_result, save_figure)
from training import CNN_CPU_EPOCHS, Recipe, fit, sgd_warmup_cosine
from utils import get_device, run_meta, seed_everything
from lab import ArgumentParser, Sweep, count, kinds, outputs, prepared_run, run_cli, runs

PROG = "ex1_cnn.py"
EXERCISE = "ex1_cnn"
SWEEP_BLOCKS = (1, 3, 5, 9)  # depths 8, 20, 32 and 56 (He et al.'s Fig. 6 goes to 56 and 110)
GAP_BLOCKS = (3, 9)          # the depth gap the README measures: 56 layers against 20
DEFAULTS = {"epochs": 40, "seeds": 3}
# The CPU preset: what a 2-core machine affords for the README's sweep (eight networks, three
# seeds; the README gives its cost): 8 epochs (the README's table shows what they reach). On a
# GPU use the defaults.
CPU_PRESET = {"epochs": CNN_CPU_EPOCHS}
# a single run's epoch per block per stage on our 2-core CPU, for the warning before a long CPU
# run: ResNet-20 (3 blocks) at bench.py cnn's rate on both cores (figures/bench_cnn.md)
CPU_EPOCH_SECONDS_PER_BLOCK = 26
MAX_BLOCKS, MAX_WIDTH = 200, 1024  # depth 1202, He et al.'s deepest CIFAR network; 64x its width
README_SWEEP = ["--sweep", "--cpu"]  # the command whose results the README shows


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--blocks", type=kinds.count_flag(MAX_BLOCKS), default=3,
                   help="blocks per stage n; depth is 6n+2")
    p.add_argument("--width", type=kinds.count_flag(MAX_WIDTH), default=16,
                   help="channels of the first stage w (then 2w, 4w)")
    p.add_argument("--residual", action="store_true", help="add the identity shortcuts")
    p.add_argument("--epochs", type=kinds.EPOCHS, default=None,
                   help=f"training epochs (default: {DEFAULTS['epochs']}, {CPU_PRESET['epochs']} with --cpu)")
    p.add_argument("--lr", type=kinds.LR, default=0.1, help="peak SGD learning rate")
    p.add_argument("--warmup-epochs", type=kinds.Number(float, 0, kinds.MAX_EPOCHS), default=1.0,
                   help="linear warm-up to --lr, then cosine decay to 0")
    p.add_argument("--momentum", type=kinds.Number(float, 0, 1, open_low=True, open_high=True,
                                                   why="Nesterov momentum: above 0, below 1"),
                   default=0.9, help="Nesterov momentum")
    p.add_argument("--weight-decay", type=kinds.Number(float, 0, 1), default=5e-4, help="L2 penalty of SGD")
    p.add_argument("--batch-size", type=kinds.BATCH, default=128, help="training images per step")
    p.add_argument("--train-subset", type=kinds.count_flag(kinds.MAX_IMAGES, low=0), default=0,
                   help="train on the first N images of the (shuffled) training split; 0: all")
    p.add_argument("--val-size", type=kinds.IMAGES, default=CIFAR10_VAL_SIZE,
                   help="validation images held out of the training set (seeded split)")
    p.add_argument("--seed", type=kinds.SEED, default=0,
                   help="seed of initialization, batch order and augmentation")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU preset: fewer epochs, unless --epochs is given (the device is --device's)")
    p.add_device_flag()
    p.add_argument("--data-dir", default="data",
                   help="torchvision's CIFAR-10 files, or an ImageFolder copy here or in data/cifar10-jpeg")
    p.add_run_flags(EXERCISE)
    p.add_argument("--sweep", action="store_true",
                   help="plain vs residual at each --blocks-list, --seeds seeds; skips finished runs")
    p.add_argument("--blocks-list", default=",".join(map(str, SWEEP_BLOCKS)),
                   help="sweep blocks per stage (depth 6n+2)")
    p.add_argument("--seeds", type=kinds.SEEDS, default=None,
                   help=f"sweep seeds 0..N-1 (default: {DEFAULTS['seeds']})")
    p.add_argument("--checkpoints", action="store_true",
                   help="with --sweep: also train again, into --out-dir, the finished runs whose best.pt "
                        "is not at hand (the published seeds 1 and 2: their checkpoints are not in git)")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    for key, value in DEFAULTS.items():  # a flag the user gave always wins over the preset
        if getattr(args, key) is None:
            setattr(args, key, CPU_PRESET.get(key, value) if args.cpu else value)
    try:
        args.blocks_list = list(dict.fromkeys(int(b) for b in args.blocks_list.split(",")))
    except ValueError:
        p.error(f"--blocks-list takes comma-separated integers, got {args.blocks_list!r}")
    if any(not 1 <= b <= MAX_BLOCKS for b in args.blocks_list):
        p.error(f"--blocks-list must be from 1 to {MAX_BLOCKS}")
    if (args.plot_only or args.shard) and not args.sweep:
        p.error("--plot-only and --shard go with --sweep")
    return args


def run_config(args, blocks, residual, seed):
    """What defines a run (and must match for a saved run to count as this one)."""
    return {"blocks": blocks, "width": args.width, "residual": residual, "epochs": args.epochs,
            "lr": args.lr, "warmup_epochs": args.warmup_epochs, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "train_subset": args.train_subset, "val_size": args.val_size, "seed": seed}


def run_name(config):
    return runs.folder_name(f"{'res' if config['residual'] else 'plain'}_n{config['blocks']}", config)


def arch_of(config, num_classes=10):
    """The model a run trains, as its checkpoint records it (models.build_model)."""
    return {"name": "CifarResNet", "kwargs": {"blocks_per_stage": config["blocks"], "width": config["width"],
                                              "residual": config["residual"], "num_classes": num_classes}}


def load_data(args, device):
    return load_cifar10(args.data_dir, device, args.val_size, train_subset=args.train_subset)


def train(config, data, device, out_dir, progress=True, tensorboard=None):
    """Train one configuration; returns (outcome, record) as training.fit does."""
    generator = seed_everything(config["seed"])
    # channels-last: cuDNN's tensor-core kernels, and faster on CPUs too (bench.py cnn measures both)
    memory_format = torch.channels_last
    arch = arch_of(config, len(data.classes))
    model = CifarResNet(**arch["kwargs"]).to(device, memory_format=memory_format)
    optimizer, scheduler = sgd_warmup_cosine(model, config, math.ceil(len(data.train) / config["batch_size"]))
    train_transform, eval_transform = cifar_transforms(generator, memory_format)
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator, scheduler,
                    train_transform=train_transform, eval_transform=eval_transform)
    meta = run_meta(data, device, memory_format="channels_last")
    if progress:  # a single run says what it trains on
        print(f"{run_name(config)}: {data.source}, {count(len(data.train), 'training image')}")
    with runs.RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch, tensorboard) as run:
        return fit(model, data, recipe, run, progress)


def sweep_configs(args):
    return runs.unique([run_config(args, b, residual, s) for b in args.blocks_list
                        for residual in (False, True) for s in range(args.seeds)])


def roots(args):
    """Where finished runs are looked up: the committed results, then the run folder."""
    return runs.lookup_roots(args.out_dir, EXERCISE)


# ----------------------------------------------------------------------------- figures

def is_readme_sweep(args):
    """True when `args` are the settings of the README's sweep (so its results may go there)."""
    return sweep_configs(args) == sweep_configs(get_args(README_SWEEP))


def _caption(found, args):
    meta = found[0][1]["meta"]
    subset = f", {args.train_subset} training images" if args.train_subset else ""
    return (f"{meta['data']}, {args.epochs} epochs{subset}, SGD lr {args.lr:g}, "
            f"batch {args.batch_size}; {meta['hardware']}")


def _final(name):
    """The value of `name` at a run's last epoch (None if that epoch has none: it diverged)."""
    return lambda record: record["epochs"][-1].get(name) if record["epochs"] else None


def _by_network(found):
    groups = {}
    for config, record, _ in found:
        groups.setdefault((config["residual"], config["blocks"]), []).append(record)
    return groups


GAP_COLUMNS = (("final val. accuracy", _final("val_acc")), ("final train loss", _final("train_loss")),
               ("test accuracy (best val.)", run_result))


def depth_gaps(groups, shallow=GAP_BLOCKS[0], deep=GAP_BLOCKS[1]):
    """{residual: [depth_gap of each GAP_COLUMNS]} for the networks with runs at both depths."""
    return {residual: [depth_gap(groups[(residual, deep)], groups[(residual, shallow)], key)
                       for _, key in GAP_COLUMNS]
            for residual in (False, True) if (residual, deep) in groups and (residual, shallow) in groups}


def gap_table(groups, shallow=GAP_BLOCKS[0], deep=GAP_BLOCKS[1]):
    """Lines of the table of the depth gap (deep minus shallow), per network, with per-seed signs."""
    gaps = depth_gaps(groups, shallow, deep)
    if not gaps:
        return []
    depth_of = CifarResNet.depth_of
    lines = ["", f"| {depth_of(deep)} minus {depth_of(shallow)} layers | "
             + " | ".join(name for name, _ in GAP_COLUMNS)
             + " | val. accuracy, per seed | train loss, per seed |",
             "|---|" + "---:|" * (len(GAP_COLUMNS) + 2)]
    for residual, row in gaps.items():
        per_seed = [", ".join(f"{d:+.3f}" for d in row[i][2].values()) if row[i] else "-" for i in (0, 1)]
        lines.append(f"| {'residual' if residual else 'plain'} | "
                     + " | ".join(format_gap(g) for g in row) + " | " + " | ".join(per_seed) + " |")
    lines += ["", f"Depth {depth_of(deep)} minus depth {depth_of(shallow)}: the difference of the means over "
                  "the seeds ± its standard error (sqrt(s1²/n1 + s2²/n2), seeds as independent draws), and "
                  "the same difference within each seed, in the order of the seeds."]
    return lines


def make_table(found, args, missing):
    groups = _by_network(found)
    lines = ["| depth | network | final val. accuracy | final train loss | test accuracy (best val.) "
             "| fastest epoch (s) | seeds |", "|---:|---|---:|---:|---:|---:|---:|"]
    for b in sorted(args.blocks_list):
        for residual in (False, True):
            records = groups.get((residual, b))
            if not records:
                continue
            cells = [format_result(records, key) for key in (_final("val_acc"), _final("train_loss"),
                                                             run_result)]
            cells += [format_result(records, fastest_epoch_seconds, digits=0), str(len(records))]
            network = "residual" if residual else "plain"
            lines.append(f"| {CifarResNet.depth_of(b)} | {network} | " + " | ".join(cells) + " |")
    n_seeds = len({c["seed"] for c, _, _ in found})
    uneven = len({len(records) for records in groups.values()}) > 1
    per_row = " (each row over the seeds it shows)" if uneven else ""
    seconds = sum(sum(epoch_times(r)) for _, r, _ in found)
    at_fastest = sum(fastest_epoch_seconds(r) * len(epoch_times(r)) for _, r, _ in found if epoch_times(r))
    total = (f" The runs' epochs took {seconds / 60:.0f} CPU-process minutes in all, {at_fastest / 60:.0f} "
             "if every epoch had been its run's fastest." if seconds else "")
    gaps = f" **{count(missing, 'run')} of the sweep not finished yet.**" if missing else ""
    command = " ".join(README_SWEEP) if is_readme_sweep(args) else "--sweep ..."
    lines += ["", f"Mean ± std over {count(n_seeds, 'seed')}{per_row}; an epoch's time is the wall time of "
                  "training plus validation, and each run's fastest epoch is the one least slowed by other "
                  f"work on the machine.{total} {_caption(found, args)}.{gaps} "
                  f"Made by `python {PROG} {command}`."]
    lines += gap_table(groups)
    return "\n".join(lines) + "\n"


def plot_curves(found, args, path):
    """Validation accuracy and training loss per epoch: a thin line per seed, the mean thick."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.2))
    for (residual, b), records in sorted(_by_network(found).items()):
        for ax, key in zip(axes, ("val_acc", "train_loss")):
            style = cnn_style(residual, b)
            series = [[e.get(key, float("nan")) for e in r["epochs"]] for r in records]
            for s in series:
                ax.plot(range(1, len(s) + 1), s, lw=0.6, alpha=0.5, **style)
            n = min(len(s) for s in series)
            mean = torch.tensor([s[:n] for s in series]).mean(0)
            ax.plot(range(1, n + 1), mean, lw=1.8, marker=".", **style,
                    label=cnn_name(residual, b))
    axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="CIFAR-10: validation accuracy")
    axes[1].set(xlabel="epoch", ylabel="training loss", title="training loss (augmented batches)")
    for ax in axes:
        ax.grid(alpha=0.3)
    # beside the panels, where it hides no curve; long handles, so dashed (plain) shows as dashed
    axes[1].legend(fontsize=8, handlelength=4, loc="upper left", bbox_to_anchor=(1.02, 1))
    n_seeds = len({c["seed"] for c, _, _ in found})
    save_figure(fig, _caption(found, args) + f"; solid: residual, dashed: plain; thin: each of "
                f"{count(n_seeds, 'seed')}, thick: mean", path)


def make_figures(args, configs):
    fig_dir, publish = outputs.destination(args, get_args(README_SWEEP))
    readme = None if is_readme_sweep(args) else " ".join(["python", PROG, *README_SWEEP, "--plot-only"])
    found, missing = outputs.sweep_results(configs, roots(args), run_name, fig_dir,
                                           f"python {PROG} --sweep ...", readme)
    table = make_table(found, args, missing)
    table_path = outputs.write_table(table, "ex1_cnn_table", fig_dir, publish)
    plot_curves(found, args, os.path.join(fig_dir, "ex1_cnn_curves.png"))
    print(table)
    print(f"table {table_path} and figure written to {fig_dir}/")


def warn_long_cpu_run(args, device):
    if device.type == "cpu" and not args.cpu and args.epochs > CPU_PRESET["epochs"]:
        hours = args.epochs * CPU_EPOCH_SECONDS_PER_BLOCK * args.blocks / 3600
        print(f"note: {args.epochs} epochs on a CPU: about {hours:.1f} h on our idle 2-core CPU, several "
              f"times that with other work beside it; --cpu trains the {CPU_PRESET['epochs']}-epoch "
              "CPU preset", file=sys.stderr)


def sweep(args, device):
    """--sweep: train the runs not finished yet (of --shard), then draw the tables and figures of all
    that are."""
    configs = sweep_configs(args)
    if not args.plot_only:
        outputs.destination(args, get_args(README_SWEEP))  # an unwritable figure folder fails before training
        Sweep(EXERCISE, run_name, load_data, train, args).run(device, configs, lambda c: c["blocks"],
                                                              need_checkpoints=args.checkpoints)
    return make_figures(args, configs)


def main(args):
    device = get_device(args.device)
    if args.sweep:
        return sweep(args, device)
    config = run_config(args, args.blocks, args.residual, args.seed)
    # a single CNN run takes every core (threads None)
    record, folder, data = prepared_run(EXERCISE, run_name(config), config, args, device, None, load_data)
    if record is None:
        warn_long_cpu_run(args, device)
        _, record = train(config, data, device, args.out_dir, tensorboard=args.tensorboard)
    return print_result(record, folder)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
