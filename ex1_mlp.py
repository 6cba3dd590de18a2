"""Exercise 1.1-1.2: plain vs residual MLPs of width 16 on MNIST, at depths 2 to 64.

    python ex1_mlp.py --depth 32 --residual      # one run: prints its test accuracy
    python ex1_mlp.py --sweep                    # the table, curves and gradient figures
    python ex1_mlp.py --sweep --plot-only        # redraw them from saved runs
    python ex1_mlp.py --sweep --shard 0/4        # a quarter of the sweep (e.g. a SLURM array task)

Model selection is on a 5,000-image validation split of the training set; the test
accuracy reported is that of the best-validation epoch, computed once at the end.
"""
import os

import torch
import torch.nn as nn

from data import MNIST_VAL_SIZE, load_mnist
from models import MLP
from report import finished_results, format_result, mean_std, print_result, save_figure
from training import Recipe, fit
from utils import get_device, run_meta, seed_everything
from lab import (ArgumentParser, DataError, Sweep, UserError, count, kinds, load_model, outputs,
                 prepared_run, run_cli, runs)

PROG = "ex1_mlp.py"
EXERCISE = "ex1_mlp"
README_SWEEP = ["--sweep"]  # the command whose results the README shows
# Width-16 matrix products are far too small to share between threads: one thread per process
# (bench.py mlp measures one thread against two)
THREADS = 1
SWEEP_DEPTHS = (2, 8, 32, 64)
# name -> (residual, layers per block, rezero); the columns of the report's table, then ours
VARIANTS = {
    "plain": (False, 1, False),
    "res1": (True, 1, False),
    "res2": (True, 2, False),
    "res1-rezero": (True, 1, True),
}
VARIANT_LABELS = {
    "plain": "plain",
    "res1": "residual, 1 layer/block",
    "res2": "residual, 2 layers/block",
    "res1-rezero": "residual, 1 layer/block + ReZero",
}
MAX_WIDTH, MAX_DEPTH = 4096, 1024  # the largest MLP a flag may ask for
DEPTH_COLORS = ("tab:purple", "tab:orange", "tab:cyan", "black")
GRADIENT_DEPTHS = (32, 64)
GRADIENT_BATCH = 128  # one training batch, as in training
STATS_FILE = "layer_stats.json"  # gradient norms and forward RMS, beside the run they describe


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--width", type=kinds.count_flag(MAX_WIDTH), default=16, help="units per hidden layer")
    p.add_argument("--depth", type=kinds.count_flag(MAX_DEPTH), default=8,
                   help="hidden width x width layers (stem not counted)")
    p.add_argument("--residual", action="store_true", help="add identity skips around each block")
    p.add_argument("--layers-per-block", type=kinds.count_flag(MAX_DEPTH), default=1,
                   help="Linear+ReLU layers per residual block")
    p.add_argument("--rezero", action="store_true",
                   help="scale each residual branch by a learnable scalar initialized to 0 (ReZero)")
    p.add_argument("--epochs", type=kinds.EPOCHS, default=21, help="training epochs")
    p.add_argument("--lr", type=kinds.LR, default=1e-4, help="Adam learning rate")
    p.add_argument("--batch-size", type=kinds.BATCH, default=128, help="training images per step")
    p.add_argument("--seed", type=kinds.SEED, default=0, help="seed of initialization and batch order")
    p.add_device_flag()
    p.add_argument("--data-dir", default="data", help="where MNIST is (or is downloaded to)")
    p.add_argument("--val-size", type=kinds.IMAGES, default=MNIST_VAL_SIZE,
                   help="validation images held out of the training set (seeded split)")
    p.add_run_flags(EXERCISE)
    p.add_argument("--sweep", action="store_true",
                   help="all depths x variants x seeds; resumes, skipping finished runs")
    p.add_argument("--depths", default=",".join(map(str, SWEEP_DEPTHS)), help="sweep depths")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"sweep variants, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=kinds.SEEDS, default=3, help="sweep seeds: 0..N-1")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    try:
        args.depths = list(dict.fromkeys(int(d) for d in args.depths.split(",")))
    except ValueError:
        p.error(f"--depths takes comma-separated integers, got {args.depths!r}")
    args.variants = list(dict.fromkeys(args.variants.split(",")))
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if any(not 1 <= d <= MAX_DEPTH for d in args.depths):
        p.error(f"--depths must be from 1 to {MAX_DEPTH}")
    if args.sweep:
        for v in args.variants:
            odd = [d for d in args.depths if d % VARIANTS[v][1]]
            if odd:
                p.error(f"--variants {v} has {VARIANTS[v][1]} layers per block: --depths {odd[0]} is not a "
                        "multiple of it")
    if args.depth % args.layers_per_block:
        p.error(f"--depth {args.depth} is not a multiple of --layers-per-block {args.layers_per_block}")
    if args.rezero and not args.residual:
        p.error("--rezero gates residual branches: add --residual")
    if (args.plot_only or args.shard) and not args.sweep:
        p.error("--plot-only and --shard go with --sweep")
    return args


