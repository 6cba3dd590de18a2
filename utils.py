"""Shared machinery: CLI errors, device and seeds, the training loop, run folders, sweeps."""
import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- CLI

class UserError(Exception):
    """A problem the user can fix (bad flag, missing file): reported in one line, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default and keeps the usage examples of a script's docstring as written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`prog: error: message`, exit code 2) and defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        kwargs.setdefault("help", "(default: %(default)s)")  # no help would hide the default
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main, args, prog):
    """Call main(args); turn user-facing errors into one line on stderr and exit code 2."""
    from data import DataError
    try:
        return main(args)
    except (UserError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a folder that cannot be written, a full disk: the user's to fix
        print(f"{prog}: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; completed runs are saved, rerun to resume", file=sys.stderr)
        sys.exit(130)


def check_positive(parser, args, *names):
    """parser.error (one line, exit 2) for the first of `names` that is not > 0 (NaN included)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


# ----------------------------------------------------------------------------- device, seeds

def get_device(name="auto"):
    """'auto' picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def hardware(device):
    """A short description of what ran the code, for figure captions and results."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({platform.machine()}, {count(os.cpu_count(), 'core')}, {count(threads, 'thread')} per process)"


def seed_everything(seed):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- training loop

def _loss_and_correct(logits, y):
    loss = F.cross_entropy(logits, y)
    return loss, (logits.argmax(-1) == y).sum()


def train_one_epoch(model, batches, optimizer, scheduler=None, progress=None):
    """One pass over `batches` of (x, y); returns {'loss', 'acc'} as floats.

    Sums stay on the device (no .item() per step) so the loop never waits on them.
    `scheduler` is stepped every batch; `progress` is a tqdm bar or None.
    """
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        loss, right = _loss_and_correct(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum = loss_sum + loss.detach() * y.shape[0]
        correct = correct + right
        n += y.shape[0]
        if progress is not None:
            progress.update(1)
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


@torch.no_grad()
def evaluate(model, batches):
    """Mean loss and accuracy of `model` over `batches`; returns {'loss', 'acc'} as floats."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        loss, right = _loss_and_correct(model(x), y)
        loss_sum = loss_sum + loss * y.shape[0]
        correct = correct + right
        n += y.shape[0]
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


def diverged(metrics):
    return not math.isfinite(metrics["loss"])


EVAL_BATCH_SIZE = 1000  # evaluation keeps no activations for backward, so it takes big batches


def fit(model, data, optimizer, run, *, epochs, batch_size, generator, scheduler=None,
        train_transform=None, eval_transform=None, progress=True, desc="train"):
    """Train for `epochs`, validate after each, keep the best-validation checkpoint.

    The test set is read once, at the end, by the checkpoint that validation picked.
    After every epoch the run folder holds `last.pt` (model, optimizer, scheduler, RNG),
    so an interrupted run resumes from its last finished epoch. A non-finite training
    loss stops the run and records it as diverged. Returns the run's final record.
    """
    from tqdm import tqdm
    from data import batches, epoch_order

    # vanishing gradients of deep plain nets reach denormal floats, which are slow on CPUs
    torch.set_flush_denormal(True)
    device = data.train.y.device
    best_path, last_path = os.path.join(run.path, CHECKPOINT_FILE), os.path.join(run.path, LAST_FILE)
    start_epoch, best_val = _resume(last_path, run, model, optimizer, scheduler, generator)
    if start_epoch == 0 and os.path.exists(best_path):
        os.remove(best_path)  # a checkpoint of an earlier run must never stand for this one
    steps = math.ceil(len(data.train) / batch_size)
    status = "complete"
    bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc=desc, unit="step",
               disable=not progress, dynamic_ncols=True)
    for epoch in range(start_epoch + 1, epochs + 1):
        started = time.perf_counter()
        order = epoch_order(len(data.train), generator, device)
        train = train_one_epoch(model, batches(data.train, batch_size, order, train_transform),
                                optimizer, scheduler, bar)
        if diverged(train):
            status = "diverged"
            run.log_epoch(epoch=epoch, train_loss=train["loss"], train_acc=train["acc"])
            break
        val = evaluate(model, batches(data.val, EVAL_BATCH_SIZE, transform=eval_transform))
        run.log_epoch(epoch=epoch, train_loss=train["loss"], train_acc=train["acc"],
                      val_loss=val["loss"], val_acc=val["acc"], seconds=time.perf_counter() - started)
        bar.set_postfix(train_loss=f"{train['loss']:.3f}", val_acc=f"{val['acc']:.4f}")
        if val["acc"] > best_val:
            best_val = val["acc"]
            save_atomic({"model": model.state_dict(), "config": run.config, "epoch": epoch,
                         "val_acc": val["acc"]}, best_path)
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler else None,
                     "generator": generator.get_state(), "record": run.record,
                     "best_val": best_val}, last_path)
    bar.close()
    summary = {}
    if os.path.exists(best_path):
        best = torch.load(best_path, map_location=device)
        model.load_state_dict(best["model"])
        test = evaluate(model, batches(data.test, EVAL_BATCH_SIZE, transform=eval_transform))
        summary = {"best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
                   "test_acc": test["acc"], "test_loss": test["loss"]}
    run.finish(status, **summary)
    if os.path.exists(last_path):
        os.remove(last_path)  # the run is finished: best.pt and metrics.json are what stays
    return run.record


def _resume(last_path, run, model, optimizer, scheduler, generator):
    """Restore the state of an interrupted run; returns (epochs done, best validation acc)."""
    state = None
    if os.path.exists(last_path):
        try:
            state = torch.load(last_path, map_location="cpu", weights_only=False)
        except Exception:
            state = None  # written atomically, so only a foreign file lands here: start over
    if state is None or state["record"].get("config") != run.config:
        return 0, -1.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    run.record = state["record"]
    return len(run.record["epochs"]), state["best_val"]


# ----------------------------------------------------------------------------- files

def _atomic(path, write):
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj, path):
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def write_text_atomic(text, path):
    _atomic(path, lambda f: f.write(text.encode()))


def save_atomic(obj, path):
    _atomic(path, lambda f: torch.save(obj, f))


def update_readme(fig_dir, name, text):
    """Put `text` between `<!-- name -->` and `<!-- /name -->` in the README beside `fig_dir`.

    The README shows the tables the code wrote, never numbers typed by hand; a README
    without the markers (or none at all, as in tests) is left alone.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(fig_dir)), "README.md")
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    try:
        with open(path) as f:
            readme = f.read()
    except OSError:
        return
    if begin in readme and end in readme:
        head, rest = readme.split(begin, 1)
        write_text_atomic(head + begin + "\n" + text + rest[rest.index(end):], path)


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- run folders

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "best.pt"
LAST_FILE = "last.pt"


