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
from models import CifarResNet, build_model
from report import (cnn_name, depth_gap, fastest_epoch_seconds, format_gap, format_result,
                    published_cnn_run, run_result)
from training import Recipe, fit, sgd_warmup_cosine
from utils import get_device, run_meta, seed_everything
from lab.checkpoints import load_model
from lab.cli import (MAX_EPOCHS, MAX_IMAGES, MAX_SEEDS, MAX_WORKERS, add_device_flag, add_tensorboard_flag,
                     ArgumentParser, count, count_flag, Number, run_cli)
from lab.errors import UserError
from lab.experiment import Experiment, sweep
from lab.outputs import destination, sweep_results, write_table
from lab.runs import (CHECKPOINT_FILE, RunFolder, check_checkpoint_of_run, collect,
                      folder_name, lookup_roots)
from lab.sweeps import parse_shard

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
    return folder_name(f"kd-{student}_T{config['temperature']:g}_a{config['alpha']:g}", config)


def configs_of(student, seeds, candidates, schedule, blocks=STUDENT_BLOCKS):
    """The distilled `student` ('residual' or 'plain', of `blocks` blocks per stage) runs of
    `seeds` x `candidates` (T, alpha), the recipe of its published Exercise 1.3 run (seed 0's,
    with each seed) changed by `schedule`."""
    _, teacher = published_cnn_run(**TEACHER_RUN)
    recipe, _ = published_cnn_run(student == "residual", blocks, 0)
    out = []
    for seed in seeds:
        for temperature, alpha in candidates:
            out.append(run_config({**recipe["config"], **schedule, "seed": seed}, teacher, temperature, alpha))
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
    path = os.path.join(folder, CHECKPOINT_FILE)
    remedy = "restore it with `git checkout -- " + os.path.relpath(path) + "`"
    teacher, ckpt = load_model(path, device, CifarResNet, remedy)
    check_checkpoint_of_run(path, ckpt, remedy)
    return teacher.to(memory_format=memory_format)


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
    model = build_model(arch).to(device, memory_format=memory_format)  # the baseline's initialization
    optimizer, scheduler = sgd_warmup_cosine(model, config, math.ceil(len(data.train) / config["batch_size"]))
    train_transform, eval_transform = cifar_transforms(generator, memory_format)
    with torch.random.fork_rng():  # building the teacher draws no number the student's run would
        teacher = load_teacher(device, memory_format)
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator, scheduler,
                    Distillation(teacher, config["temperature"], config["alpha"]), train_transform,
                    eval_transform, read_test=not config.get("selection", False))
    meta = run_meta(data, device, memory_format="channels_last")
    with RunFolder(os.path.join(out_dir, run_name(config)), config, meta, arch, tensorboard) as run:
        return fit(model, data, recipe, run, progress)


def experiment():
    """This script as the shared orchestration sees it (built when called, so tests can patch it)."""
    return Experiment(EXERCISE, run_name, load_data, train)


# ----------------------------------------------------------------------------- tables

def _test(record):
    return run_result(record)


def _val(record):
    return record.get("best_val_acc")


def main_table(students, missing=0):
    """Teacher, then per student kind ('residual', 'plain') with finished runs, [(config, record,
    folder)] of its distilled runs: alone and distilled, mean ± std over seeds, the gain ± its SE
    and per seed."""
    teacher, _ = published_cnn_run(**TEACHER_RUN)
    teacher_params, student_params = (sum(p.numel() for p in CifarResNet(b, residual=True).parameters())
                                      for b in (TEACHER_RUN["blocks"], STUDENT_BLOCKS))
    rows = [(f"teacher: {cnn_name(True, TEACHER_RUN['blocks'])}", teacher_params, [teacher])]
    gaps, all_distilled = [], []
    for kind, found in students.items():
        distilled = [record for _, record, _ in found]
        residual = kind == "residual"
        alone = [published_cnn_run(residual, STUDENT_BLOCKS, r["config"]["seed"])[0] for r in distilled]
        student = cnn_name(residual, STUDENT_BLOCKS)
        rows += [(f"{student} alone", student_params, alone),
                 (f"{student} distilled", student_params, distilled)]
        gaps.append((student, [depth_gap(distilled, alone, key) for key in (_val, _test)]))
        all_distilled += distilled
    lines = ["| network | parameters | best val. accuracy | test accuracy (best val.) | fastest epoch (s) "
             "| seeds |", "|---|---:|---:|---:|---:|---:|"]
    for name, params, records in rows:
        cells = [format_result(records, _val), format_result(records, _test),
                 format_result(records, fastest_epoch_seconds, digits=0), str(len(records))]
        lines.append(f"| {name} | {params / 1e6:.2f}M | " + " | ".join(cells) + " |")
    lines += ["", "| distilled minus alone | best val. accuracy | test accuracy | val., per seed "
                  "| test, per seed |", "|---|---:|---:|---:|---:|"]
    for student, (val, test) in gaps:
        per_seed = [", ".join(f"{d:+.3f}" for d in g[2].values()) if g else "-" for g in (val, test)]
        lines.append(f"| {student} | {format_gap(val)} | {format_gap(test)} | " + " | ".join(per_seed) + " |")
    teacher_s = [e["teacher_seconds"] for r in all_distilled for e in r["epochs"] if "teacher_seconds" in e]
    cfg, meta = all_distilled[0]["config"], all_distilled[0]["meta"]
    not_finished = f" **{count(missing, 'run')} not finished.** " if missing else " "
    lines += ["", f"T = {cfg['temperature']:g}, alpha = {cfg['alpha']:g}; {cfg['epochs']} epochs, "
                  f"{meta['data']}, {meta['hardware']}. Mean ± std over seeds; the difference of the means ± "
                  "its standard error (none for one seed), and within each seed (the same initialization, "
                  "batches and augmentation). The teacher's forward passes took "
                  f"{min(teacher_s):.0f}-{max(teacher_s):.0f} s of each distilled epoch.{not_finished}"
                  f"Made by `python {PROG}` and `python {PROG} --student plain`."]
    return "\n".join(lines) + "\n"


