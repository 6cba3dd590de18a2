"""Exercise 2.2 (2024 edition): knowledge distillation, a residual-56 teacher and a residual-32 student.

    python ex2_distill.py                  # the distilled student on 3 seeds (skips finished runs, resumes)
    python ex2_distill.py --select         # the check of T and alpha on a short schedule (seed 0)
    python ex2_distill.py --plot-only      # redraw the README's tables from the saved runs
    python ex2_distill.py --student plain  # a plain-32 student against the published plain-32
    python ex2_distill.py --short          # the paired study: 5 seeds, 3 epochs on 10,000 images

The student (0.46M parameters, 54% of the teacher's 0.85M) minimizes (Hinton et al. 2015)

    (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

and is trained with the recipe of its published Exercise 1.3 run (read from that run's record):
same seed, so the same initialization, batch order and augmented batches, which the teacher sees
too. Each distilled run and its published baseline differ only in the loss.
"""
import math
import os
import time

import torch
import torch.nn.functional as F

from data import cifar_transforms, load_cifar10
from models import CifarResNet
from report import (cnn_name, fastest_epoch_seconds, format_interval, format_result, paired_difference,
                    published_cnn_run, run_result, save_figure)
from training import Recipe, fit, sgd_warmup_cosine
from utils import get_device, run_meta, seed_everything
from lab import ArgumentParser, Sweep, UserError, count, kinds, load_model, outputs, run_cli, runs

PROG = "ex2_distill.py"
EXERCISE = "ex2_distill"
TEACHER_RUN = {"residual": True, "blocks": 9, "seed": 0}  # the published residual-56 of Exercise 1.3
STUDENT_BLOCKS = 5                                        # depth 32
# Chosen by `--select` on validation: the literature's default (T = 4, alpha = 0.9, e.g. RepDistiller's
# KD baseline on CIFAR) against T = 2 and alpha = 0.5; T = 2 scored highest (figures/ex2_distill_select.md)
DEFAULT_TEMPERATURE, DEFAULT_ALPHA = 2.0, 0.9
# --select: a short schedule on a subset (about a tenth of a full run each), seed 0
SELECT_SCHEDULE = {"epochs": 3, "train_subset": 10_000}
SELECT_CANDIDATES = ((4.0, 0.9), (4.0, 0.5), (2.0, 0.9), (4.0, 0.0))
# --short, the study designed to resolve the gain (README): on the same short schedule as --select,
# each student distilled and alone (alpha = 0: the same code, no teacher) on 5 paired seeds: a
# residual-32 student near its teacher and a residual-8 one well below it
SHORT_SCHEDULE = SELECT_SCHEDULE
SHORT_STUDENTS = ((True, 5), (True, 1))   # (residual, blocks)
SHORT_SEEDS = 5
MAX_TEMPERATURE = 100.0
# beside lab.cli's shared ones: --select runs the selection, whose table is one of the README's
WHERE_FLAGS = ("select",)


def distillation_loss(student_logits, teacher_logits, y, temperature, alpha):
    """(1 - alpha) CE(s, y) + alpha T^2 KL(p_t || p_s), p = softmax(logits / T) (Hinton et al. 2015).

    The KL term's gradient scales as 1/T^2; the factor T^2 keeps the two terms' balance the
    same whatever T. KL is summed over classes and averaged over the batch, as CE is.
    """
    hard = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return hard
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


class Distillation:
    """The training criterion of a distilled student: asks the frozen teacher about the same
    batch, and keeps per-epoch sums of the teacher's time and of the hard-label CE."""

    def __init__(self, teacher, temperature, alpha):
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self._seconds, self._ce, self._n = 0.0, 0.0, 0

    def __call__(self, logits, y, x):
        started = time.perf_counter()
        with torch.no_grad():
            teacher_logits = self.teacher(x) if self.alpha > 0 else None
        self._seconds += time.perf_counter() - started
        self._ce = self._ce + F.cross_entropy(logits.detach(), y) * y.shape[0]
        self._n += y.shape[0]
        return distillation_loss(logits, teacher_logits, y, self.temperature, self.alpha)

    def epoch_metrics(self):
        """The epoch's teacher seconds and mean training CE, then start the next epoch's sums."""
        metrics = {"teacher_seconds": self._seconds, "train_ce": float(self._ce) / max(1, self._n)}
        self._seconds, self._ce, self._n = 0.0, 0.0, 0
        return metrics


