"""Exercise 2.1: why residual networks train better, measured inside the trained CNNs.

    python ex2_why.py                      # all four analyses (the README says what it costs)
    python ex2_why.py gradients            # gradient norm of each conv layer, at init and trained
    python ex2_why.py responses            # std of each 3x3 layer's response (He et al. 2016, Fig. 7)
    python ex2_why.py lesion               # delete blocks of the depth-32 and -56 nets (Veit et al. 2016)
    python ex2_why.py landscape --grid 41 --landscape-images 10000  # finer 2-D loss slices, on a GPU

It reads the checkpoints of ex1_cnn.py (the published seed-0 CPU-preset runs in
results/ex1_cnn/, else runs/ex1_cnn/) and trains nothing.
"""
import copy
from dataclasses import dataclass
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import load_cifar10, normalize_images
from models import CifarResNet, ConvBlock, build_model, shortcut
from lab import ArgumentParser, UserError, count, kinds, load_model, outputs, run_cli, runs, set_threads
from report import cnn_name, cnn_style, save_figure
from training import CNN_CPU_EPOCHS
from utils import get_device, hardware, seed_everything

PROG = "ex2_why.py"
ANALYSES = ("gradients", "responses", "lesion", "landscape")
# what each took at the README's settings, measured on our idle 2-core CPU: announced before a long run
CPU_SECONDS = {"gradients": 47, "responses": 22, "lesion": 201, "landscape": 805}
LONG_SECONDS = 5 * 60
SCRATCH_DIR = os.path.join("runs", "ex2_why")  # figures of other checkpoints or settings
MAKE_CHECKPOINTS = "python ex1_cnn.py --sweep --cpu --seeds {seeds} --checkpoints"  # seeds 0..seeds-1
BLOCKS = (1, 3, 5, 9)        # depths 8, 20, 32, 56
LESION_BLOCKS = (5, 9)       # the lesion study and the landscape: the depth-32 and depth-56 networks
LESION_DEPTHS = " or ".join(str(CifarResNet.depth_of(b)) for b in LESION_BLOCKS)
GRADIENT_BATCH = 128         # a training batch, as in training
GRADIENT_BATCHES = 4         # the ratios are a mean over this many batches, with their range
EVAL_BATCH = 500
# the lesion and landscape evaluations run channels-last, as ex1_cnn.py trains (faster on CPUs
# too: `python bench.py cnn` measures both layouts)
MEMORY_FORMAT = torch.channels_last
LOSS_CAP = 10.0              # landscape contours stop here: chance level is ln(10) = 2.3
MAX_DRAWS, MAX_GRID = 1000, 1001
MAX_SPAN = 100.0             # Li et al. plot within ±1
CONFIG_FIELDS = {"seed": kinds.SEED, "val_size": kinds.IMAGES}  # what the analyses read of a run
INTERRUPTED = "the figures it reported written are complete; nothing else was written"
# beside lab.cli's shared ones, the flag that says how much of the command to run: a subset of
# the analyses redraws the README's own figures
WHERE_FLAGS = ("analyses",)


# ----------------------------------------------------------------------------- checkpoints

def find_networks(roots, epochs, seed):
    """{(residual, blocks): best.pt path}, each network from the first of `roots` that has its
    finished run with a checkpoint (the published one first, then one trained again)."""
    found = {}
    for residual in (False, True):
        for blocks in BLOCKS:
            pattern = f"{'res' if residual else 'plain'}_n{blocks}_e{epochs}_s{seed}_*"
            for root in roots:
                finished = [path for _, path in runs.checkpointed_runs(root, pattern)]
                if len(finished) > 1:
                    raise UserError(f"{root} holds {len(finished)} runs of {pattern} (other settings); "
                                    "pass --runs-dir with one of them")
                if finished:
                    found[(residual, blocks)] = finished[0]
                    break
    if not found:
        raise UserError(f"no finished ex1_cnn.py runs with checkpoints, {epochs} epochs and seed {seed} in "
                        f"{' or '.join(roots)}; make them with `{MAKE_CHECKPOINTS.format(seeds=seed + 1)}`")
    return found


def missing_networks(found):
    """The names of the networks (plain and residual at every depth of BLOCKS) not in `found`."""
    return [cnn_name(residual, blocks) for residual in (False, True) for blocks in BLOCKS
            if (residual, blocks) not in found]


def load_network(path, device):
    """(model in eval mode, checkpoint) of an ex1_cnn.py best.pt; anything else is refused."""
    remedy = f"pass the run folders of ex1_cnn.py, or make them with `{MAKE_CHECKPOINTS.format(seeds=1)}`"
    model, ckpt = load_model(path, device, CifarResNet, remedy, config_fields=CONFIG_FIELDS)
    return model, ckpt