def run_config(args, depth, seed, residual, layers_per_block, rezero):
    """What defines a run (and must match for a saved run to count as this one)."""
    return {"width": args.width, "depth": depth, "residual": residual,
            "layers_per_block": layers_per_block, "rezero": rezero, "epochs": args.epochs,
            "lr": args.lr, "batch_size": args.batch_size, "val_size": args.val_size, "seed": seed}


def variant_of(residual, layers_per_block, rezero):
    for name, spec in VARIANTS.items():
        if spec == (residual, layers_per_block, rezero):
            return name
    return f"res{layers_per_block}{'-rezero' if rezero else ''}" if residual else "plain"


def run_name(config):
    variant = variant_of(config["residual"], config["layers_per_block"], config["rezero"])
    return runs.folder_name(f"{variant}_d{config['depth']}", config)


def arch_of(config, in_features, num_classes):
    """The model a run trains, as its checkpoint records it (models.build_model)."""
    return {"name": "MLP", "kwargs": {
        "width": config["width"], "depth": config["depth"], "in_features": in_features,
        "num_classes": num_classes, "layers_per_block": config["layers_per_block"],
        "residual": config["residual"], "rezero": config["rezero"]}}


def load_data(args, device):
    return load_mnist(args.data_dir, device, args.val_size)


def train(config, data, device, out_dir, progress=True, tensorboard=None):
    """Train one configuration; returns (outcome, record) as training.fit does."""
    generator = seed_everything(config["seed"])
    arch = arch_of(config, data.train.x.shape[1], len(data.classes))
    model = MLP(**arch["kwargs"]).to(device)
    # fused Adam: one kernel for all parameters instead of several per tensor per step
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], fused=True)
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator)
    meta = run_meta(data, device)
    if progress:  # a single run says what it trains on
        print(f"{run_name(config)}: {data.source}, {count(len(data.train), 'training image')}")
    with runs.RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch, tensorboard) as run:
        return fit(model, data, recipe, run, progress)


def sweep_configs(args):
    return runs.unique([run_config(args, d, s, *VARIANTS[v]) for v in args.variants for d in args.depths
                        for s in range(args.seeds)])


def cost(config):
    """A run's relative time: its per-step time grows with the number of layers."""
    return config["depth"] + 2


def roots(args):
    """Where finished runs are looked up: the committed results, then the run folder."""
    return runs.lookup_roots(args.out_dir, EXERCISE)


# ----------------------------------------------------------------------------- figures

def is_readme_sweep(args):
    """True when `args` are the settings of the README's sweep (so its results may go there)."""
    return sweep_configs(args) == sweep_configs(get_args(README_SWEEP))


def _group(found):
    """{(variant, depth): [records]} of [(config, record, folder)]."""
    groups = {}
    for c, record, _ in found:
        key = variant_of(c["residual"], c["layers_per_block"], c["rezero"]), c["depth"]
        groups.setdefault(key, []).append(record)
    return groups


def _caption(found, args):
    record = next(iter(found.values()))[0]
    return (f"{record['meta']['data']}, width {args.width}, Adam lr {args.lr:g}, batch {args.batch_size}, "
            f"{args.epochs} epochs; {record['meta']['hardware']}")


