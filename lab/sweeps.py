"""Sweeps: which runs are left, shards over machines, and a pool of worker processes."""
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time

import torch

from lab.cli import count
from lab.errors import DataError, UserError
from lab.runs import LAST_FILE, find_finished, has_checkpoint


def shard(configs, costs, k, n):
    """The K-th of N disjoint parts of `configs`, together all of them, of about equal cost.

    Deterministic in the configs alone (not in what is finished where), so N machines
    that each compute their own part never train a run twice.
    """
    order = sorted(range(len(configs)), key=lambda i: (-costs[i], i))
    loads, owner = [0.0] * n, {}
    for i in order:
        j = loads.index(min(loads))
        owner[i] = j
        loads[j] += costs[i]
    return [c for i, c in enumerate(configs) if owner[i] == k]


def pending(configs, roots, out_dir, name_fn, need_checkpoints=False):
    """The configs with no finished run in `roots` (or, if `need_checkpoints`, none with its
    best.pt), with a line saying what is left to train."""
    done = has_checkpoint if need_checkpoints else (lambda r, n, c: find_finished(r, n, c)[0] is not None)
    todo = [c for c in configs if not done(roots, name_fn(c), c)]
    resuming = sum(os.path.exists(os.path.join(out_dir, name_fn(c), LAST_FILE)) for c in todo)
    print(f"sweep: {count(len(configs), 'run')}, {len(configs) - len(todo)} already finished, "
          f"{len(todo)} to train" + (f" ({resuming} of them resume from the last epoch they finished)"
                                     if resuming else ""))
    return todo


def _exit_with_parent(parent_pid):
    """Poll the parent: a killed sweep must not leave workers writing its run folders."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _worker(fn, jobs, done, device, threads, setup, setup_args, parent_pid):
    from tqdm import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent answers Ctrl-C and stops us
    # tqdm's default lock is a multiprocessing semaphore: one made here and not released
    # when the parent stops us would be reported as leaked after the parent's last line
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    set_threads(device, threads)
    try:
        context = setup(setup_args)
        while True:
            job = jobs.get()
            if job is None:
                return
            done.put(fn(job, context))
    except (UserError, DataError, OSError) as e:  # one line, as the parent would print it
        print(f"sweep worker: error: {e}", file=sys.stderr)
        done.put("failed")
        sys.exit(2)


def _collect(done, procs, n, desc):
    """The first `n` results the workers put on `done`, fewer if all of them stopped early."""
    from tqdm import tqdm
    results = []
    with tqdm(total=n, desc=desc, unit="run") as bar:
        while len(results) < n:
            try:
                results.append(done.get(timeout=1.0))
                bar.update(1)
            except queue.Empty:  # check that the workers are still alive
                if not any(p.is_alive() for p in procs) and done.empty():
                    break
    return results


def run_jobs(fn, jobs, workers, device, threads, desc, setup, setup_args):
    """Run fn(job, context) for every job, in order, on `workers` processes (no more than there
    are jobs); returns ([fn's results], wall seconds, processes used). Each process first builds
    `context = setup(setup_args)` (e.g. loads the data) and uses `threads` threads; a job goes to
    the next free process.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        set_threads(device, threads)
        context = setup(setup_args)
        results = [fn(job, context) for job in tqdm(jobs, desc=desc, unit="run")]
        return results, time.perf_counter() - start, 1
    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no inherited threads or state
    todo, done = ctx.Queue(), ctx.Queue()
    for job in jobs + [None] * workers:
        todo.put(job)
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(fn, todo, done, device, threads, setup, setup_args, os.getpid()))
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        results = _collect(done, procs, len(jobs), desc)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        codes = [p.exitcode for p in procs]
        for q in (todo, done):
            q.close()
            q.cancel_join_thread()
        # the processes hold the queues too: dropping all now frees their semaphores here,
        # not in a resource-tracker warning after the one-line message of an interrupt
        del procs, todo, done
    failed = [code for code in codes if code != 0]
    if failed:
        # a worker that raised printed its one line (exit code 2); one killed (OOM, signal) could not
        said = "its error is printed above" if failed[0] == 2 else f"it exited with code {failed[0]}"
        raise UserError(f"a sweep worker failed ({said}); rerun to resume")
    return results, time.perf_counter() - start, workers


def summarize_jobs(results):
    """'trained 5 runs; 1 held by another process (skipped)' from the jobs' outcomes."""
    others = {"held": "held by another process (skipped)",
              "finished": "finished meanwhile by another process"}
    return "; ".join([f"trained {count(results.count('trained'), 'run')}"]
                     + [f"{results.count(k)} {text}" for k, text in others.items() if k in results])


def plan(configs, costs, name_fn, roots, out_dir, shard_spec=None, need_checkpoints=False):
    """The runs of `configs` (of this `--shard`, if given) left to train, in the order to train
    them: seed by seed, longest first within a seed, so the first seeds of a sweep finish first
    and can be committed while the others train. With `need_checkpoints`, a finished run whose
    best.pt is nowhere at hand (a published run whose checkpoint is not in git) is pending too:
    it is trained again into `out_dir`, with the same result."""
    if shard_spec is not None:
        mine = shard(configs, costs, *shard_spec)
        print(f"shard {shard_spec[0]}/{shard_spec[1]}: {count(len(mine), 'run')} of {len(configs)}")
        costs = [costs[configs.index(c)] for c in mine]
        configs = mine
    todo = pending(configs, roots, out_dir, name_fn, need_checkpoints)
    return sorted(todo, key=lambda c: (c.get("seed", 0), -costs[configs.index(c)], configs.index(c)))


def default_workers(device, workers=0):
    """Sweep processes: `workers` if given, else one per core on a CPU and one on an accelerator
    (a GPU or Apple's MPS), which a single process keeps busy."""
    return workers or (os.cpu_count() or 1 if device.type == "cpu" else 1)


def set_threads(device, threads):
    """Use `threads` CPU threads (None: all of them). CUDA runs ignore it.

    Width-16 MLPs take one thread (their matrix products are too small to share; bench.py
    mlp measures one against two), CNN sweeps one single-thread process per core, and a
    single CNN run every core.
    """
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