def initial_network(ckpt, device):
    """The network the run started from: the same seed, the same construction."""
    seed_everything(ckpt["config"]["seed"])
    return build_model(ckpt["arch"]).to(device)


# ----------------------------------------------------------------------------- 1. gradients

def conv_gradient_norms(model, x, y):
    """The norm of the gradient of the cross-entropy on (x, y) w.r.t. each conv weight, input
    to output (BN parameters apart). The model is in training mode, as when it learns."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    norms = [m.weight.grad.norm().item() for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.zero_grad(set_to_none=True)
    return norms


def gradients(nets, data, device):
    """{key: {'init'/'trained': mean norm per conv layer, 'init_ratios'/'trained_ratios': the
    first/last ratio on each batch}} over GRADIENT_BATCHES training batches: one batch's ratio
    is a noisy estimate (the table gives the range over the batches)."""
    batches = [(normalize_images(data.train.x[i * GRADIENT_BATCH:(i + 1) * GRADIENT_BATCH]),
                data.train.y[i * GRADIENT_BATCH:(i + 1) * GRADIENT_BATCH]) for i in range(GRADIENT_BATCHES)]
    out = {}
    with tqdm(total=len(nets) * 2 * len(batches), desc="gradients", unit="batch") as bar:
        for key, (path, model, ckpt) in nets.items():
            out[key] = {}
            for when, network in (("init", initial_network(ckpt, device)), ("trained", copy.deepcopy(model))):
                norms = []  # (batches, conv layers)
                for x, y in batches:
                    norms.append(conv_gradient_norms(network, x, y))
                    bar.update(1)
                norms = torch.tensor(norms)
                out[key][when] = norms.mean(0).tolist()
                out[key][f"{when}_ratios"] = (norms[:, 0] / norms[:, -1]).tolist()
    return out


def plot_gradients(stats, caption, path):
    import matplotlib.pyplot as plt
    blocks = sorted({b for _, b in stats})
    fig, axes = plt.subplots(len(blocks), 2, figsize=(11, 3.3 * len(blocks)), squeeze=False)
    for row, b in enumerate(blocks):
        for col, when in enumerate(("init", "trained")):
            ax = axes[row, col]
            for residual in (False, True):
                if (residual, b) in stats:
                    norms = stats[(residual, b)][when]
                    ax.plot(range(1, len(norms) + 1), norms, marker=".", label=cnn_name(residual, b),
                            **cnn_style(residual, b))
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set(yscale="log", xlabel="conv layer (1 = stem, last = deepest)", ylabel="gradient norm",
                   title=f"depth {CifarResNet.depth_of(b)}, "
                         f"{'at initialization' if when == 'init' else 'trained'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save_figure(fig, f"{caption}; mean over {GRADIENT_BATCHES} training batches of {GRADIENT_BATCH}", path)


# ----------------------------------------------------------------------------- 2. responses

def response_stds(model, x, batch_size=EVAL_BATCH):
    """Std of each 3x3 layer's response (its BN output: after BN, before the addition and
    the ReLU), per channel over images and positions, then averaged over channels; input to
    output. The stem counts as the first layer."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {i: [0.0, 0.0, 0] for i in range(len(bns))}

    def record(i):
        def hook(module, inputs, out):
            o = out.detach().double().transpose(0, 1).flatten(1)   # (C, B*H*W)
            s = sums[i]
            s[0], s[1], s[2] = s[0] + o.sum(1), s[1] + (o * o).sum(1), s[2] + o.shape[1]
        return hook

    handles = [bn.register_forward_hook(record(i)) for i, bn in enumerate(bns)]
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(normalize_images(x[start:start + batch_size]))
    finally:
        for h in handles:
            h.remove()
    stds = []
    for s, sq, n in sums.values():
        var = (sq - s * s / n) / (n - 1)
        stds.append(var.clamp_min(0).sqrt().mean().item())
    return stds


def responses(nets, data, n_images):
    x = data.val.x[:n_images]
    return {key: response_stds(model, x) for key, (_, model, _) in tqdm(nets.items(), desc="responses",
                                                                        unit="network")}


def plot_responses(stds, caption, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (residual, b), s in sorted(stds.items()):
        style = {**cnn_style(residual, b), "label": cnn_name(residual, b)}
        axes[0].plot(range(1, len(s) + 1), s, **style)
        axes[1].plot(range(1, len(s) + 1), sorted(s, reverse=True), **style)
    axes[0].set(xlabel="3x3 layer index (1 = stem)", ylabel="std of the response", title="by layer")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].set(xlabel="layers sorted by std", ylabel="std of the response", title="sorted by magnitude")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    save_figure(fig, caption + "; solid: residual, dashed: plain", path)