def make_table(found, args, missing=0):
    """Markdown: test accuracy (mean ± std over seeds) per depth and variant."""
    variants = [v for v in args.variants if any((v, d) in found for d in args.depths)]
    lines = ["| depth | " + " | ".join(VARIANT_LABELS[v] for v in variants) + " |",
             "|---:|" + "---:|" * len(variants)]
    for d in args.depths:
        cells = []
        for v in variants:
            cells.append(format_result(found.get((v, d), [])))
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    n_seeds = max(len(r) for r in found.values())
    gaps = f" **{count(missing, 'run')} of the sweep not finished yet.**" if missing else ""
    command = " ".join(README_SWEEP) if is_readme_sweep(args) else "--sweep ..."
    lines += ["", f"Test accuracy of the best-validation epoch, mean ± std over {count(n_seeds, 'seed')}. "
                  f"{_caption(found, args)}.{gaps} Made by `python {PROG} {command}`."]
    return "\n".join(lines) + "\n"


def plot_depth(found, args, path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in args.variants:
        results = {d: finished_results(found.get((v, d), []))[0] for d in args.depths}
        depths = [d for d in args.depths if results[d]]
        stats = [mean_std(results[d]) for d in depths]
        if depths:
            ax.errorbar(depths, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=VARIANT_LABELS[v])
    ax.set(xscale="log", xlabel="depth (hidden layers)", ylabel="test accuracy",
           title="MLP on MNIST: test accuracy vs depth (mean ± std)")
    ax.set_xticks(args.depths, [str(d) for d in args.depths])
    ax.minorticks_off()  # log-scale minor labels (3x10^0 ...) would overprint the depths
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, _caption(found, args), path)


def plot_curves(found, args, path):
    """Training loss and validation accuracy per epoch, mean over seeds, a panel per variant."""
    import matplotlib.pyplot as plt
    variants = [v for v in args.variants if any((v, d) in found for d in args.depths)]
    fig, axes = plt.subplots(2, len(variants), figsize=(3.2 * len(variants), 5.5), squeeze=False,
                             sharey="row")
    # distinct colours (a colour map's neighbouring shades made depths 2 and 8 hard to tell apart)
    colors = DEPTH_COLORS * len(args.depths)
    # deeper nets drawn wider, beneath the shallower: two depths on the same curve (plain 32 and
    # 64, both at chance) both show
    widths = {d: 1.2 + 2.4 * i / max(1, len(args.depths) - 1) for i, d in enumerate(sorted(args.depths))}
    for col, v in enumerate(variants):
        for d, color in zip(args.depths, colors):
            for row, key in enumerate(("train_loss", "val_acc")):
                series = [[e.get(key, float("nan")) for e in r["epochs"]] for r in found.get((v, d), [])]
                n = min((len(s) for s in series), default=0)
                if n:
                    mean = torch.tensor([s[:n] for s in series]).mean(0)
                    axes[row, col].plot(range(1, n + 1), mean, color=color, label=f"depth {d}", lw=widths[d],
                                        zorder=3 + len(widths) - sorted(widths).index(d))
        axes[0, col].set_title(VARIANT_LABELS[v], fontsize=9)
        axes[0, col].set_yscale("log")
        axes[1, col].set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("validation accuracy")
    axes[1, 0].legend(fontsize=7)
    save_figure(fig, _caption(found, args) + "; mean over seeds", path)


