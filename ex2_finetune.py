"""Exercise 2.1 (2024 edition): transfer learning, ImageNet EfficientNet-Lite0 to CIFAR-10.

    python ex2_finetune.py                    # every pending run: probes, fine-tuning grid, seeds
    python ex2_finetune.py --part probe       # frozen features at each input size, linear probe, k-NN
    python ex2_finetune.py --part finetune    # the fine-tuning grid on seed 0, then the best on 3 seeds
    python ex2_finetune.py --plot-only        # redraw the README's tables from the saved runs
    python ex2_finetune.py --dataset cifar100 --data-dir data   # the lab's original target

The network's global-pooled 1280 features are extracted once per input size and saved beside
the runs; a linear classifier (multinomial logistic regression, L-BFGS) and k-NN (cosine) are
fitted on the training split's features, their setting chosen on the validation split, and
their test accuracy read once. Fine-tuning trains the head and the last stage, or all layers,
with SGD or AdamW (warm-up and cosine, the crop-and-flip of Exercise 1.3), chosen on validation.
"""
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import CIFAR10_VAL_SIZE, batches, cifar_transforms, load_cifar10, load_cifar100
from models import LITE0_FEATURES, PartlyFrozenLite0
from pretrained import LITE_MEAN, LITE_STD, PADDING, WEIGHTS_PACKAGE, WEIGHTS_SHA256, load_efficientnet_lite0
from report import cnn_name, format_result, published_cnn_run, run_result, run_seconds, save_figure
from training import Recipe, fit, warmup_cosine
from utils import get_device, run_meta, seed_everything
from lab import ArgumentParser, Sweep, UserError, count, kinds, outputs, run_cli, runs

PROG = "ex2_finetune.py"
EXERCISE = "ex2_finetune"
DATASETS = {"cifar10": load_cifar10, "cifar100": load_cifar100}
PROBE_SIZES = (32, 64, 96, 128)         # input sizes of the accuracy / CPU-time trade-off
FINETUNE_SIZE = 96                       # chosen from that trade-off and the CPU budget (README)
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)  # the linear probe's L2 penalties, one chosen on validation
LBFGS_STEPS = 200
KNN_KS = (1, 5, 10, 20, 50, 100)         # k-NN's neighbours, one chosen on validation
FEATURE_BATCH = 250
KNN_CHUNK = 1000                         # queries per similarity matrix (1000 x 45000 floats)
# EfficientNet-Lite0's last stage: the blocks at output stride 32 (indices 11-15), then its head
LAST_STAGE = tuple(f"_blocks.{i}" for i in range(11, 16)) + ("_conv_head", "_bn1", "_fc")
PARTS = {"last": LAST_STAGE, "all": ("",)}
PART_NAMES = {"last": "head + last stage", "all": "all layers"}
# common fine-tuning settings, not tuned here; each optimizer is warmed up, then cosine-decayed
OPTIMIZERS = {"sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
              "adamw": {"lr": 3e-4, "weight_decay": 0.05}}
RECIPE = {"epochs": 2, "batch_size": 128, "warmup_epochs": 0.2}
# the grid's candidates train on seed 0 and read only the validation split; the chosen setting then
# trains on these seeds, which read the test set once each
FINAL_SEEDS = (1, 2, 3)
# Exercise 1.3's published residual-56 (its three seeds), the from-scratch network of CIFAR's own size
FROM_SCRATCH = {"residual": True, "blocks": 9, "seeds": (0, 1, 2)}


# ----------------------------------------------------------------------------- frozen features

@torch.no_grad()
def extract_features(model, split, transform, progress=None):
    """(N, C) global-average-pooled final features of `model` (in eval mode) for a data.Split."""
    model.eval()
    out = []
    for x, _ in batches(split, FEATURE_BATCH, transform=transform):
        out.append(model.features(x).mean(dim=(2, 3)))
        if progress is not None:
            progress.update(x.shape[0])
    return torch.cat(out)


def feature_config(config):
    """What the saved features are derived from: the data and input size, and the network's
    identity (its weights' package and SHA-256, its padding), so features of another port or
    weights are never reused."""
    return {**{k: config[k] for k in ("dataset", "size", "val_size", "weights", "padding")},
            "weights_sha256": WEIGHTS_SHA256}