# ----------------------------------------------------------------------------- 3. lesion

class Shortcut(nn.Module):
    """A deleted block: only its parameter-free shortcut (identity, or strided and zero-padded
    where the block changes shape), for plain and residual networks alike."""

    def __init__(self, block):
        super().__init__()
        self.out_channels, self.stride = block.out_channels, block.stride

    def forward(self, x):
        return shortcut(x, self.out_channels, self.stride)


def lesion_networks(nets):
    """The keys (residual, blocks) of the networks the lesion study and the landscape read,
    deepest last: plain before residual at each depth."""
    return [(residual, b) for b in LESION_BLOCKS for residual in (False, True) if (residual, b) in nets]


def blocks_of(model):
    return [i for i, m in enumerate(model.features) if isinstance(m, ConvBlock)]


def lesioned(model, deleted):
    """A copy of `model` whose ConvBlocks number `deleted` (0-based, in order) are deleted."""
    out = copy.deepcopy(model)
    positions = blocks_of(out)
    for j in deleted:
        i = positions[j]
        out.features[i] = Shortcut(out.features[i])
    return out


def as_input(x):
    """uint8 images -> the normalized channels_last batch the lesion and landscape evaluate."""
    return normalize_images(x).contiguous(memory_format=MEMORY_FORMAT)


@torch.no_grad()
def lesion_accuracies(model, deletions, x, y, progress=None, batch_size=EVAL_BATCH):
    """Accuracy of `model` on (x, y) with each list of blocks in `deletions` deleted ([] for the
    intact model). The layers before a lesioned network's first deleted block are the intact
    model's, so their outputs are computed once per batch and shared: the numbers of a full
    forward pass of each lesioned network (a test checks it), in about half the time."""
    model.eval()
    positions = blocks_of(model)
    nets = [(min((positions[j] for j in deleted), default=len(model.features)), lesioned(model, deleted))
            for deleted in deletions]
    correct = [0] * len(deletions)
    for s in range(0, len(x), batch_size):
        h = as_input(x[s:s + batch_size])
        states = [h]  # states[i]: the input of features[i]; the last, the features' output
        for layer in model.features:
            h = layer(h)
            states.append(h)
        for i, (start, net) in enumerate(nets):
            logits = net.classifier(net.features[start:](states[start]).mean(dim=(2, 3)))
            correct[i] += int((logits.argmax(1) == y[s:s + batch_size]).sum())
            if progress is not None:
                progress.update(len(states[0]) / len(x))
    return [c / len(x) for c in correct]


def lesion(nets, data, args, progress):
    """Test accuracy with each block deleted, and with k random blocks deleted (k = 1..max)."""
    generator = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data.test), generator=generator)[:args.lesion_images]
    x, y = data.test.x[idx], data.test.y[idx]
    out = {}
    for key in lesion_networks(nets):
        model = copy.deepcopy(nets[key][1]).to(memory_format=MEMORY_FORMAT)
        n = len(blocks_of(model))
        generator = torch.Generator().manual_seed(args.seed)
        ks = range(1, min(args.lesion_max_k, n) + 1)
        draws = [(k, torch.randperm(n, generator=generator)[:k].tolist()) for k in ks
                 for _ in range(args.lesion_draws)]
        deletions = [[]] + [[j] for j in range(n)] + [d for _, d in draws]
        accs = lesion_accuracies(model, deletions, x, y, progress)
        random_k = {k: [] for k in ks}
        for (k, _), acc in zip(draws, accs[1 + n:]):
            random_k[k].append(acc)
        out[key] = {"intact": accs[0], "single": accs[1:1 + n], "random": random_k,
                    "downsampling": [j for j, i in enumerate(blocks_of(model))
                                     if model.features[i].stride > 1]}
    return out