def layer_stats(model, x, y):
    """Per Linear layer, input to output: gradient norms of weight and bias on one batch,
    and the RMS of the hidden state after the stem and after every block."""
    activations = [model.stem(x)]
    for block in model.blocks:
        activations.append(block(activations[-1]))
    loss = nn.functional.cross_entropy(model.classifier(activations[-1]), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {"weight": [m.weight.grad.norm().item() for m in linears],
            "bias": [m.bias.grad.norm().item() for m in linears],
            "activation_rms": [a.detach().pow(2).mean().sqrt().item() for a in activations]}


def stats_schema(config):
    """The layer statistics of the run of `config`: per Linear layer (stem, hidden, classifier) a
    gradient norm of weight and bias, per block and the stem an RMS; NaN and inf allowed (an
    underflowed or exploded gradient is a result)."""
    norm = kinds.Number(float, 0, float("inf"), finite=False)
    linears, states = config["depth"] + 2, config["depth"] // config["layers_per_block"] + 1
    moment = {"weight": kinds.ListOf(norm, linears), "bias": kinds.ListOf(norm, linears),
              "activation_rms": kinds.ListOf(norm, states)}
    return {"init": moment, "trained": moment}


def gradient_stats(args, device, found):
    """{(variant, depth): {'init': stats, 'trained': stats}} for the seed-0 runs at the gradient depths.
    The stats are saved beside each run (layer_stats.json, with its config and its checkpoint's
    SHA-256), so they are computed once, with MNIST, and redrawn without it."""
    wanted = [d for d in args.depths if d in GRADIENT_DEPTHS] or [max(args.depths)]
    out, data = {}, None
    for c, _, folder in found:
        if c["seed"] != 0 or c["depth"] not in wanted:
            continue

        def compute(config=c, folder=folder):
            nonlocal data
            if data is None:  # MNIST is read only if some statistics are not saved yet
                data = load_mnist(args.data_dir, device, args.val_size)
            return layer_stats_of_run(config, folder, data, device)

        inputs = outputs.inputs_of({runs.CHECKPOINT_FILE: os.path.join(folder, runs.CHECKPOINT_FILE)})
        stats = outputs.computed_once(os.path.join(folder, STATS_FILE), "layer statistics", c, inputs,
                                      stats_schema(c), compute, f"python {PROG} --sweep (with MNIST)")
        out[(variant_of(c["residual"], c["layers_per_block"], c["rezero"]), c["depth"])] = stats
    return out


def layer_stats_of_run(config, folder, data, device):
    """layer_stats at the run's initialization and of its best checkpoint, on one training batch."""
    x, y = data.train.x[:GRADIENT_BATCH], data.train.y[:GRADIENT_BATCH]
    path = os.path.join(folder, runs.CHECKPOINT_FILE)
    remedy = f"delete the run folder {folder} and rerun the sweep"
    trained, ckpt = load_model(path, device, MLP, remedy)
    if ckpt["config"] != config:
        raise UserError(f"{path} is the checkpoint of another run; {remedy}")
    seed_everything(config["seed"])  # the same initialization the run started from
    model = MLP(**ckpt["arch"]["kwargs"]).to(device)
    return {"init": layer_stats(model, x, y), "trained": layer_stats(trained, x, y)}


def plot_gradients(stats, caption, path):
    import matplotlib.pyplot as plt
    depths = sorted({d for _, d in stats})
    fig, axes = plt.subplots(len(depths), 2, figsize=(11, 3.6 * len(depths)), squeeze=False)
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for row, d in enumerate(depths):
        for col, when in enumerate(("init", "trained")):
            ax = axes[row, col]
            zeros = []
            for (v, dd), s in stats.items():
                if dd != d:
                    continue
                layers = range(1, len(s[when]["weight"]) + 1)
                # a zero gradient (ReZero's gated layers at initialization, underflow in plain
                # nets) has no logarithm: leave a gap rather than a line to the axis, and say so
                weight, bias = ([g if g > 0 else float("nan") for g in s[when][k]]
                                for k in ("weight", "bias"))
                ax.plot(layers, weight, color=colors[v], label=VARIANT_LABELS[v], marker=".", ms=3)
                ax.plot(layers, bias, color=colors[v], ls="--")
                n_zero = sum(not g > 0 for g in s[when]["weight"])
                if n_zero:
                    zeros.append(f"{VARIANT_LABELS[v]}: {n_zero} of {len(layers)}")
            if zeros:
                ax.text(0.99, 0.02, "weight gradient exactly 0, not drawn:\n" + "\n".join(zeros),
                        transform=ax.transAxes, fontsize=7, va="bottom", ha="right",
                        bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
            stage = "at initialization" if when == "init" else "after training"
            ax.set(yscale="log", xlabel="linear layer (1 = input projection, last = classifier)",
                   ylabel="gradient norm", title=f"depth {d}, {stage}")
            ax.xaxis.get_major_locator().set_params(integer=True)  # layers are whole numbers
            ax.grid(alpha=0.3)
    # one legend above the panels, where it hides no curve
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9)
    save_figure(fig, f"{caption}; one training batch of {GRADIENT_BATCH}, seed 0; solid: weight gradients, "
                     "dashed: bias gradients", path, top_inches=0.35)


def plot_activations(stats, caption, path):
    import matplotlib.pyplot as plt
    depths = sorted({d for _, d in stats})
    fig, axes = plt.subplots(1, len(depths), figsize=(5.5 * len(depths), 3.8), squeeze=False)
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for col, d in enumerate(depths):
        ax = axes[0, col]
        for (v, dd), s in stats.items():
            if dd == d:
                for when, ls in (("init", "-"), ("trained", ":")):
                    rms = s[when]["activation_rms"]
                    layers_per_block = VARIANTS[v][1]
                    ax.plot(range(0, len(rms) * layers_per_block, layers_per_block), rms,
                            color=colors[v], ls=ls, label=VARIANT_LABELS[v] if when == "init" else None)
        ax.set(yscale="log", xlabel="hidden layers passed (0 = after the input projection)",
               ylabel="RMS of the hidden state", title=f"depth {d}: forward signal")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9)  # above: it hides no curve
    save_figure(fig, f"{caption}; one training batch of {GRADIENT_BATCH}, seed 0; solid: at initialization, "
                     "dotted: trained", path, top_inches=0.35)