def features_folder(out_dir, config):
    name = f"features_{config['dataset']}_{config['size']}px_{runs.config_digest(feature_config(config))}"
    return os.path.join(out_dir, name)


def features_schema(split):
    """The saved features of a data split: a row of LITE0_FEATURES finite floats per image, its
    labels, and the process CPU seconds their extraction took."""
    return {"features": kinds.Packed("float32", (len(split), LITE0_FEATURES)),
            "labels": kinds.Packed("int64", (len(split),)),
            "seconds": kinds.Number(float, 0, 10 ** 7, open_low=True)}


def _split_features(saved, split):
    if not torch.equal(saved["labels"], split.y.cpu()):
        raise ValueError("features of other images (another --data-dir?)")
    return saved["features"], float(saved["seconds"])


def frozen_features(config, data, device, out_dir, progress=True):
    """{'train', 'val', 'test'} features at config['size'] and the process CPU seconds their
    extraction took: each split extracted once (lab.outputs.computed_once: an interrupted extraction
    resumes at the split it was in, a worker asking for features another is extracting waits for
    them), saved with the network's identity and read back checked."""
    folder, fconfig, model = features_folder(out_dir, config), feature_config(config), None
    _, transform = cifar_transforms(None, torch.channels_last, config["size"], LITE_MEAN, LITE_STD)

    def extract(name, split):
        nonlocal model
        if model is None:  # the network is loaded only if some features are not saved yet
            model = load_efficientnet_lite0(device).to(memory_format=torch.channels_last)
        started = time.process_time()  # this process's CPU time: not inflated by other load
        with tqdm(total=len(split), desc=f"features {name} {config['size']}px", unit="img",
                  disable=not progress, dynamic_ncols=True) as bar:
            out = extract_features(model, split, transform, bar).cpu()
        return {"features": out, "labels": split.y.cpu(), "seconds": time.process_time() - started}

    feats, seconds = {}, 0.0
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        feats[name], took = outputs.computed_once(
            os.path.join(folder, f"{name}.pt"), f"{name} features", fconfig, {}, features_schema(split),
            lambda: extract(name, split), f"python {PROG} --part probe",
            lambda saved: _split_features(saved, split))
        seconds += took
    return feats, seconds


# ----------------------------------------------------------------------------- classical baselines

def standardized(feats):
    """Each split's features minus the training mean, over the training std (per feature)."""
    mean, std = feats["train"].mean(0), feats["train"].std(0).clamp_min(1e-6)
    return {k: (v - mean) / std for k, v in feats.items()}