class Run:
    """A run folder: `config` (what defines the run), per-epoch metrics and a final summary.

    metrics.json is rewritten atomically after every epoch; its `status` is 'running',
    'complete' or 'diverged'. A finished run ('complete' or 'diverged') is never redone.
    """

    def __init__(self, path, config, meta=None):
        self.path = path
        self.config = config
        self.record = {"config": config, "meta": meta or {}, "status": "running", "epochs": []}

    @staticmethod
    def finished(path, config):
        """True if `path` holds a finished run; an error if it ran with another config."""
        record = read_json(os.path.join(path, METRICS_FILE))
        if record is None:
            return False
        if record.get("config") != config:
            diff = {k: (record.get("config", {}).get(k), v) for k, v in config.items()
                    if record.get("config", {}).get(k) != v}
            raise UserError(f"{path} holds a run with other settings {diff} (saved, now); "
                            "use another --out-dir or delete that folder")
        return record["status"] in ("complete", "diverged")

    def log_epoch(self, **metrics):
        self.record["epochs"].append(metrics)
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))

    def finish(self, status, **summary):
        self.record.update(status=status, **summary)
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))


def load_runs(root):
    """{run name: record} for every finished run below `root`."""
    runs = {}
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            record = read_json(os.path.join(root, name, METRICS_FILE))
            if record and record["status"] in ("complete", "diverged"):
                runs[name] = record
    return runs


def collect_runs(out_dir, configs, run_name, key, command):
    """{key(config): [records]} of the finished runs of `configs` in `out_dir`, for tables and figures."""
    runs = load_runs(out_dir)
    found = {}
    for c in configs:
        record = runs.get(run_name(c))
        if record is not None and record["config"] == c:
            found.setdefault(key(c), []).append(record)
    if not found:
        raise UserError(f"no finished runs in {out_dir} for these settings; run `{command}` first")
    return found


