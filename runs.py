"""Run folders: names, records, which runs are finished, and sweeps over processes and machines.

A run folder is named after what defines the run, ending in a digest of its whole
config, so two settings never share a folder. It holds `metrics.json` (config, per-epoch
metrics, status, summary) and `best.pt`; `last.pt` while it trains. Finished runs are
looked up in the run folder (`--out-dir`) and in the results committed with the code
(`results/<exercise>/`), so a fresh clone does not retrain what the README shows.
"""
import glob
import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import threading
import time


from data import DataError
from storage import TMP_PREFIX, FolderLock, read_json, write_json_atomic
from utils import FRACTION, Number, UserError, check_writable, count, fields_problem, set_threads

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "best.pt"
LAST_FILE = "last.pt"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FINISHED = ("complete", "diverged")
MAX_SHARDS = 10_000  # more parts than any sweep has runs
CNN_CPU_EPOCHS = 8   # ex1_cnn.py's CPU preset: the published CNN runs that ex2_why.py and ex2_cam.py read
EPOCH = Number(int, 1, 10 ** 6)
RECORD_FIELDS = {"config": dict, "meta": dict, "status": str, "epochs": list}
# a finished run's summary (absent if it diverged before its first validation)
SUMMARY_FIELDS = {"best_epoch": EPOCH, "best_val_acc": FRACTION, "test_acc": FRACTION,
                  "test_loss": Number(float, 0, float("inf"))}
STATUSES = ("running",) + FINISHED


def config_digest(config):
    """8 hex digits of a hash of the whole config: the same on every machine and Python."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def folder_name(prefix, config):
    """e.g. 'res_n3_e8_s0_1a2b3c4d': readable, and unique to the config by its digest."""
    return f"{prefix}_e{config['epochs']}_s{config['seed']}_{config_digest(config)}"


def published_dir(exercise):
    """The committed results of `exercise` (read, never written, unless it is the --out-dir)."""
    return os.path.join(RESULTS_DIR, exercise)


def is_published(path, exercise):
    """True if `path` lies inside the committed results of `exercise` (a figure made only from
    them may replace the README's)."""
    root = os.path.realpath(published_dir(exercise))
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def read_record(folder):
    """The metrics.json of a run folder (None if it has none), checked for what the code reads."""
    path = os.path.join(folder, METRICS_FILE)
    remedy = f"delete the run folder {folder} and rerun to train it again"
    record = read_json(path, remedy)
    if record is None:
        return None
    problem = record_problem(record)
    if problem:
        raise UserError(f"{path} is not a run record this code can use ({problem}); {remedy}")
    return record


def record_problem(record):
    """What is wrong with the fields of a run record, None if nothing: their presence, types and
    ranges, so no table, figure or resume meets a field it cannot use."""
    problem = fields_problem(record, RECORD_FIELDS)
    if problem:
        return problem
    if record["status"] not in STATUSES:
        return f"status {record['status']!r}, not one of {', '.join(STATUSES)}"
    for i, epoch in enumerate(record["epochs"]):
        if not isinstance(epoch, dict):
            return f"epoch {i + 1} is a {type(epoch).__name__}"
        numbers = {k: (int, float) for k in epoch if k != "epoch"}
        problem = fields_problem(epoch, {"epoch": EPOCH, **numbers})  # NaN allowed: a diverged epoch
        if problem:
            return f"epoch {i + 1}: {problem}"
    present = {k: v for k, v in SUMMARY_FIELDS.items() if k in record}
    if record["status"] == "complete" and "test_acc" not in record:
        return "a complete run without its test accuracy"
    problem = fields_problem(record, present)
    return problem and f"its summary has {problem}"


def check_checkpoint_of_run(path, ckpt, remedy):
    """Refuse, in one line, a checkpoint whose config is not that of the run record beside it
    (a best.pt copied or swapped between run folders): its numbers would be shown as another
    network's. A checkpoint with no record beside it (a file passed by hand) is not checked."""
    record = read_record(os.path.dirname(os.path.abspath(path)))
    if record is not None and record["config"] != ckpt.get("config"):
        raise UserError(f"{path} is not the checkpoint of the run in its folder (its config differs from "
                        f"{METRICS_FILE}'s); {remedy}")


def find_finished(roots, name, config):
    """(record, folder) of the finished run `name` with `config` in the first of `roots` that
    has it, or (None, None). A folder of that name with another config is an error."""
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        folder = os.path.join(root, name)
        record = read_record(folder)
        if record is None:
            continue
        if record["config"] != config:
            raise UserError(f"{folder} holds a run whose config does not match its name; "
                            "delete that folder")
        if record["status"] in FINISHED:
            return record, folder
    return None, None


class Run:
    """A run folder being trained: `config`, per-epoch metrics and a final summary.

    metrics.json is rewritten atomically after every epoch; its `status` is 'running',
    'complete' or 'diverged'. One process at a time holds a run (`claim`).
    """

    def __init__(self, path, config, meta=None):
        self.path = path
        self.config = config
        self.record = {"config": config, "meta": meta or {}, "status": "running", "epochs": []}
        self._lock = FolderLock(path)

    def claim(self):
        """Lock the folder: False if another process holds it. Call release() when done.
        Holding it, remove what an interrupted write (kill -9) of this folder left behind."""
        if not self._lock.acquire():
            return False
        for name in os.listdir(self.path):
            if name.startswith(TMP_PREFIX):
                os.remove(os.path.join(self.path, name))
        return True

    def release(self):
        self._lock.release()

    def saved(self):
        """The finished record in this folder, or None."""
        record, _ = find_finished([os.path.dirname(self.path)], os.path.basename(self.path), self.config)
        return record

    def log_epoch(self, **metrics):
        self.record["epochs"].append(metrics)
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))

    def finish(self, status, **summary):
        self.record.update(status=status, **summary)
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))