def select_table(found, missing=0):
    lines = ["| T | alpha | best val. accuracy | final train CE |", "|---:|---:|---:|---:|"]
    for config, record, _ in found:
        ce = record["epochs"][-1].get("train_ce", float("nan"))
        lines.append(f"| {config['temperature']:g} | {config['alpha']:g} | {record['best_val_acc']:.4f} "
                     f"| {ce:.3f} |")
    cfg = found[0][0]
    lines += ["", f"Seed 0, {cfg['epochs']} epochs on the first {cfg['train_subset']} training images, "
                  f"validation on {cfg['val_size']}; {found[0][1]['meta']['hardware']}. alpha = 0 is the "
                  f"student on hard labels alone. Made by `python {PROG} --select`."]
    return "\n".join(lines) + "\n"


def make_tables(args):
    readme = get_args(["--student", args.student])  # either student's runs go to the README's table
    fig_dir, publish = destination(args, readme, os.path.join(args.out_dir, "figures"))
    roots, command = lookup_roots(args.out_dir, EXERCISE), f"python {PROG}"
    found, missing = sweep_results(select_configs(args), roots, run_name, fig_dir, command + " --select")
    tables = [("ex2_distill_select", select_table(found, missing))]
    students, missing = {}, 0
    for kind in ("residual", "plain"):
        configs = main_configs(args, kind)
        found = collect(configs, roots, run_name)
        if found:
            students[kind] = found
            missing += len(configs) - len(found)
    if not students:
        raise UserError(f"no finished distillation runs in {' or '.join(roots)}; run `{command}` first")
    tables.append(("ex2_distill_table", main_table(students, missing)))
    for name, text in tables:
        print(text)
        print(f"table {write_table(text, name, fig_dir, publish)} written")


# ----------------------------------------------------------------------------- command line

def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--temperature", type=Number(float, 0, MAX_TEMPERATURE, open_low=True),
                   default=DEFAULT_TEMPERATURE, help="T, the softening of both networks' outputs")
    p.add_argument("--alpha", type=Number(float, 0, 1), default=DEFAULT_ALPHA,
                   help="weight of the soft (teacher) term; 0 is cross-entropy alone")
    p.add_argument("--student", choices=("residual", "plain"), default="residual",
                   help=f"the depth-{CifarResNet.depth_of(STUDENT_BLOCKS)} student")
    p.add_argument("--seeds", type=count_flag(MAX_SEEDS), default=3, help="seeds 0..N-1")
    p.add_argument("--epochs", type=count_flag(MAX_EPOCHS), default=None,
                   help="training epochs (default: those of the published baseline, 8)")
    p.add_argument("--train-subset", type=count_flag(MAX_IMAGES, low=0), default=None,
                   help="train on the first N training images (default: the baseline's, all)")
    p.add_argument("--select", action="store_true",
                   help=f"train the check of T and alpha: {SELECT_CANDIDATES} on a short schedule")
    p.add_argument("--short", action="store_true",
                   help=f"train the paired study: residual-32 and residual-8 students, distilled and alone, "
                        f"{SHORT_SEEDS} seeds, {SHORT_SCHEDULE['epochs']} epochs on "
                        f"{SHORT_SCHEDULE['train_subset']:,} images")
    add_device_flag(p)
    add_tensorboard_flag(p)
    p.add_argument("--data-dir", default="data",
                   help="torchvision's CIFAR-10 files, or an ImageFolder copy here or in data/cifar10-jpeg")
    p.add_argument("--out-dir", default=os.path.join("runs", EXERCISE), help="one folder per run below this")
    p.add_argument("--fig-dir", default=None,
                   help="where tables go (default: figures/ for the README's settings, else "
                        "<out-dir>/figures)")
    p.add_argument("--workers", type=count_flag(MAX_WORKERS, low=0), default=0,
                   help="processes (0: one single-thread process per core on a CPU, 1 on a GPU)")
    p.add_argument("--shard", default=None, metavar="K/N", help="train only the K-th of N parts of the runs")
    p.add_argument("--plot-only", action="store_true", help="redraw the tables from saved runs")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    try:
        args.shard = parse_shard(args.shard) if args.shard else None
    except ValueError as e:
        p.error(str(e))
    return args


def main(args):
    if not args.plot_only:
        device = get_device(args.device)
        configs = wanted_configs(args)
        workers = args.workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
        done = sweep(experiment(), args, device, configs, [c["epochs"] for c in configs],
                     threads=max(1, (os.cpu_count() or 1) // workers))
        if done:
            print(done)
    return make_tables(args)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG)