# ----------------------------------------------------------------------------- the runs

def run_config(student_config, teacher_folder, temperature, alpha):
    """A distilled run: its student's recipe (the published baseline's config) plus what distils."""
    return {**student_config, "teacher": os.path.basename(teacher_folder), "temperature": temperature,
            "alpha": alpha}


def run_name(config):
    student = f"{'res' if config['residual'] else 'plain'}_n{config['blocks']}"
    return runs.folder_name(f"kd-{student}_T{config['temperature']:g}_a{config['alpha']:g}", config)


def configs_of(student, seeds, candidates, schedule, blocks=STUDENT_BLOCKS):
    """The distilled `student` ('residual' or 'plain', of `blocks` blocks per stage) runs of
    `seeds` x `candidates` (T, alpha), the recipe of its published Exercise 1.3 run (seed 0's,
    with each seed) changed by `schedule`."""
    _, teacher = published_cnn_run(**TEACHER_RUN)
    recipe, _ = published_cnn_run(student == "residual", blocks, 0)
    out = []
    for seed in seeds:
        for temperature, alpha in candidates:
            student = {**recipe["config"], **schedule, "seed": seed}
            out.append(run_config(student, teacher, temperature, alpha))
    return out


def schedule_flags(args):
    return {k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None}


def main_configs(args, student=None):
    return configs_of(student or args.student, range(args.seeds), [(args.temperature, args.alpha)],
                      schedule_flags(args))


def select_configs(args):
    """The candidates of the choice of T and alpha: validation only, never the test set."""
    return configs_of(args.student, [0], SELECT_CANDIDATES,
                      {**SELECT_SCHEDULE, **schedule_flags(args), "selection": True})


def short_configs(args):
    """The paired study: per student and seed, distilled (T, alpha) and alone (alpha 0)."""
    pairs = [(args.temperature, args.alpha), (args.temperature, 0.0)]
    return [c for residual, blocks in SHORT_STUDENTS
            for c in configs_of("residual" if residual else "plain", range(SHORT_SEEDS), pairs,
                                {**SHORT_SCHEDULE, **schedule_flags(args)}, blocks)]


def wanted_configs(args):
    return select_configs(args) if args.select else short_configs(args) if args.short else main_configs(args)


def load_teacher(device, memory_format=torch.channels_last):
    _, folder = published_cnn_run(**TEACHER_RUN)
    path = os.path.join(folder, runs.CHECKPOINT_FILE)
    remedy = "restore it with `git checkout -- " + os.path.relpath(path) + "`"
    teacher, _ = load_model(path, device, CifarResNet, remedy)
    return teacher.to(memory_format=memory_format), outputs.inputs_of({"teacher": path})["teacher"]


def load_data(args, device):
    config = wanted_configs(args)[0]
    return load_cifar10(args.data_dir, device, config["val_size"], train_subset=config["train_subset"])


def train(config, data, device, out_dir, progress=True, tensorboard=None):
    """Train one distilled student; returns (outcome, record) as training.fit does."""
    generator = seed_everything(config["seed"])
    memory_format = torch.channels_last
    arch = {"name": "CifarResNet", "kwargs": {
        "blocks_per_stage": config["blocks"], "width": config["width"], "residual": config["residual"],
        "num_classes": len(data.classes)}}
    model = CifarResNet(**arch["kwargs"]).to(device, memory_format=memory_format)  # the baseline's init.
    optimizer, scheduler = sgd_warmup_cosine(model, config, math.ceil(len(data.train) / config["batch_size"]))
    train_transform, eval_transform = cifar_transforms(generator, memory_format)
    with torch.random.fork_rng():  # building the teacher draws no number the student's run would
        teacher, teacher_sha256 = load_teacher(device, memory_format)
    criterion = Distillation(teacher, config["temperature"], config["alpha"])
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator, scheduler, criterion,
                    train_transform, eval_transform, read_test=not config.get("selection", False))
    # the teacher's identity: a resume with another teacher (its file re-saved) is refused
    meta = run_meta(data, device, memory_format="channels_last", teacher_sha256=teacher_sha256)
    with runs.RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch, tensorboard,
                        measures=criterion.epoch_metrics) as run:  # its teacher time and CE, in each epoch
        return fit(model, data, recipe, run, progress)