def remove_run(folder):
    """--force: a finished run is deleted (only ever on the user's explicit request)."""
    lock = FolderLock(folder)
    if not lock.acquire():
        raise UserError(f"{folder} is being trained by another process")
    try:
        if os.path.islink(folder):
            raise UserError(f"{folder} is a symbolic link, not a run folder; remove the link (or what "
                            "it points to) yourself, then rerun")
        shutil.rmtree(folder)
    except OSError as e:
        raise UserError(f"cannot delete the run folder {folder}: {e.strerror or e}")
    finally:
        lock.release()


def lookup_roots(out_dir, exercise):
    """Where a script looks for finished runs, in this order: the results published with the
    code, then the run folder. A published run is the reference for its settings: no single run
    or sweep trains it again, and a user's run of the same settings never stands in for it in a
    table or figure. (Runs of other settings are the user's, found in the run folder.)"""
    return [published_dir(exercise), out_dir]


def single_run(out_dir, name, config, force, train, exercise):
    """A script's single run -> (record, its folder): the saved record if this run finished
    among the published results or in `out_dir`, else what `train()` -> (outcome, record)
    makes in `out_dir`. `force` trains it again into `out_dir` (deleting a finished run there,
    never a published one)."""
    folder = os.path.join(out_dir, name)
    check_writable(out_dir)
    record, found = find_finished(lookup_roots(out_dir, exercise), name, config)
    if record is not None and not force:
        published = os.path.abspath(found) != os.path.abspath(folder)
        print(f"{found} holds this finished run{', published with the code' if published else ''} "
              f"(--force trains it again{' into ' + out_dir if published else ''}):")
        return record, found
    if os.path.exists(os.path.join(folder, METRICS_FILE)) and find_finished([out_dir], name, config)[0]:
        remove_run(folder)
        print(f"--force: removed the finished run in {folder}")
    outcome, record = train()
    if outcome == "held":
        raise UserError(f"another process is training {folder}; wait for it or use another --out-dir")
    return record, folder