def fit_linear_probe(x, y, n_classes, weight_decay, steps=LBFGS_STEPS):
    """Multinomial logistic regression: (W, b) minimizing mean CE(x W + b, y) + wd/2 |W|^2,
    by full-batch L-BFGS from zero (deterministic)."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay / 2 * (w ** 2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return w.detach(), b.detach()


def linear_probe(feats, labels, n_classes, config):
    """The weight decay of config['grid'] with the best validation accuracy, and its test read."""
    z = standardized(feats)
    val_acc, fitted = {}, {}
    for wd in config["grid"]:
        fitted[wd] = fit_linear_probe(z["train"], labels["train"], n_classes, wd, config["steps"])
        w, b = fitted[wd]
        val_acc[wd] = accuracy((z["val"] @ w + b).argmax(1), labels["val"])
    chosen = max(config["grid"], key=lambda wd: val_acc[wd])  # the first of equals: the least penalty
    w, b = fitted[chosen]
    logits = z["test"] @ w + b
    test = {"acc": accuracy(logits.argmax(1), labels["test"]),
            "loss": float(F.cross_entropy(logits, labels["test"]))}
    return chosen, val_acc, test


def nearest_neighbours(train_x, query, k, chunk=KNN_CHUNK):
    """(indices, cosine similarities), each (Q, k), of the k training rows nearest each query row."""
    train_n = F.normalize(train_x, dim=1)
    idx, sims = [], []
    for start in range(0, query.shape[0], chunk):
        s = F.normalize(query[start:start + chunk], dim=1) @ train_n.T
        top = s.topk(k, dim=1)
        idx.append(top.indices)
        sims.append(top.values)
    return torch.cat(idx), torch.cat(sims)


def knn_predict(neighbour_labels, neighbour_sims, k, n_classes):
    """The majority class among the first k neighbours; a tie goes to the class whose tied
    neighbours are the more similar in sum (that sum, below 1 per vote, never outweighs a vote)."""
    labels, sims = neighbour_labels[:, :k], neighbour_sims[:, :k]
    votes = F.one_hot(labels, n_classes).float()              # (Q, k, C)
    score = votes.sum(1) + (votes * sims.clamp_min(0)[..., None]).sum(1) / (k + 1)
    return score.argmax(1)


def knn(feats, labels, n_classes, config):
    """The k of config['grid'] with the best validation accuracy (cosine k-NN), and its test read."""
    k_max = min(max(config["grid"]), len(labels["train"]))  # a k beyond the training set is all of it
    val_idx, val_sims = nearest_neighbours(feats["train"], feats["val"], k_max)
    val_acc = {k: accuracy(knn_predict(labels["train"][val_idx], val_sims, k, n_classes), labels["val"])
               for k in config["grid"]}
    chosen = max(config["grid"], key=lambda k: val_acc[k])
    test_idx, test_sims = nearest_neighbours(feats["train"], feats["test"], min(chosen, k_max))
    return chosen, val_acc, {"acc": accuracy(knn_predict(labels["train"][test_idx], test_sims, chosen,
                                                         n_classes), labels["test"])}


def accuracy(predictions, labels):
    return float((predictions == labels).float().mean())


CLASSIFIERS = {"linear": linear_probe, "knn": knn}
# what a baseline's record adds to a run record, checked as a whole before a table reads it
IMAGES = kinds.IMAGES
PROBE_FIELDS = {"images": {"train": IMAGES, "val": IMAGES, "test": IMAGES},
                "chosen": kinds.Number(float, 0, 1e6),
                "selection": dict, "best_val_acc": kinds.FRACTION,
                "seconds": {"features": kinds.Number(float, 0, 1e7), "fit": kinds.Number(float, 0, 1e7)}}


def probe(config, data, device, out_dir, progress=True, tensorboard=None):
    """One classical baseline on the frozen features; returns (outcome, record) as training.fit does."""
    meta = run_meta(data, device)
    with runs.RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch=None) as run:
        if run.finished is not None:
            return "finished", run.finished
        feats, feature_seconds = frozen_features(config, data, device, out_dir, progress)
        labels = {name: getattr(data, name).y.cpu() for name in feats}
        started = time.process_time()
        chosen, val_acc, test = CLASSIFIERS[config["method"]](feats, labels, len(data.classes), config)
        run.record.update(images={name: len(getattr(data, name)) for name in feats}, chosen=chosen,
                          selection={f"{v:g}": a for v, a in val_acc.items()},
                          best_val_acc=val_acc[chosen],  # process CPU seconds, as the features'
                          seconds={"features": feature_seconds, "fit": time.process_time() - started})
        return "trained", run.finish(test)


# ----------------------------------------------------------------------------- fine-tuning

def pretrained_network(part, n_classes, device):
    """The ImageNet EfficientNet-Lite0 with a new (seeded) n_classes classifier, of which only
    PARTS[part] learns."""
    model = load_efficientnet_lite0(device, PartlyFrozenLite0(trainable=PARTS[part]))
    model._fc = torch.nn.Linear(model._fc.in_features, n_classes).to(device)
    return model.train()


def finetune_optimizer(model, config, steps_per_epoch):
    """SGD (Nesterov momentum) or AdamW over the trainable parameters, warmed up then cosine-decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"], nesterov=True,
                                    weight_decay=config["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        config["epochs"] * steps_per_epoch, round(config["warmup_epochs"] * steps_per_epoch)))
    return optimizer, scheduler


def random_network(part, n_classes, device):
    """The same network from PyTorch's random initialization: the control that tells what
    ImageNet's weights add from what the architecture and the input size give."""
    return PartlyFrozenLite0(n_classes, trainable=PARTS[part]).to(device).train()


def finetune(config, data, device, out_dir, progress=True, tensorboard=None):
    """Fine-tune one setting (or train it from random initialization, config['init'] 'random');
    returns (outcome, record) as training.fit does."""
    generator = seed_everything(config["seed"])
    build = random_network if config.get("init") == "random" else pretrained_network
    model = build(config["part"], len(data.classes), device).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(data.train) / config["batch_size"])
    optimizer, scheduler = finetune_optimizer(model, config, steps_per_epoch)
    train_transform, eval_transform = cifar_transforms(generator, torch.channels_last, config["size"],
                                                       LITE_MEAN, LITE_STD)
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator, scheduler,
                    train_transform=train_transform, eval_transform=eval_transform,
                    read_test=not config.get("selection", False))
    arch = {"name": "PartlyFrozenLite0", "kwargs": {"num_classes": len(data.classes),
                                                    "trainable": list(PARTS[config["part"]])}}
    meta = run_meta(data, device, memory_format="channels_last")
    with runs.RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch, tensorboard) as run:
        return fit(model, data, recipe, run, progress)