def plot_lesion(result, caption, path):
    """A row per depth: accuracy with each block deleted, and with k random blocks deleted."""
    import matplotlib.pyplot as plt
    depths = sorted({b for _, b in result})
    fig, axes = plt.subplots(len(depths), 2, figsize=(11, 4.2 * len(depths)), squeeze=False)
    for row, b in zip(axes, depths):
        for residual in (False, True):
            r = result.get((residual, b))
            if r is None:
                continue
            name, style = cnn_name(residual, b), cnn_style(residual, b)
            row[0].plot(range(1, len(r["single"]) + 1), r["single"], marker="o", ms=4, label=name, **style)
            row[0].axhline(r["intact"], color=style["color"], ls=":", lw=1)
            ks = sorted(r["random"], key=int)
            means = [sum(r["random"][k]) / len(r["random"][k]) for k in ks]
            spread = [torch.tensor(r["random"][k]).std().item() if len(r["random"][k]) > 1 else 0.0
                      for k in ks]
            row[1].errorbar([0] + [int(k) for k in ks], [r["intact"]] + means, yerr=[0.0] + spread,
                            marker="o", capsize=3, label=name, **style)
            downsampling = r["downsampling"]
        for j in downsampling:
            row[0].axvline(j + 1, color="gray", lw=0.8, ls="--")
        row[0].set(xlabel="deleted block (dashed: downsampling blocks, replaced by the strided shortcut)",
                   ylabel="test accuracy",
                   title=f"depth {CifarResNet.depth_of(b)}: one block deleted (dotted: intact network)")
        row[1].set(xlabel="random blocks deleted k", ylabel="test accuracy",
                   title=f"depth {CifarResNet.depth_of(b)}: k random blocks (mean ± std of draws)")
        row[0].xaxis.get_major_locator().set_params(integer=True)
        row[1].xaxis.get_major_locator().set_params(integer=True)
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save_figure(fig, caption, path)


# ----------------------------------------------------------------------------- 4. landscape

def filter_normalized_direction(model, generator):
    """A random direction in weight space, {name: tensor}, each filter (a conv's or the
    classifier's output unit) rescaled to the norm of the matching filter of the weights
    (Li et al. 2018). BN parameters and biases get zero: they are not perturbed."""
    direction = {}
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        w_norm = p.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1)
        direction[name] = d * (w_norm / (d_norm + 1e-10)).view(-1, *[1] * (p.dim() - 1))
    return direction


@torch.no_grad()
def mean_loss(model, x, y, batch_size=EVAL_BATCH):
    """Mean cross-entropy of `model` (in eval mode: BN uses its running statistics) on (x, y)."""
    model.eval()
    total = sum(F.cross_entropy(model(as_input(x[s:s + batch_size])), y[s:s + batch_size],
                                reduction="sum").item() for s in range(0, len(x), batch_size))
    return total / len(x)


@torch.no_grad()
def loss_surface(model, x, y, directions, coords, progress=None):
    """(len(coords), len(coords)) losses at weights + a * d1 + b * d2 for a, b in coords."""
    d1, d2 = directions
    work = copy.deepcopy(model).to(memory_format=MEMORY_FORMAT)
    params = dict(work.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    surface = torch.zeros(len(coords), len(coords))
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            for n, p in params.items():
                p.copy_(base[n] + a * d1[n] + b * d2[n])
            surface[i, j] = mean_loss(work, x, y)
            if progress is not None:
                progress.update(1)
    return surface


def landscape(nets, data, args, progress):
    generator = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data.train), generator=generator)[:args.landscape_images]
    x, y = data.train.x[idx], data.train.y[idx]
    coords = torch.linspace(-args.span, args.span, args.grid).tolist()
    out = {}
    for key in lesion_networks(nets):
        model = nets[key][1]
        g = torch.Generator().manual_seed(args.seed)  # the same random draw for every network
        directions = (filter_normalized_direction(model, g), filter_normalized_direction(model, g))
        out[key] = loss_surface(model, x, y, directions, coords, progress)
    return coords, out


def plot_landscape(coords, surfaces, caption, path):
    """Filled contours of log10(loss) of each surface, a row per depth, with the same levels for
    all, from the lowest loss of any network up to LOSS_CAP (beyond it: far worse than chance)."""
    import matplotlib.pyplot as plt
    import numpy as np
    depths = sorted({b for _, b in surfaces})
    fig, axes = plt.subplots(len(depths), 2, figsize=(11.4, 4.8 * len(depths)), squeeze=False)
    low = min(float(s.min()) for s in surfaces.values())
    levels = np.linspace(np.log10(max(low, 1e-3)), np.log10(max(LOSS_CAP, 2 * low)), 17)
    filled = None
    for row, b in zip(axes, depths):
        for ax, residual in zip(row, (False, True)):
            s = surfaces.get((residual, b))
            if s is None:
                ax.set_visible(False)
                continue
            z = s.T.log10().numpy()
            filled = ax.contourf(coords, coords, z, levels=levels, cmap="viridis", extend="max")
            ax.contour(coords, coords, z, levels=levels, colors="k", linewidths=0.4)
            ax.plot(0, 0, "r+", ms=12)
            ax.set(xlabel="direction 1", ylabel="" if residual else "direction 2", aspect="equal",
                   title=f"{cnn_name(residual, b)}: training loss (lowest {float(s.min()):.2f})")
    bar = fig.colorbar(filled, ax=axes.ravel().tolist(), label="training loss")
    ticks = levels[::4]
    bar.set_ticks(ticks, labels=[f"{10 ** t:.2g}" for t in ticks])
    save_figure(fig, caption, path, layout=False, tight_box=True)


