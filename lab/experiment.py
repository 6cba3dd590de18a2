"""The one orchestration of single runs and sweeps that every training script shares.

A script describes itself as an `Experiment` (how to name, load and train a run); `single_run`
and `sweep` then decide what is already finished, what to train, and where it goes.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

from lab.cli import check_writable, count
from lab.errors import UserError
from lab.runs import METRICS_FILE, RunHeld, find_finished, is_published, lookup_roots, remove_run
from lab.sweeps import default_workers, plan, run_jobs, set_threads, summarize_jobs


@dataclass(frozen=True)
class Experiment:
    """What the orchestration needs of a script: module-level functions only, so that a sweep's
    worker processes can receive it."""
    exercise: str                   # its committed results are results/<exercise>/
    run_name: Callable              # config -> run folder name
    load_data: Callable             # (args, device) -> data.Dataset
    # (config, data, device, out_dir, progress, tensorboard folder or None) -> (outcome, record)
    train: Callable
    threads: Optional[int] = None   # CPU threads of a single run (None: every core)


def single_run(exp, args, device, config):
    """One run -> (record, its folder): the saved record if it finished among the published
    results or in --out-dir, else trained into --out-dir. --force trains it again (deleting a
    finished run in --out-dir, never a published one)."""
    name = exp.run_name(config)
    folder = os.path.join(args.out_dir, name)
    record, found = find_finished(lookup_roots(args.out_dir, exp.exercise), name, config)
    if record is not None and not args.force:
        published = os.path.abspath(found) != os.path.abspath(folder) or is_published(found, exp.exercise)
        print(f"{found} holds this finished run{', published with the code' if published else ''} "
              f"(--force trains it again{' into ' + args.out_dir if published else ''})")
        if getattr(args, "tensorboard", None):
            print("--tensorboard: nothing logged, the run is finished (its per-epoch numbers are in its "
                  "metrics.json; --force trains it again with the logging)")
        own, _ = find_finished([args.out_dir], name, config) if published else (None, None)
        if own is not None and os.path.abspath(found) != os.path.abspath(folder):
            print(f"(your own run of these settings is in {folder}: test accuracy {own.get('test_acc')})")
        return record, found
    if os.path.exists(os.path.join(folder, METRICS_FILE)) and find_finished([args.out_dir], name, config)[0]:
        if is_published(folder, exp.exercise):
            raise UserError(f"--force never deletes a published run ({folder}); pass another --out-dir")
        remove_run(folder)
        print(f"--force: removed the finished run in {folder}")
    new_folders = missing_folders(args.out_dir)
    check_writable(args.out_dir)  # only now: printing a finished run leaves no empty folder behind
    set_threads(device, exp.threads)
    try:
        data = exp.load_data(args, device)
    except BaseException:
        remove_if_empty(new_folders)  # a run that could not start leaves no empty folder behind
        raise
    if hasattr(data, "source"):  # a data.Dataset (a script whose data is of its own prints its own line)
        print(f"{name}: {data.source}, {count(len(data.train), 'training image')}")
    _, record = exp.train(config, data, device, args.out_dir, True, getattr(args, "tensorboard", None))
    return record, folder


def missing_folders(folder):
    """The folders that creating `folder` would make, deepest first."""
    out, folder = [], os.path.abspath(folder)
    while not os.path.exists(folder):
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


def remove_if_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (or gone): what is above it stays too


def _setup(setup_args):
    exp, args, device = setup_args
    return exp, args, device, exp.load_data(args, device)


def _job(config, context):
    exp, args, device, data = context
    try:
        return exp.train(config, data, device, args.out_dir, False, getattr(args, "tensorboard", None))[0]
    except RunHeld:
        return "held"


def sweep(exp, args, device, configs, costs, threads, need_checkpoints=False):
    """Train the pending runs of `configs` (of this --shard) on --workers processes of `threads`
    threads; returns the line saying what was done, or None if nothing was left to train.
    `costs` (one per config) balance shards and put the longest runs of a seed first."""
    roots = lookup_roots(args.out_dir, exp.exercise)
    todo = plan(configs, costs, exp.run_name, roots, args.out_dir, args.shard, need_checkpoints)
    if not todo:
        return None
    check_writable(args.out_dir)
    exp.load_data(args, device)  # a data error: one line here, not one per worker
    workers = default_workers(device, getattr(args, "workers", 0))
    results, wall, used = run_jobs(_job, todo, workers, device, threads, "sweep", _setup, (exp, args, device))
    return (f"sweep: {summarize_jobs(results)} in {wall / 60:.1f} min wall time "
            f"({count(used, 'process', 'processes')} of {count(threads, 'thread')})")