def train(config, data, device, out_dir, progress=True, tensorboard=None):
    """A run of either kind: a classical baseline on frozen features (no epochs to log), or a fine-tuning."""
    run = finetune if config["method"] == "finetune" else probe
    return run(config, data, device, out_dir, progress, tensorboard)


# ----------------------------------------------------------------------------- the runs

def base_config(args, size):
    return {"dataset": args.dataset, "size": size, "val_size": CIFAR10_VAL_SIZE, "weights": WEIGHTS_PACKAGE,
            "padding": PADDING}


def probe_configs(args):
    grids = {"linear": {"grid": list(WEIGHT_DECAYS), "steps": LBFGS_STEPS}, "knn": {"grid": list(KNN_KS)}}
    return [{"method": method, **base_config(args, size), **grid}
            for size in PROBE_SIZES for method, grid in grids.items()]


def finetune_config(args, part, optimizer, seed, **extra):
    return {"method": "finetune", **base_config(args, FINETUNE_SIZE), "part": part, "optimizer": optimizer,
            **OPTIMIZERS[optimizer], **RECIPE, "seed": seed, **extra}


def grid_configs(args):
    """Every fine-tuning setting on seed 0, the candidates of a selection: chosen on validation,
    they never read the test set."""
    return [finetune_config(args, part, opt, 0, selection=True) for part in PARTS for opt in OPTIMIZERS]


def chosen_setting(args):
    """(part, optimizer) of the grid's best validation accuracy, or None until the grid has finished."""
    found = runs.collect(grid_configs(args), runs.lookup_roots(args.out_dir, EXERCISE), run_name)
    if len(found) < len(grid_configs(args)):
        return None
    config, _, _ = max(found, key=lambda f: f[1].get("best_val_acc", -1.0))
    return config["part"], config["optimizer"]


def seed_configs(args):
    """The chosen setting on the final seeds (empty until the grid has finished)."""
    chosen = chosen_setting(args)
    return [finetune_config(args, *chosen, seed) for seed in FINAL_SEEDS] if chosen else []


def control_configs(args):
    """The chosen setting from random initialization on the final seeds: same network, input
    size, epochs and recipe, no ImageNet (empty until the grid has finished)."""
    chosen = chosen_setting(args)
    return [finetune_config(args, *chosen, seed, init="random") for seed in FINAL_SEEDS] if chosen else []


def run_name(config):
    """e.g. cifar10_ft-all-sgd_64px_e2_s0_1a2b3c4d, cifar10_scratch-all-adamw_96px_e2_s1_...,
    cifar10_knn_64px_1a2b3c4d."""
    if config["method"] == "finetune":
        kind = "scratch" if config.get("init") == "random" else "ft"
        setting = f"{config['part']}-{config['optimizer']}"
        return runs.folder_name(f"{config['dataset']}_{kind}-{setting}_{config['size']}px", config)
    return f"{config['dataset']}_{config['method']}_{config['size']}px_{runs.config_digest(config)}"


def load_data(args, device):
    return DATASETS[args.dataset](args.data_dir, device)



def cost(config):
    """A run's relative CPU cost, to balance the workers and order the runs: pixels per image
    times passes. k-NN, which reads the features its size's linear probe extracts, goes last, so
    no worker waits on another's extraction."""
    if config["method"] == "linear":
        return config["size"] ** 2
    if config["method"] == "knn":
        return config["size"] ** 2 / 100
    return config["size"] ** 2 * config["epochs"] * (3 if config["part"] == "all" else 1.5)


# ----------------------------------------------------------------------------- tables

def cpu_minutes(record):
    """A run's cost in minutes (report.run_seconds)."""
    return run_seconds(record) / 60