# ----------------------------------------------------------------------------- tables

def _val(record):
    return record.get("best_val_acc")


def student_name(config):
    return cnn_name(config["residual"], config["blocks"])


def parameters(blocks, residual=True):
    return sum(p.numel() for p in CifarResNet(blocks, residual=residual).parameters())


def comparison_lines(pairs):
    """The rows of each student alone and distilled, and the paired differences: `pairs` is
    [(student name, parameters, alone records, distilled records)]."""
    lines = ["| network | parameters | best val. accuracy | test accuracy (best val.) | fastest epoch (s) "
             "| seeds |", "|---|---:|---:|---:|---:|---:|"]
    for name, params, alone, distilled in pairs:
        for label, records in (("alone", alone), ("distilled", distilled)):
            cells = [format_result(records, _val), format_result(records, run_result),
                     format_result(records, fastest_epoch_seconds, digits=0), str(len(records))]
            lines.append(f"| {name} {label} | {params / 1e6:.2f}M | " + " | ".join(cells) + " |")
    lines += ["", "| distilled minus alone | best val. accuracy [95% interval] "
                  "| test accuracy [95% interval] "
                  "| test, per seed |", "|---|---:|---:|---:|"]
    for name, _, alone, distilled in pairs:
        val, test = (paired_difference(distilled, alone, key) for key in (_val, run_result))
        per_seed = ", ".join(f"{d:+.3f}" for d in test[2].values()) if test else "-"
        lines.append(f"| {name} | {format_interval(val)} | {format_interval(test)} | {per_seed} |")
    return lines


def teacher_seconds(records):
    seconds = [e["teacher_seconds"] for r in records for e in r["epochs"] if "teacher_seconds" in e]
    return f"{min(seconds):.0f}-{max(seconds):.0f} s" if seconds else "-"


def not_finished(configs, found):
    names = runs.unfinished(configs, found, run_name)
    return f" **Not finished: {', '.join(names)}.**" if names else ""


def alone_runs(distilled, roots):
    """The student of each distilled run trained without its teacher, on the same schedule and
    seed: its published Exercise 1.3 run when that is the distilled run's recipe, else a run of
    this script with alpha 0 (as --short trains them) found in `roots`; seeds with neither are
    left out, so a 2-epoch student is never set against an 8-epoch baseline."""
    out = []
    for r in distilled:
        student = {k: v for k, v in r["config"].items() if k not in ("teacher", "temperature", "alpha")}
        residual, blocks, seed = (r["config"][k] for k in ("residual", "blocks", "seed"))
        try:
            published = published_cnn_run(residual, blocks, seed)[0]
        except UserError:  # a seed Exercise 1.3 did not publish
            published = None
        if published is not None and published["config"] == student:
            out.append(published)
            continue
        config = {**r["config"], "alpha": 0.0}
        record, _ = runs.find_finished(roots, run_name(config), config)
        if record is not None:
            out.append(record)
    return out


def main_table(students, wanted, roots):
    """The full schedule: the teacher, then per student kind with finished runs ([(config, record,
    folder)] of its distilled runs) alone (alone_runs) and distilled."""
    teacher, _ = published_cnn_run(**TEACHER_RUN)
    lines = ["| teacher | parameters | best val. accuracy | test accuracy | train accuracy (last epoch) |",
             "|---|---:|---:|---:|---:|",
             f"| {cnn_name(True, TEACHER_RUN['blocks'])} | {parameters(TEACHER_RUN['blocks']) / 1e6:.2f}M | "
             f"{teacher['best_val_acc']:.3f} | {run_result(teacher):.3f} | "
             f"{teacher['epochs'][-1]['train_acc']:.3f} |", ""]
    pairs, distilled_all, missing_alone = [], [], ""
    for kind, found in students.items():
        distilled = [record for _, record, _ in found]
        alone = alone_runs(distilled, roots)
        if len(alone) < len(distilled):
            missing_alone = (" **Some seeds have no run of the student alone on this schedule (train them "
                             "with `--alpha 0` and the same flags): the difference is over the seeds that "
                             "have one.**")
        pairs.append((student_name(found[0][0]), parameters(STUDENT_BLOCKS), alone, distilled))
        distilled_all += distilled
    lines += comparison_lines(pairs)
    cfg, meta = distilled_all[0]["config"], distilled_all[0]["meta"]
    lines += ["", f"T = {cfg['temperature']:g}, alpha = {cfg['alpha']:g}; {count(cfg['epochs'], 'epoch')} on "
                  f"all training images; {meta['data']}, {meta['hardware']}. Mean ± std over seeds; the "
                  "difference within each seed (the same initialization, batches and augmentation), its mean "
                  "and 95% t interval over seeds (none for one seed). The teacher's forward passes took "
                  f"{teacher_seconds(distilled_all)} of each distilled epoch." + missing_alone
                  + not_finished(wanted, [f for found in students.values() for f in found])
                  + f" Made by `python {PROG}` and `python {PROG} --student plain`."]
    return "\n".join(lines) + "\n"