def count(n, noun, plural=None):
    """'1 run', '2 runs': numbers the user reads, in words that agree with them."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def pending_runs(configs, out_dir, run_name):
    """The configs with no finished run in `out_dir` (an error if one ran with other settings)."""
    todo = [c for c in configs if not Run.finished(os.path.join(out_dir, run_name(c)), c)]
    resuming = sum(os.path.exists(os.path.join(out_dir, run_name(c), LAST_FILE)) for c in todo)
    print(f"sweep: {count(len(configs), 'run')}, {len(configs) - len(todo)} already finished, "
          f"{len(todo)} to train" + (f" ({resuming} of them resume from the last epoch they finished)"
                                     if resuming else ""))
    return todo


def print_result(record, run_dir):
    """The end of a single run: what it reached and where its checkpoint is."""
    if record["status"] == "diverged":
        print(f"diverged (non-finite training loss) at epoch {len(record['epochs'])}")
    if record.get("test_acc") is not None:
        print(f"best validation accuracy {record['best_val_acc']:.4f} at epoch {record['best_epoch']}; "
              f"test accuracy {record['test_acc']:.4f}; checkpoint {os.path.join(run_dir, CHECKPOINT_FILE)}")
    seconds = epoch_seconds(record)
    if seconds is not None:
        print(f"{seconds:.3g} s per epoch (training and validation)")


def save_figure(fig, caption, path, caption_height=0.03):
    """Every figure says what made it: the caption goes at the bottom, then the file is written."""
    import matplotlib.pyplot as plt
    fig.text(0.01, 0.005, caption, fontsize=6)
    fig.tight_layout(rect=(0, caption_height, 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_result(record):
    """A run's result: the test accuracy of its best-validation checkpoint (None if it has none)."""
    return record.get("test_acc")


def epoch_seconds(record):
    """A run's mean wall time per epoch (training and validation), None if it was not recorded."""
    seconds = [e["seconds"] for e in record["epochs"] if "seconds" in e]
    return sum(seconds) / len(seconds) if seconds else None


def finished_results(records, key=run_result):
    """(values, number diverged): the one rule every table and figure uses for diverged runs.

    A run that diverged keeps the result of its best-validation checkpoint if it had one;
    a run with no result (diverged before its first validation) is left out of the mean,
    and the caller shows how many runs diverged next to it.
    """
    values = [key(r) for r in records]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return values, sum(r["status"] == "diverged" for r in records)


def format_result(records, key=run_result, digits=3):
    """A table cell: 'mean ± std' over the runs with a result, '(n diverged)' when some diverged."""
    values, n_diverged = finished_results(records, key)
    cell = format_mean_std(values, digits) if values else "-"
    return cell + (f" ({n_diverged} diverged)" if n_diverged else "")


def format_mean_std(values, digits=3):
    """'mean ± std' of `values`, as every table of the repository shows a result."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def mean_std(values):
    """(mean, std) with the sample std (n-1); std is 0 for a single value."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------- sweeps

def _exit_with_parent(parent_pid):
    """Poll the parent: a killed sweep must not leave workers writing its run folders."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _sweep_worker(fn, jobs, done, threads, setup, setup_args, parent_pid):
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    torch.set_num_threads(threads)
    context = setup(setup_args)
    for job in jobs:
        fn(job, context)
        done.put(None)


def run_jobs(fn, jobs, costs, workers, desc, setup, setup_args):
    """Run fn(job, context) for every job on `workers` processes; returns the wall time.

    Each worker first builds `context = setup(setup_args)` (e.g. loads the data) once.
    A progress bar counts finished jobs.

    The models of these exercises are small, so per-step overhead dominates and one
    single-threaded process per core beats one process using both cores. Jobs are
    spread so every worker gets about the same total cost (longest first).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        context = setup(setup_args)
        for job in tqdm(jobs, desc=desc, unit="run"):
            fn(job, context)
        return time.perf_counter() - start
    shards, loads = [[] for _ in range(workers)], [0.0] * workers
    for job, cost in sorted(zip(jobs, costs), key=lambda jc: -jc[1]):
        i = loads.index(min(loads))
        shards[i].append(job)
        loads[i] += cost
    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no inherited threads or state
    done = ctx.Queue()
    threads = max(1, torch.get_num_threads() // workers)
    procs = [ctx.Process(target=_sweep_worker, args=(fn, shard, done, threads, setup, setup_args, os.getpid()),
                         daemon=True)
             for shard in shards]
    for p in procs:
        p.start()
    try:
        with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
            while bar.n < len(jobs):
                try:
                    done.get(timeout=1.0)
                    bar.update(1)
                except Exception:  # queue.Empty: check that the workers are still alive
                    if not any(p.is_alive() for p in procs) and done.empty():
                        break
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    if any(p.exitcode != 0 for p in procs):
        raise UserError("a sweep worker failed (its error is printed above); rerun to resume")
    return time.perf_counter() - start