def trained_parameters(config, n_classes):
    """What a method fits: nothing for k-NN, a linear classifier on the pooled features (the
    network's own head, new) for the probe, the trainable part for a fine-tuning."""
    if config["method"] == "knn":
        return 0
    trainable = PARTS[config["part"]] if config["method"] == "finetune" else ("_fc",)
    model = PartlyFrozenLite0(n_classes, trainable)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_count(n):
    """12810 -> '12.8k', 3383818 -> '3.38M', 0 -> '0'."""
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k" if n else "0"


def probe_table(found, missing=0):
    """Per input size: the features' extraction time, then each baseline's validation choice and test read."""
    by_size = {}
    for config, record, _ in found:
        by_size.setdefault(config["size"], {})[config["method"]] = record
    lines = ["| input (px) | features: CPU time (s) | linear probe: best val. accuracy (weight decay) | test "
             "| k-NN: best val. accuracy (k) | test |", "|---:|---:|---:|---:|---:|---:|"]
    for size, by_method in sorted(by_size.items()):
        cells = [f"{next(iter(by_method.values()))['seconds']['features']:.0f}"]
        for method in CLASSIFIERS:
            r = by_method.get(method)
            cells += ([f"{r['best_val_acc']:.4f} ({r['chosen']:g})", f"{r['test_acc']:.4f}"] if r
                      else ["-", "-"])
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    record = found[0][1]
    lines += ["", f"ImageNet EfficientNet-Lite0 ({WEIGHTS_PACKAGE}, TensorFlow's padding), frozen; "
                  f"{record['meta']['data']} images upsampled (bilinear) from 32 px; features of the "
                  f"{record['images']['train']:,} training, {record['images']['val']:,} validation and "
                  f"{record['images']['test']:,} test images, their extraction timed in process CPU time; "
                  f"{record['meta']['hardware']}."
                  + (f" **Not finished: {', '.join(missing)}.**" if missing else "")
                  + f" Made by `python {PROG} --part probe`."]
    return "\n".join(lines) + "\n"


def _val(record):
    return record.get("best_val_acc")


def summary_rows(probes, grid, seeds, controls, n_classes):
    """(name, input, trained parameters, records, reads the test set) of the summary table."""
    rows = []
    for method, label in (("linear", "linear probe (logistic regression)"), ("knn", "k-NN (cosine)")):
        of_method = [(c, r) for c, r, _ in probes if c["method"] == method]
        if of_method:  # the input size with the best validation accuracy
            config, record = max(of_method, key=lambda cr: cr[1]["best_val_acc"])
            rows.append((f"{label}, frozen features", config["size"], trained_parameters(config, n_classes),
                         [record]))
    for config, record, _ in grid:
        name = f"candidate: fine-tuned {PART_NAMES[config['part']]}, {config['optimizer']} (seed 0)"
        rows.append((name, config["size"], trained_parameters(config, n_classes), [record]))
    for found, label in ((seeds, "**chosen: fine-tuned {}, {}**"),
                         (controls, "the same from random initialization ({}, {})")):
        if found:
            config = found[0][0]
            rows.append((label.format(PART_NAMES[config["part"]], config["optimizer"]), config["size"],
                         trained_parameters(config, n_classes), [r for _, r, _ in found]))
    return rows


def seeds_of(records):
    """The seeds of a row's runs ('-' for a baseline, which draws no random number)."""
    seeds = sorted(r["config"]["seed"] for r in records if "seed" in r["config"])
    return ", ".join(map(str, seeds)) or "-"