def short_pairs(found):
    """[(student name, parameters, alone records, distilled records)] of the paired short study."""
    by_student = {}
    for config, record, _ in found:
        side = "distilled" if config["alpha"] > 0 else "alone"
        runs = by_student.setdefault((config["residual"], config["blocks"]), {"alone": [], "distilled": []})
        runs[side].append(record)
    return [(cnn_name(residual, blocks), parameters(blocks, residual), runs["alone"], runs["distilled"])
            for (residual, blocks), runs in by_student.items()]


def short_table(found, wanted):
    """The paired short study: each student distilled and alone on the same seeds."""
    lines = comparison_lines(short_pairs(found))
    cfg, meta = found[0][0], found[0][1]["meta"]
    distilled = [r for c, r, _ in found if c["alpha"] > 0]
    lines += ["", f"Distilled: T = {cfg['temperature']:g}, alpha = {DEFAULT_ALPHA:g}; alone: alpha = 0 (the "
                  f"same code and recipe, cross-entropy only). {count(cfg['epochs'], 'epoch')} on the first "
                  f"{cfg['train_subset']:,} training images, validation on {cfg['val_size']:,}; "
                  f"{meta['data']}, "
                  f"{meta['hardware']}. Mean ± std over seeds; the difference within each seed, its mean "
                  "and 95% t interval. The teacher's forward passes took "
                  f"{teacher_seconds(distilled)} of each distilled epoch."
                  + not_finished(wanted, found) + f" Made by `python {PROG} --short`."]
    return "\n".join(lines) + "\n"


