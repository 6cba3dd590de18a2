"""Before a run trains: is it finished already (and where), and the folder and threads it starts
with; and sweeps, which hand a script's own `train` to worker processes.

A script's `main` reads as the experiment:

    record, folder, data = prepared_run(EXERCISE, name, config, args, device, threads, load_data)
    if record is None:
        _, record = train(config, data, device, args.out_dir, tensorboard=args.tensorboard)
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Callable

from lab.cli import check_writable, count
from lab.errors import UserError
from lab.runs import (METRICS_FILE, RunHeld, check_tensorboard, find_finished, is_published, lookup_roots,
                      remove_run)
from lab.sweeps import default_workers, plan, run_jobs, set_threads, summarize_jobs


def finished_run(exercise, out_dir, name, config, force=False, tensorboard=None):
    """(record, folder) of the run `name` if it finished among the published results of
    `exercise` or in `out_dir` (printed, with how to train it again), else (None, its folder in
    `out_dir`). `force`: (None, folder) always, a finished run in `out_dir` deleted first (never
    a published one). `tensorboard`: the --tensorboard folder, which a finished run logs nothing to."""
    folder = os.path.join(out_dir, name)
    record, found = find_finished(lookup_roots(out_dir, exercise), name, config)
    if record is not None and not force:
        published = os.path.abspath(found) != os.path.abspath(folder) or is_published(found, exercise)
        print(f"{found} holds this finished run{', published with the code' if published else ''} "
              f"(--force trains it again{' into ' + out_dir if published else ''})")
        if tensorboard:
            print("--tensorboard: nothing logged, the run is finished (its per-epoch numbers are in its "
                  "metrics.json; --force trains it again with the logging)")
        own, _ = find_finished([out_dir], name, config) if published else (None, None)
        if own is not None and os.path.abspath(found) != os.path.abspath(folder):
            print(f"(your own run of these settings is in {folder}: test accuracy {own.get('test_acc')})")
        return record, found
    if os.path.exists(os.path.join(folder, METRICS_FILE)) and find_finished([out_dir], name, config)[0]:
        if is_published(folder, exercise):
            raise UserError(f"--force never deletes a published run ({folder}); pass another --out-dir")
        remove_run(folder)
        print(f"--force: removed the finished run in {folder}")
    return None, folder


@contextlib.contextmanager
def starting_run(out_dir, device, threads=None, tensorboard=None):
    """Around the loading of a run's data: `out_dir` (and the --tensorboard folder) made and
    checked writable, the process takes `threads` CPU threads (None: every core); if the data
    cannot be loaded, the folders made for it go again, so a run that could not start leaves no
    empty folder behind."""
    check_tensorboard(tensorboard)
    new_folders = missing_folders(out_dir)
    check_writable(out_dir)
    set_threads(device, threads)
    try:
        yield
    except BaseException:
        remove_if_empty(new_folders)
        raise


def prepared_run(exercise, name, config, args, device, threads, load_data):
    """(record, folder, None) of the run `name` if it is finished (finished_run), else (None, its
    folder, load_data(args, device)): the data it trains on, loaded inside starting_run. `args`
    are the script's: lab reads its shared flags out_dir, force and tensorboard."""
    record, folder = finished_run(exercise, args.out_dir, name, config, args.force, args.tensorboard)
    if record is not None:
        return record, folder, None
    with starting_run(args.out_dir, device, threads, args.tensorboard):
        return None, folder, load_data(args, device)


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


@dataclass(frozen=True)
class Sweep:
    """The runs of one script that a sweep trains, as its worker processes receive them: the
    script's module-level functions (sent by name) and its arguments, of which lab reads the
    shared flags --out-dir, --shard (K/N: the K-th of N disjoint parts), --workers (0:
    lab.sweeps.default_workers) and --tensorboard, those a script declares."""
    exercise: str                   # its committed results are results/<exercise>/
    run_name: Callable              # config -> run folder name
    load_data: Callable             # (args, device) -> the data every run trains on
    # (config, data, device, out_dir, progress, tensorboard folder or None) -> (outcome, record)
    train: Callable
    args: object                    # the script's arguments (load_data reads its own too)

    @property
    def out_dir(self):
        return self.args.out_dir

    @property
    def tensorboard(self):
        return getattr(self.args, "tensorboard", None)

    def run(self, device, configs, cost, threads=None, need_checkpoints=False):
        """Train the pending runs of `configs` (of the sweep's shard) on worker processes of
        `threads` threads each (None: the cores shared among them); print what was done, and
        return that line (None if nothing was left). cost(config), a run's relative time,
        balances shards and puts the longest runs of a seed first."""
        costs = [cost(c) for c in configs]
        roots = lookup_roots(self.out_dir, self.exercise)
        todo = plan(configs, costs, self.run_name, roots, self.out_dir, getattr(self.args, "shard", None),
                    need_checkpoints)
        if not todo:
            return None
        check_writable(self.out_dir)
        check_tensorboard(self.tensorboard)
        self.load_data(self.args, device)  # a data error: one line here, not one per worker
        workers = default_workers(device, getattr(self.args, "workers", 0))
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        results, wall, used = run_jobs(_job, todo, workers, device, threads, "sweep", _setup, (self, device))
        done = (f"sweep: {summarize_jobs(results)} in {wall / 60:.1f} min wall time "
                f"({count(used, 'process', 'processes')} of {count(threads, 'thread')})")
        print(done)
        return done


def _setup(setup_args):
    spec, device = setup_args
    return spec, device, spec.load_data(spec.args, device)


def _job(config, context):
    spec, device, data = context
    try:
        return spec.train(config, data, device, spec.out_dir, False, spec.tensorboard)[0]
    except RunHeld:
        return "held"