# ----------------------------------------------------------------------------- tables

def gradient_table(stats, made_by):
    """How much larger the first conv layer's gradient is than the last's, per network."""
    lines = ["| network | first / last conv gradient norm, at initialization: mean | range | trained: mean "
             "| range |", "|---|---:|---:|---:|---:|"]
    for (residual, b), s in sorted(stats.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for when in ("init", "trained"):
            ratios = s[f"{when}_ratios"]
            cells += [f"{sum(ratios) / len(ratios):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}"]
        lines.append(f"| {cnn_name(residual, b)} | " + " | ".join(cells) + " |")
    lines += ["", "The norm of the gradient of the stem's conv weights over that of the deepest conv "
                  f"layer's, on each of {GRADIENT_BATCHES} training batches of {GRADIENT_BATCH} (the first "
                  f"{GRADIENT_BATCHES * GRADIENT_BATCH} training images): the mean over the batches and "
                  f"their range. {made_by}"]
    return "\n".join(lines) + "\n"


def lesion_table(result, n_images, made_by):
    ks = sorted(next(iter(result.values()))["random"])
    lines = ["| network | intact | one block deleted: mean | worst (block) | k random blocks deleted: "
             + " | ".join(f"k={k}" for k in ks) + " |", "|---|---:|---:|---:|" + "---:|" * len(ks)]
    for (residual, b), r in sorted(result.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        worst = min(range(len(r["single"])), key=lambda j: r["single"][j])
        randoms = [sum(v) / len(v) for _, v in sorted(r["random"].items())]
        lines.append(f"| {cnn_name(residual, b)} | {r['intact']:.3f} | "
                     f"{sum(r['single']) / len(r['single']):.3f} | {r['single'][worst]:.3f} ({worst + 1}) | "
                     + " | ".join(f"{v:.3f}" for v in randoms) + " |")
    lines += ["", f"Test accuracy on {n_images} test images (a seeded sample); k random blocks: mean "
                  "over the draws. Blocks are numbered from the input, 1 to 3n (15 at depth 32, 27 at "
                  "depth 56). "
                  + made_by]
    return "\n".join(lines + [""] + per_block_table(result)) + "\n"


def per_block_table(result):
    """Lines of a table of the accuracy with each single block deleted: a row per block, a
    column per network, downsampling blocks marked."""
    keys = sorted(result, key=lambda k: (k[1], k[0]))
    n_blocks = max(len(result[k]["single"]) for k in keys)
    lines = ["| deleted block | " + " | ".join(cnn_name(*k) for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for j in range(n_blocks):
        cells = [f"{result[k]['single'][j]:.3f}{' (down)' if j in result[k]['downsampling'] else ''}"
                 if j < len(result[k]["single"]) else "" for k in keys]
        lines.append(f"| {j + 1} | " + " | ".join(cells) + " |")
    return lines + ["", "Test accuracy with that one block deleted; (down): a downsampling block, replaced "
                        "by the strided, zero-padded shortcut."]


def landscape_table(coords, surfaces, made_by):
    lines = ["| network | lowest loss | share of the slice below 2 x lowest | below ln 10 (chance) |",
             "|---|---:|---:|---:|"]
    for (residual, b), s in sorted(surfaces.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        low = float(s.min())
        near, below_chance = (float(share.float().mean()) for share in (s < 2 * low, s < math.log(10)))
        lines.append(f"| {cnn_name(residual, b)} | {low:.3f} | {near:.2f} | {below_chance:.2f} |")
    lines += ["", f"Over the {len(coords)}x{len(coords)} grid of the slice, ±{coords[-1]:g} along each "
                  f"direction: the wider the basin, the larger the shares. " + made_by]
    return "\n".join(lines) + "\n"


def block_outputs(stds):
    """The responses of each block's last layer (its branch output, added to the shortcut in
    a residual network): the stem's BN is first, then two per block."""
    return stds[2::2]


def response_table(stds, n_images, made_by):
    """Mean std of the 3x3 layers' responses per network: do residual functions respond less?"""
    lines = ["| depth | all 3x3 layers: plain | residual | residual / plain | block outputs: plain "
             "| residual | residual / plain |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in BLOCKS:
        if (False, b) in stds and (True, b) in stds:
            cells = []
            for pick in (list, block_outputs):
                p, r = (sum(pick(stds[(res, b)])) / len(pick(stds[(res, b)])) for res in (False, True))
                cells += [f"{p:.3f}", f"{r:.3f}", f"{r / p:.2f}"]
            lines.append(f"| {CifarResNet.depth_of(b)} | " + " | ".join(cells) + " |")
    lines += ["", "Std of each 3x3 layer's response (after BN, before the addition and the ReLU), per "
                  f"channel over {n_images} validation images, averaged over channels, then "
                  "over the layers: all of them, or only the last of each block (the residual function "
                  "in a residual network). " + made_by]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- orchestration and main

@dataclass
class Inputs:
    """What every analysis reads: the networks {(residual, blocks): (path, model, checkpoint)},
    the data, the flags, and `source(keys)`, the caption naming the checkpoints of `keys`."""
    nets: dict
    data: object
    args: object
    device: object
    source: object


# What each analysis computes (main skips one with no network): {(residual, blocks): what it measured
# of that network}, the caption of its figure and the facts its table says of the data (e.g. how
# many images). The result is saved (results/ex2_why/ for the README's command), and the figure
# and table are drawn from the saved file (lab.outputs), so --plot-only redraws them byte for byte.
FLAGS = {"gradients": (), "responses": ("response_images",),  # the flags that decide its numbers
         "lesion": ("lesion_images", "lesion_draws", "lesion_max_k"),
         "landscape": ("grid", "span", "landscape_images")}


def compute(analysis, inputs):
    """(result, caption, facts) of `analysis` on the networks and data of `inputs`."""
    args, data, nets = inputs.args, inputs.data, inputs.nets
    if analysis == "gradients":
        stats = gradients(nets, data, inputs.device)
        return stats, inputs.source(stats), {}
    if analysis == "responses":
        stds = responses(nets, data, args.response_images)
        n_images = min(args.response_images, len(data.val))
        return stds, f"{inputs.source(stds)}; {n_images} validation images", {"images": args.response_images}
    if analysis == "lesion":
        total = sum(1 + 3 * b + args.lesion_draws * min(args.lesion_max_k, 3 * b)
                    for _, b in lesion_networks(nets))
        with tqdm(total=total, desc="lesion", unit="eval") as bar:
            result = lesion(nets, data, args, bar)
        n_images = min(args.lesion_images, len(data.test))
        return result, (f"{inputs.source(result)}; {n_images} test images (a seeded sample), "
                        f"{args.lesion_draws} draws per k"), {"images": n_images}
    with tqdm(total=len(lesion_networks(nets)) * args.grid ** 2, desc="landscape", unit="point") as bar:
        coords, surfaces = landscape(nets, data, args, bar)
    result = {key: {"coords": coords, "loss": s.tolist()} for key, s in surfaces.items()}
    return result, (f"{inputs.source(surfaces)}; {args.grid}x{args.grid} grid over ±{args.span:g}, "
                    f"{min(args.landscape_images, len(data.train))} training images (a seeded subset), "
                    "BN in eval mode"), {}


def draw(analysis, saved, path):
    """The figure of a saved analysis, written to `path`, and its table's markdown."""
    result, caption, facts = saved["result"], saved["caption"], saved["facts"]
    made_by = f"From {saved['source']}. Made by `{saved['made_by']}`."
    if analysis == "gradients":
        plot_gradients(result, caption, path)
        return gradient_table(result, made_by)
    if analysis == "responses":
        plot_responses(result, caption, path)
        return response_table(result, facts["images"], made_by)
    if analysis == "lesion":
        plot_lesion(result, caption, path)
        return lesion_table(result, facts["images"], made_by)
    coords = next(iter(result.values()))["coords"]
    surfaces = {key: torch.tensor(r["loss"]) for key, r in result.items()}
    plot_landscape(coords, surfaces, caption, path)
    return landscape_table(coords, surfaces, made_by)


def key_name(key):
    """(residual, blocks) -> the run-name prefix, e.g. 'res_n9': a JSON key for a network."""
    return f"{'res' if key[0] else 'plain'}_n{key[1]}"


def _key(name):
    kind, blocks = name.split("_n")
    return kind == "res", int(blocks)


def analysis_settings(analysis, args):
    """What decides an analysis's numbers: its flags, the runs' epochs and seed."""
    return {k: getattr(args, k) for k in ("epochs", "seed") + FLAGS[analysis]}


def network_inputs(analysis, digests):
    """{network: SHA-256 of its checkpoint} of the networks `analysis` reads, as they are now."""
    reads = lesion_networks(digests) if analysis in ("lesion", "landscape") else sorted(digests)
    return {key_name(k): digests[k] for k in reads}


def content_of(computed, source, made_by):
    """What is saved of an analysis: its result by network name, with what its table and figure say
    of it (`source`: the checkpoints, data and hardware; the caption, facts and command)."""
    result, caption, facts = computed
    return {"source": source, "caption": caption, "facts": facts, "made_by": made_by,
            "result": {key_name(k): v for k, v in sorted(result.items())}}


NORM = kinds.Number(float, 0, float("inf"))  # a response's std, a loss
# a gradient norm or a ratio of two: 0, inf or NaN when a plain network's gradient underflows
GRADIENT = kinds.Number(float, 0, float("inf"), finite=False)


def network_schema(analysis, settings, blocks):
    """What `analysis` saves of one network of `blocks` blocks per stage, with these settings:
    every number in its range, every list of its length."""
    layers, n = 6 * blocks + 1, 3 * blocks  # conv layers (the stem, two per block); blocks
    if analysis == "gradients":
        ratios = kinds.ListOf(GRADIENT, GRADIENT_BATCHES)  # first / last layer, per batch
        return {"init": kinds.ListOf(GRADIENT, layers), "trained": kinds.ListOf(GRADIENT, layers),
                "init_ratios": ratios, "trained_ratios": ratios}
    if analysis == "responses":
        return kinds.ListOf(NORM, layers)
    if analysis == "lesion":
        ks = range(1, min(settings["lesion_max_k"], n) + 1)
        return {"intact": kinds.FRACTION, "single": kinds.ListOf(kinds.FRACTION, n),
                "random": {str(k): kinds.ListOf(kinds.FRACTION, settings["lesion_draws"]) for k in ks},
                "downsampling": kinds.ListOf(kinds.Number(int, 0, n - 1), min_length=0)}
    grid, span = settings["grid"], settings["span"]
    return {"coords": kinds.ListOf(kinds.Number(float, -span, span), grid),
            "loss": kinds.ListOf(kinds.ListOf(NORM, grid), grid)}


def content_schema(analysis, settings, networks):
    """The whole saved content of `analysis` on `networks` (their names), as read_result reads it."""
    images = {"responses": "response_images", "lesion": "lesion_images"}.get(analysis)
    facts = {"images": kinds.Number(int, 1, settings[images])} if images else {}  # never more than asked for
    return {"source": str, "caption": str, "facts": facts, "made_by": str,
            "result": {name: network_schema(analysis, settings, _key(name)[1]) for name in networks}}


def read_result(analysis, args, digests, path):
    """The content saved by an earlier run of `analysis` with these settings on these very
    checkpoints (lab.outputs.read_analysis refuses anything else), its results by network again."""
    inputs, settings = network_inputs(analysis, digests), analysis_settings(analysis, args)

    def decode(saved):
        if set(saved["result"]) != set(inputs):
            raise ValueError("the results of other networks")
        result = {_key(name): value for name, value in saved["result"].items()}
        if analysis == "lesion":  # JSON keys are strings: k back to an int
            result = {key: {**r, "random": {int(k): v for k, v in r["random"].items()}}
                      for key, r in result.items()}
        return {**saved, "result": result}

    return outputs.read_analysis(path, analysis, settings, inputs, f"python {PROG} {analysis}", decode,
                                 content_schema(analysis, settings, inputs))


def load_inputs(args, paths, device):
    """The networks, CIFAR-10 and the captions' source() for the analyses to compute."""
    nets = {key: (path,) + load_network(path, device)
            for key, path in tqdm(paths.items(), desc="loading networks", unit="network")}
    any_ckpt = next(iter(nets.values()))[2]
    data = load_cifar10(args.data_dir, device, any_ckpt["config"]["val_size"])  # the split they trained with

    def source(keys):  # the checkpoints of the networks `keys`, the data and the hardware
        where = " and ".join(dict.fromkeys(os.path.relpath(os.path.dirname(os.path.dirname(paths[k])))
                                           for k in sorted(keys)))
        networks = ", ".join(cnn_name(*k) for k in sorted(keys))
        return (f"checkpoints {where}/*_e{args.epochs}_s{args.seed}_* ({networks}); {data.source}; "
                f"{hardware(device)}")

    print(f"{count(len(nets), 'network')}: {source(paths)}")
    return Inputs(nets, data, args, device, source)


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("analyses", nargs="*", default=list(ANALYSES), metavar="ANALYSIS",
                   help=f"any of {', '.join(ANALYSES)} (default: all)")
    p.add_argument("--runs-dir", default=None,
                   help="where the ex1_cnn.py run folders are (default: results/ex1_cnn, "
                        "else runs/ex1_cnn)")
    p.add_argument("--epochs", type=kinds.EPOCHS, default=CNN_CPU_EPOCHS,
                   help="the epochs of the runs to read (default: ex1_cnn.py's CPU preset)")
    p.add_argument("--seed", type=kinds.SEED, default=0, help="the seed of the runs to read")
    p.add_argument("--response-images", type=kinds.IMAGES, default=1000,
                   help="validation images for the responses")
    p.add_argument("--lesion-images", type=kinds.IMAGES, default=1000,
                   help="test images (a seeded sample) per lesioned network; 10000 for all on a GPU")
    p.add_argument("--lesion-draws", type=kinds.count_flag(MAX_DRAWS), default=5,
                   help="random draws of k deleted blocks, per k")
    p.add_argument("--lesion-max-k", type=kinds.count_flag(MAX_DRAWS), default=5,
                   help="delete up to this many random blocks")
    p.add_argument("--grid", type=kinds.count_flag(MAX_GRID, low=2), default=11,
                   help="landscape points per axis (odd puts (0, 0) on it)")
    p.add_argument("--span", type=kinds.Number(float, 0, MAX_SPAN, open_low=True,
                                               why="filter-normalized steps beyond it only overflow"),
                   default=1.0, help="landscape coordinates run from -span to span")
    p.add_argument("--landscape-images", type=kinds.IMAGES, default=1000,
                   help="training images (a seeded subset) for each landscape loss")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the tables and figures from the saved results (results/ex2_why/ for the "
                        "README's): no CIFAR-10 needed, seconds")
    p.add_device_flag()
    p.add_argument("--data-dir", default="data", help="where CIFAR-10 is")
    p.add_argument("--fig-dir", default=None,
                   help=f"where figures go (default: figures/ for the README's settings, else {SCRATCH_DIR})")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    unknown = [a for a in args.analyses if a not in ANALYSES]
    if unknown:
        p.error(f"unknown analysis {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    args.analyses = list(dict.fromkeys(args.analyses))
    return args


def main(args):
    device = get_device(args.device)
    set_threads(device, None)
    roots = [args.runs_dir] if args.runs_dir else [runs.published_dir("ex1_cnn"),
                                                   os.path.join("runs", "ex1_cnn")]
    paths = find_networks(roots, args.epochs, args.seed)
    missing = missing_networks(paths)
    # a table without one of its networks' rows is not the README's
    published = not missing and all(runs.is_published(p, "ex1_cnn") for p in paths.values())
    defaults = get_args([])
    fig_dir, publish = outputs.destination(args, defaults, SCRATCH_DIR, published, WHERE_FLAGS)
    if missing:
        make = MAKE_CHECKPOINTS.format(seeds=args.seed + 1)
        print(f"{count(len(missing), 'network')} not found ({', '.join(missing)}): the tables and figures "
              f"go to {fig_dir} without them; make them with `{make}`")
    digests = outputs.inputs_of(paths)
    expected = sum(CPU_SECONDS[a] for a in args.analyses)
    if not args.plot_only and device.type == "cpu" and expected > LONG_SECONDS:
        print(f"{PROG}: {', '.join(args.analyses)} take about {expected // 60} min on a 2-core CPU at the "
              "README's settings (--plot-only redraws the saved results in seconds)", flush=True)
    inputs = None if args.plot_only else load_inputs(args, paths, device)
    written = []
    for analysis in args.analyses:
        start = time.perf_counter()
        if not network_inputs(analysis, digests):
            print(f"{analysis} skipped: no network of depth {LESION_DEPTHS}")
            continue
        saved = outputs.analysis_path(analysis, fig_dir, publish, "ex2_why", args.plot_only)
        if not args.plot_only:
            computed = compute(analysis, inputs)
            made_by = outputs.command_line(PROG, {"analyses": analysis}, args, defaults)
            outputs.save_analysis(saved, analysis, analysis_settings(analysis, args),
                                  network_inputs(analysis, digests),
                                  content_of(computed, inputs.source(computed[0]), made_by))
        # drawn from the saved file, computed now or before: --plot-only draws the same bytes
        written.append(os.path.join(fig_dir, f"ex2_why_{analysis}.png"))
        text = draw(analysis, read_result(analysis, args, digests, saved), written[-1])
        written.append(outputs.write_table(text, f"ex2_why_{analysis}", fig_dir, publish))
        print(f"{analysis}: {time.perf_counter() - start:.0f} s, {written[-1]} (from {saved})")
    return written


if __name__ == "__main__":
    run_cli(main, get_args(), PROG, INTERRUPTED)