def plot_curves(panels, caption, path):
    """Validation accuracy per epoch, distilled (solid) against alone (dashed), one line per
    seed: `panels` is [(title, alone records, distilled records)]."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, alone, distilled) in zip(axes[0], panels):
        for records, label, style in ((alone, "alone", "--"), (distilled, "distilled", "-")):
            for i, r in enumerate(records):
                ax.plot([e["epoch"] for e in r["epochs"]], [e["val_acc"] for e in r["epochs"]], style,
                        marker="o", ms=3, color="C1" if label == "alone" else "C2", alpha=0.75,
                        label=f"{label} ({count(len(records), 'seed')})" if i == 0 else None)
        ax.set(title=title, xlabel="epoch", ylabel="validation accuracy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, caption, path, caption_lines=2)


def select_table(found, wanted):
    """--select: each candidate (T, alpha) on seed 0, validation only (the test set is not read)."""
    lines = ["| T | alpha | best val. accuracy | final train CE |", "|---:|---:|---:|---:|"]
    for config, record, _ in found:
        ce = record["epochs"][-1].get("train_ce", float("nan"))
        lines.append(f"| {config['temperature']:g} | {config['alpha']:g} | {record['best_val_acc']:.4f} "
                     f"| {ce:.3f} |")
    cfg = found[0][0]
    lines += ["", f"Seed 0, {count(cfg['epochs'], 'epoch')} on the first {cfg['train_subset']:,} training "
                  f"images, validation on {cfg['val_size']:,}, the test set not read; "
                  f"{found[0][1]['meta']['hardware']}. "
                  "alpha = 0 is the student on hard labels alone."
                  + not_finished(wanted, found) + f" Made by `python {PROG} --select`."]
    return "\n".join(lines) + "\n"


def make_tables(args):
    readme = get_args(["--student", args.student])  # either student's runs go to the README's table
    fig_dir, publish = outputs.destination(args, readme, where=WHERE_FLAGS)
    roots, command = runs.lookup_roots(args.out_dir, EXERCISE), f"python {PROG}"
    tables, panels = [], []
    select = runs.collect(select_configs(args), roots, run_name)
    if select:
        tables.append(("ex2_distill_select", select_table(select, select_configs(args))))
    students, wanted = {}, []
    for kind in ("residual", "plain"):
        configs = main_configs(args, kind)
        found = runs.collect(configs, roots, run_name)
        if found:
            students[kind] = found
            wanted += configs
    if students:
        tables.append(("ex2_distill_table", main_table(students, wanted, roots)))
        found = students["residual"] if "residual" in students else next(iter(students.values()))
        distilled = [r for _, r, _ in found]
        panels.append((f"{student_name(found[0][0])}, all images", alone_runs(distilled, roots), distilled))
    short = runs.collect(short_configs(args), roots, run_name)
    if short:
        tables.append(("ex2_distill_short", short_table(short, short_configs(args))))
        panels += [(f"{name}, short budget", alone, distilled)
                   for name, _, alone, distilled in short_pairs(short)]
    if not tables:
        raise UserError(f"no finished distillation runs in {' or '.join(roots)}; run `{command}` first")
    for name, text in tables:
        print(text)
        print(f"table {outputs.write_table(text, name, fig_dir, publish)} written")
    meta = (short or next(iter(students.values())))[0][1]["meta"]
    caption = (f"{meta['data']}; {meta['hardware']}. Teacher: the published "
               f"{cnn_name(True, TEACHER_RUN['blocks'])}. Short budget: "
               f"{count(SHORT_SCHEDULE['epochs'], 'epoch')} on {SHORT_SCHEDULE['train_subset']:,} "
               f"images. Made by `python {PROG}` and `python {PROG} --short`.")
    out = os.path.join(fig_dir, "ex2_distill_curves.png")
    plot_curves(panels, caption, out)
    print(f"figure {out} written")


# ----------------------------------------------------------------------------- command line

def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--temperature", type=kinds.Number(float, 0, MAX_TEMPERATURE, open_low=True),
                   default=DEFAULT_TEMPERATURE, help="T, the softening of both networks' outputs")
    p.add_argument("--alpha", type=kinds.Number(float, 0, 1), default=DEFAULT_ALPHA,
                   help="weight of the soft (teacher) term; 0 is cross-entropy alone")
    p.add_argument("--student", choices=("residual", "plain"), default="residual",
                   help=f"the depth-{CifarResNet.depth_of(STUDENT_BLOCKS)} student")
    p.add_argument("--seeds", type=kinds.SEEDS, default=3, help="seeds 0..N-1")
    p.add_argument("--epochs", type=kinds.EPOCHS, default=None,
                   help="training epochs (default: those of the published baseline, 8)")
    p.add_argument("--train-subset", type=kinds.count_flag(kinds.MAX_IMAGES, low=0), default=None,
                   help="train on the first N training images (default: the baseline's, all)")
    p.add_argument("--select", action="store_true",
                   help=f"train the check of T and alpha: {SELECT_CANDIDATES} on a short schedule")
    p.add_argument("--short", action="store_true",
                   help=f"train the paired study: residual-32 and residual-8 students, distilled and alone, "
                        f"{SHORT_SEEDS} seeds, {SHORT_SCHEDULE['epochs']} epochs on "
                        f"{SHORT_SCHEDULE['train_subset']:,} images")
    p.add_device_flag()
    p.add_tensorboard_flag()
    p.add_argument("--data-dir", default="data",
                   help="torchvision's CIFAR-10 files, or an ImageFolder copy here or in data/cifar10-jpeg")
    p.add_output_flags(EXERCISE)
    p.add_workers_flag()
    p.add_argument("--shard", type=kinds.SHARD, default=None, metavar="K/N",
                   help="train only the K-th of N parts of the runs")
    return p


def get_args(argv=None):
    return make_parser().parse_args(argv)


def main(args):
    if not args.plot_only:
        device = get_device(args.device)
        configs = wanted_configs(args)
        Sweep(EXERCISE, run_name, load_data, train, args).run(device, configs, lambda c: c["epochs"])
    return make_tables(args)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