def make_figures(args, configs, device):
    fig_dir, publish = outputs.destination(args, get_args(README_SWEEP))
    readme = None if is_readme_sweep(args) else " ".join(["python", PROG, *README_SWEEP, "--plot-only"])
    found, missing = outputs.sweep_results(configs, roots(args), run_name, fig_dir,
                                           f"python {PROG} --sweep ...", readme)
    groups = _group(found)
    table_path = outputs.write_table(make_table(groups, args, missing), "ex1_mlp_table", fig_dir, publish)
    plot_depth(groups, args, os.path.join(fig_dir, "ex1_mlp_depth.png"))
    plot_curves(groups, args, os.path.join(fig_dir, "ex1_mlp_curves.png"))
    inside = [os.path.join(fig_dir, f) for f in ("ex1_mlp_gradients.png", "ex1_mlp_activations.png")]
    try:
        stats = gradient_stats(args, device, found)
    except DataError as e:
        stats, skipped = {}, f"they need MNIST to compute once: {e}"
    else:
        skipped = "no finished seed-0 run at the gradient depths"
    if stats:
        plot_gradients(stats, _caption(groups, args), inside[0])
        plot_activations(stats, _caption(groups, args), inside[1])
    else:
        outputs.remove_stale(inside)
        print(f"gradient and activation figures skipped: {skipped}")
    with open(table_path, encoding="utf-8") as f:
        print(f.read())
    print(f"table and figures written to {fig_dir}/")


def sweep(args, device):
    """--sweep: train the runs not finished yet (of --shard), then draw the tables and figures of all
    that are."""
    configs = sweep_configs(args)
    if not args.plot_only:
        outputs.destination(args, get_args(README_SWEEP))  # an unwritable figure folder fails before training
        Sweep(EXERCISE, run_name, load_data, train, args).run(device, configs, cost, THREADS)
    return make_figures(args, configs, device)


def main(args):
    device = get_device(args.device)
    if args.sweep:
        return sweep(args, device)
    config = run_config(args, args.depth, args.seed, args.residual, args.layers_per_block, args.rezero)
    record, folder, data = prepared_run(EXERCISE, run_name(config), config, args, device, THREADS, load_data)
    if record is None:
        _, record = train(config, data, device, args.out_dir, tensorboard=args.tensorboard)
    return print_result(record, folder)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