# ----------------------------------------------------------------------------- sweeps

def unique(configs):
    """`configs` without repeats (e.g. `--depths 2,2`), in order."""
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def parse_shard(text):
    """'K/N' -> (K, N) with 0 <= K < N, for `--shard` (e.g. $SLURM_ARRAY_TASK_ID/4)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 0/4, got {text!r}")
    if not 0 <= k < n <= MAX_SHARDS:
        raise ValueError(f"--shard K/N needs 0 <= K < N <= {MAX_SHARDS}, got {text!r}")
    return k, n


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


def collect(configs, roots, name_fn):
    """[(config, record, folder)] of the finished runs of `configs` found in `roots`."""
    found = []
    for c in configs:
        record, folder = find_finished(roots, name_fn(c), c)
        if record is not None:
            found.append((c, record, folder))
    return found


def checkpointed_runs(root, pattern="*"):
    """[(record, best.pt path)] of the complete runs in `root` (folders matching `pattern`) that
    kept a checkpoint, found by their records, not by folder names: a run still training has a
    best.pt too, and a partly trained network is no result to analyse."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, pattern, CHECKPOINT_FILE))):
        record = read_record(os.path.dirname(path))
        if record is not None and record["status"] == "complete":
            found.append((record, path))
    return found


def has_checkpoint(roots, name, config):
    """True if one of `roots` holds the finished run `name` of `config` with its best.pt."""
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        record, folder = find_finished([root], name, config)
        if record is not None and os.path.exists(os.path.join(folder, CHECKPOINT_FILE)):
            return True
    return False


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


def run_jobs(fn, jobs, workers, device, threads, desc, setup, setup_args):
    """Run fn(job, context) for every job, in order, on `workers` processes (no more than there
    are jobs); returns ([fn's results], wall seconds, processes used). Each process first builds
    `context = setup(setup_args)`
    (e.g. loads the data) and uses `threads` threads; a job goes to the next free process.
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
    results = []
    try:
        with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
            while len(results) < len(jobs):
                try:
                    results.append(done.get(timeout=1.0))
                    bar.update(1)
                except queue.Empty:  # check that the workers are still alive
                    if not any(p.is_alive() for p in procs) and done.empty():
                        break
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


def run_sweep(configs, costs, name_fn, out_dir, roots, *, job, setup, setup_args, workers,
              threads, device, shard_spec=None, prepare=None, need_checkpoints=False):
    """Train the pending runs of `configs` (of this `--shard`, if given); returns the line
    that says what was done, or None if nothing was left to train. With `need_checkpoints`, a
    finished run whose best.pt is nowhere at hand (a published run whose checkpoint is not in
    git) is pending too: it is trained again into `out_dir`, with the same result.

    `prepare()` runs before any job. Jobs run seed by seed, longest first within a seed, so
    the first seeds of a sweep finish first and can be committed while the others train.
    """
    if shard_spec is not None:
        mine = shard(configs, costs, *shard_spec)
        print(f"shard {shard_spec[0]}/{shard_spec[1]}: {count(len(mine), 'run')} of {len(configs)}")
        costs = [costs[configs.index(c)] for c in mine]
        configs = mine
    todo = pending(configs, roots, out_dir, name_fn, need_checkpoints)
    if not todo:
        return None
    if prepare is not None:
        prepare()  # e.g. load the data once here, so an error is one line, not one per worker
    order = sorted(range(len(todo)), key=lambda i: (todo[i]["seed"], -costs[configs.index(todo[i])], i))
    results, wall, used = run_jobs(job, [todo[i] for i in order], workers, device, threads, "sweep",
                                   setup, setup_args)
    return (f"sweep: {summarize_jobs(results)} in {wall / 60:.1f} min wall time "
            f"({count(used, 'process', 'processes')} of {count(threads, 'thread')})")