def main_table(probes, grid, seeds, controls, n_classes, missing=()):
    """Every method on one test set: baselines, the grid's candidates (validation only), the chosen
    setting on its seeds, its random-initialization control and Exercise 1.3's residual-56."""
    lines = ["| method | input (px) | trained parameters | best val. accuracy | test accuracy "
             "| CPU time (min) | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    rows = summary_rows(probes, grid, seeds, controls, n_classes)
    for name, size, params, records in rows:
        cells = [format_result(records, _val), format_result(records, run_result) if "test_acc" in records[0]
                 else "not read", format_result(records, cpu_minutes, digits=1)]
        lines.append(f"| {name} | {size} | {format_count(params)} | " + " | ".join(cells)
                     + f" | {seeds_of(records)} |")
    scratch = scratch_runs()
    lines.append(f"| {cnn_name(True, FROM_SCRATCH['blocks'])} from scratch (Exercise 1.3, "
                 f"{scratch[0]['config']['epochs']} epochs) | 32 | 0.85M | {format_result(scratch, _val)} | "
                 f"{format_result(scratch)} | {format_result(scratch, cpu_minutes, digits=1)} | "
                 f"{seeds_of(scratch)} |")
    cfg = (seeds or grid)[0][0] if (seeds or grid) else None
    return "\n".join(lines) + "\n\n" + main_caption(probes[0][1], cfg, rows, scratch, missing) + "\n"


def main_caption(record, cfg, rows, scratch, missing):
    """What main_table's `rows` were measured on and how (`record`: a baseline's, `cfg`: a
    fine-tuning's config, `scratch`: residual-56's records): data and test set, hardware, the
    recipe, what its CPU times are, what is missing."""
    sgd, adamw = OPTIMIZERS["sgd"], OPTIMIZERS["adamw"]
    recipe = (f" Fine-tuning: {count(cfg['epochs'], 'epoch')}, batch {cfg['batch_size']}, warm-up "
              f"{cfg['warmup_epochs']:g} epoch then cosine; SGD lr {sgd['lr']:g} (Nesterov momentum "
              f"{sgd['momentum']:g}, weight decay {sgd['weight_decay']:g}), AdamW lr {adamw['lr']:g} "
              f"(weight decay {adamw['weight_decay']:g}); the candidates train on seed 0 and read the "
              "validation split only, the one chosen on it then trains on new seeds, which read the test "
              "set once each." if cfg else "")
    tests = f"{record['images']['test']:,} test images"
    signature = record["meta"].get("data_signature")
    others = [name for name, *_, records in rows if any(r["meta"].get("data_signature") != signature
                                                        for r in records)]
    if others:  # rows of another data copy: their test set is not said to be the baselines'
        tests += (f" for the baselines; **{', '.join(others)}: read from another copy of the data (its "
                  "signature differs), whose test set may be another**")
    scratch_hardware = ("" if scratch[0]["meta"]["hardware"] == record["meta"]["hardware"] else
                        f" (residual-56: {scratch[0]['meta']['hardware']})")
    wall = any("cpu_seconds" not in e for *_, records in rows for r in records for e in r["epochs"])
    trainings = ("its epochs' process CPU time" if not wall else "its fastest epoch (with its validation) "
                 "times its epochs, in wall time (other work on the machine during every epoch inflates it)")
    return (f"{record['meta']['data']}, {tests}; {record['meta']['hardware']}{scratch_hardware}. Mean ± std "
            f"over seeds.{recipe} CPU time: a baseline's feature extraction and fit in process CPU time; a "
            f"training's, {trainings}." + (f" **Not finished: {', '.join(missing)}.**" if missing else "")
            + f" Made by `python {PROG}`.")


def scratch_runs():
    """The published residual-56 runs of Exercise 1.3, one per seed."""
    return [published_cnn_run(FROM_SCRATCH["residual"], FROM_SCRATCH["blocks"], seed)[0]
            for seed in FROM_SCRATCH["seeds"]]


def plot_transfer(probes, grid, seeds, controls, caption, path):
    """Left: the frozen features' test accuracy against input size. Right: validation accuracy per
    epoch of the chosen fine-tuning, its random-initialization control and residual-56 from scratch."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for method, label in (("linear", "linear probe"), ("knn", "k-NN")):
        points = sorted((c["size"], r["test_acc"]) for c, r, _ in probes if c["method"] == method)
        if points:
            left.plot(*zip(*points), "o-", label=label)
    left.set(xlabel="input size (px), upsampled from 32", ylabel="test accuracy", ylim=(0, 1),
             title="frozen ImageNet features")
    left.legend()
    for i, (config, r, _) in enumerate(grid):  # the candidates: seed 0, validation only
        right.plot([e["epoch"] for e in r["epochs"]], [e["val_acc"] for e in r["epochs"]], ":", marker=".",
                   color="gray", label="grid candidates (seed 0)" if i == 0 else None)
    curves = [([r for _, r, _ in seeds], "fine-tuned from ImageNet", "C2"),
              ([r for _, r, _ in controls], "same network, random init.", "C3"),
              (scratch_runs(), cnn_name(True, FROM_SCRATCH["blocks"]) + " from scratch (32 px)", "C0")]
    for records, label, colour in curves:
        for i, r in enumerate(records):
            epochs = [e["epoch"] for e in r["epochs"]]
            right.plot(epochs, [e["val_acc"] for e in r["epochs"]], "o-", color=colour, alpha=0.7,
                       label=f"{label} ({count(len(records), 'seed')})" if i == 0 else None)
    right.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1), title="training on CIFAR-10")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    save_figure(fig, caption, path, caption_lines=2)


def make_tables(args):
    readme = get_args(["--data-dir", args.data_dir])  # the README's tables: CIFAR-10, the default settings
    fig_dir, publish = outputs.destination(args, readme, os.path.join(args.out_dir, "figures"))
    roots, command = runs.lookup_roots(args.out_dir, EXERCISE), f"python {PROG}"
    if not runs.collect(probe_configs(args), roots, run_name, PROBE_FIELDS):
        raise UserError(f"no finished runs of these settings in {' or '.join(roots)}; run `{command}` first")
    probes, _ = outputs.sweep_results(probe_configs(args), roots, run_name, fig_dir, command,
                                      fields=PROBE_FIELDS)
    text = probe_table(probes, runs.unfinished(probe_configs(args), probes, run_name))
    print(text)
    print(f"table {outputs.write_table(text, 'ex2_finetune_probe', fig_dir, publish)} written")
    parts = (("grid", grid_configs), ("seeds", seed_configs), ("controls", control_configs))
    found = {part: runs.collect(configs(args), roots, run_name) for part, configs in parts}
    wanted = grid_configs(args) + seed_configs(args) + control_configs(args)
    missing = runs.unfinished(wanted, [f for part in found.values() for f in part], run_name)
    if chosen_setting(args) is None:
        missing.append("the chosen setting's seeds and its control (the grid is not finished)")
    n_classes = 10 if args.dataset == "cifar10" else 100
    text = main_table(probes, found["grid"], found["seeds"], found["controls"], n_classes, missing)
    print(text)
    print(f"table {outputs.write_table(text, 'ex2_finetune_table', fig_dir, publish)} written")
    record = probes[0][1]
    caption = (f"{record['meta']['data']}; ImageNet EfficientNet-Lite0 ({WEIGHTS_PACKAGE}); "
               f"{record['meta']['hardware']}. Right: each line one seed; fine-tuning and its control at "
               f"{FINETUNE_SIZE} px. Made by `python {PROG}`.")
    out = os.path.join(fig_dir, "ex2_finetune.png")
    plot_transfer(probes, found["grid"], found["seeds"], found["controls"], caption, out)
    print(f"figure {out} written")


# ----------------------------------------------------------------------------- command line

def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--part", choices=("probe", "finetune", "control", "all"), default="all",
                   help="which runs to train: the baselines on frozen features, the fine-tuning (grid, "
                        "then the chosen setting's seeds), its random-initialization control, or all")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="cifar10",
                   help="cifar100 needs torchvision's cifar-100-python/ in --data-dir (or its download)")
    p.add_device_flag()
    p.add_tensorboard_flag()
    p.add_argument("--data-dir", default="data",
                   help="torchvision's CIFAR files, or an ImageFolder copy of CIFAR-10 here or in "
                        "data/cifar10-jpeg")
    p.add_output_flags(EXERCISE)  # the extracted features go below --out-dir too
    p.add_workers_flag()
    return p


def get_args(argv=None):
    return make_parser().parse_args(argv)


def main(args):
    if not args.plot_only:
        jobs = Sweep(EXERCISE, run_name, load_data, train, args)
        device = get_device(args.device)
        if args.part in ("probe", "all"):
            jobs.run(device, probe_configs(args), cost)
        if args.part in ("finetune", "all"):
            jobs.run(device, grid_configs(args), cost)
            if chosen_setting(args) is None:
                raise UserError("the fine-tuning grid has not finished: rerun to finish it")
            print("chosen on validation: fine-tuning {} with {}".format(*chosen_setting(args)))
            jobs.run(device, seed_configs(args), cost)
        if args.part in ("control", "all"):
            if chosen_setting(args) is None:
                raise UserError("the control trains the chosen fine-tuning setting from random "
                                "initialization: finish the grid first (--part finetune)")
            jobs.run(device, control_configs(args), cost)
    return make_tables(args)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
