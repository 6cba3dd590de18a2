"""Run folders: names, records, the folder a run trains in, and where finished runs are found.

A run folder is named after what defines the run, ending in a digest of its whole config, so
two settings never share a folder. It holds `metrics.json` (config, per-epoch metrics, status,
summary) and `best.pt`; `last.pt` while it trains. Finished runs are looked up first in the
results committed with the code (`results/<exercise>/`), then in the run folder (`--out-dir`),
so a fresh clone does not retrain what the README shows.
"""
import glob
import hashlib
import json
import math
import os
import shutil

from lab.cli import check_writable, count
from lab.errors import UserError
from lab.files import (FolderLock, all_finite, load_checkpoint, read_json, remove_debris,
                       save_atomic, write_json_atomic, write_text_atomic)
from lab.kinds import FRACTION, Number, fields_problem

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "best.pt"
LAST_FILE = "last.pt"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
FINISHED = ("complete", "diverged")
EPOCH = Number(int, 1, 10 ** 6)
RECORD_FIELDS = {"config": dict, "meta": dict, "status": str, "epochs": list}
# a finished run's summary (absent if it diverged before its first validation)
SUMMARY_FIELDS = {"best_epoch": EPOCH, "best_val_acc": FRACTION, "test_acc": FRACTION,
                  "test_loss": Number(float, 0, float("inf")), "validation_only": bool}
STATUSES = ("running",) + FINISHED
LOSS, SECONDS = Number(float, 0, float("inf")), Number(float, 0, 10 ** 7)
# what each per-epoch field can be: an accuracy is a fraction, a loss and a time not negative
# (those training.fit writes; a script's own measures, e.g. a criterion's, are numbers)
EPOCH_FIELDS = {"train_acc": FRACTION, "val_acc": FRACTION, "train_loss": LOSS, "val_loss": LOSS,
                "seconds": SECONDS, "cpu_seconds": SECONDS, "lr": LOSS}
# --tensorboard: the tag each per-epoch field is logged under (the others under their own names)
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
                    "val_acc": "accuracy/val", "lr": "learning rate (end of epoch)"}
EVENTS_PREFIX = "events.out.tfevents."


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
    if os.path.commonpath([root, os.path.realpath(path)]) == root:
        return True
    # the same folder reached by another way (a bind mount, a second mount of the disk): the
    # published run is recognized by what it is, its device and inode, not by its path
    for candidate in (path, os.path.dirname(os.path.abspath(path))):
        published = os.path.join(root, os.path.basename(os.path.abspath(candidate)))
        try:
            if os.path.exists(published) and os.path.samefile(candidate, published):
                return True
        except OSError:
            pass
    try:
        return os.path.samefile(os.path.abspath(path), root)
    except OSError:
        return False


def read_record(folder, fields=None):
    """The metrics.json of a run folder (None if it has none), checked as a whole for what the code
    reads: the record's own schema, and `fields`, the schema a script declares for what its runs
    add (e.g. a baseline's image counts and times)."""
    path = os.path.join(folder, METRICS_FILE)
    remedy = f"delete the run folder {folder} and rerun to train it again"
    record = read_json(path, remedy)
    if record is None:
        return None
    problem = record_problem(record) or (fields and record["status"] == "complete"
                                         and fields_problem(record, fields))
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
        numbers = {k: EPOCH_FIELDS.get(k, (int, float)) for k in epoch if k != "epoch"}
        finite = {k: v for k, v in epoch.items() if not (isinstance(v, float) and not math.isfinite(v))}
        problem = fields_problem(finite, {"epoch": EPOCH, **{k: numbers[k] for k in finite if k in numbers}})
        # NaN and inf allowed (not range-checked): a diverged epoch's losses
        if problem:
            return f"epoch {i + 1}: {problem}"
    present = {k: v for k, v in SUMMARY_FIELDS.items() if k in record}
    validation_only = record.get("validation_only") is True
    if record["status"] == "complete" and "test_acc" not in record and not validation_only:
        return "a complete run without its test accuracy"
    problem = fields_problem(record, present)
    return f"its summary has {problem}" if problem else agreement_problem(record)


def agreement_problem(record):
    """What the fields of a record that are each well-formed say against one another: epochs
    numbered 1, 2, ...; a best epoch among them whose validation accuracy is the one recorded."""
    epochs = record["epochs"]
    if [e["epoch"] for e in epochs] != list(range(1, len(epochs) + 1)):
        return "its epochs are not numbered 1, 2, ..."
    if "best_epoch" in record and epochs:
        best = record["best_epoch"]
        if best > len(epochs):
            return f"its best epoch {best} is past its {len(epochs)} epochs"
        if "best_val_acc" in record and epochs[best - 1].get("val_acc") != record["best_val_acc"]:
            return f"its best validation accuracy is not that of its best epoch {best}"
    return None


def check_checkpoint_of_run(path, ckpt, remedy):
    """Refuse, in one line, a checkpoint whose config is not that of the run record beside it
    (a best.pt copied or swapped between run folders): its numbers would be shown as another
    network's. A checkpoint with no record beside it (a file passed by hand) is not checked."""
    record = read_record(os.path.dirname(os.path.abspath(path)))
    if record is not None and record["config"] != ckpt.get("config"):
        raise UserError(f"{path} is not the checkpoint of the run in its folder (its config differs from "
                        f"{METRICS_FILE}'s); {remedy}")


def find_finished(roots, name, config, fields=None):
    """(record, folder) of the finished run `name` with `config` in the first of `roots` that
    has it, or (None, None). A folder of that name with another config is an error."""
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        folder = os.path.join(root, name)
        record = read_record(folder, fields)
        if record is None:
            continue
        if record["config"] != config:
            raise UserError(f"{folder} holds a run whose config does not match its name; "
                            "delete that folder")
        if record["status"] in FINISHED:
            _tidy_if_free(folder)
            return record, folder
    return None, None


def _tidy(folder, finished):
    """Remove what a kill -9 left in a run folder whose lock this process holds: temporary files
    of dead writers (a write cut before its rename; a live one may be a script's write beside
    the run, as ex2_fcn's benchmark), and the last.pt of a run `finished` (killed between its
    'complete' and that removal)."""
    remove_debris(folder)
    if finished and os.path.exists(os.path.join(folder, LAST_FILE)):
        os.remove(os.path.join(folder, LAST_FILE))


def _tidy_if_free(folder):
    """_tidy a finished run's folder that no process holds (one that does is finishing it and
    tidies it itself); a folder this process cannot write (read-only results) stays as it is."""
    lock = FolderLock(folder)
    try:
        if lock.acquire():
            _tidy(folder, finished=True)
    except OSError:
        pass
    finally:
        lock.release()


class RunHeld(UserError):
    """Another process holds the run folder (it is training this run)."""


PROVENANCE = ("commit", "torch")  # meta that says which code ran, not what decides the numbers
# meta a start recorded before meta carried it is judged without: the data's signature, the CPU
# threads per process (before, only inside the hardware line) and the SHA-256 of files (*_sha256)
ADDED_META = ("data_signature", "threads")


def _same_numbers(meta):
    """The meta fields a resumed run must share with its start (data, hardware, threads)."""
    return {k: v for k, v in (meta or {}).items() if k not in PROVENANCE}


def resume_problem(then, now):
    """Why a run started with meta `then` cannot go on in a process of meta `now` and end as an
    uninterrupted run would (None if it can), with the way that works: CPU kernels sum in an
    order that depends on the thread count, and other data is another run. A start recorded
    before meta carried a data signature is judged by the rest."""
    then, now = _same_numbers(then), _same_numbers(now)
    for key in [k for k in now if k in ADDED_META or k.endswith("_sha256")]:
        if key not in then:
            now.pop(key)  # a start recorded before meta carried it is judged by the rest
    if then == now:
        return None
    if then.get("data_signature") != now.get("data_signature") or then.get("data") != now.get("data"):
        return (f"it was trained on other data ({then.get('data')}, signature "
                f"{str(then.get('data_signature'))[:12]}; this --data-dir holds {now.get('data')}, "
                f"{str(now.get('data_signature'))[:12]}): resume it with the --data-dir it started with")
    files = sorted(k for k in then.keys() | now.keys() if k.endswith("_sha256") and then.get(k) != now.get(k))
    if files:  # a file that shapes the run (a teacher, weights) is not the one it started with
        name = files[0][:-len("_sha256")]
        return (f"its {name} is not the file it started with (SHA-256 {str(then.get(files[0]))[:12]}, now "
                f"{str(now.get(files[0]))[:12]}): restore that file")
    if "threads" in then and "threads" in now and then["threads"] != now["threads"]:  # CPU sums' order
        return (f"it was trained with {count(then['threads'], 'thread')} per process, this process "
                f"has {now['threads']}: resume it with the command it started from, its --workers too")
    differ = ", ".join(sorted(k for k in then if then[k] != now.get(k)))
    return (f"it was trained on {then.get('hardware')} ({differ} differ), this process is "
            f"{now.get('hardware')}: resume it on that machine")


class RunFolder:
    """The folder a run trains in, used as `with RunFolder(...) as run:`: it holds the folder's
    lock while open (RunHeld if another process has it), and owns the record, the best and
    last checkpoints and the resume checks, so training.fit holds only the loop.

    metrics.json is rewritten atomically after every epoch; its `status` is 'running',
    'complete' or 'diverged'. `finished` is the saved record if the run had finished already.
    """

    def __init__(self, path, config, meta, arch, tensorboard=None, measures=dict):
        self.path, self.config, self.arch = path, config, arch
        self.measures = measures  # () -> the epoch's own measures of a script (e.g. a criterion's)
        # --tensorboard: each epoch's scalars also go to <tensorboard>/<this folder's name>/
        self.tensorboard = tensorboard and os.path.join(tensorboard, os.path.basename(path))
        self._writer, self._fresh = None, False
        self.record = {"config": config, "meta": meta, "status": "running", "epochs": []}
        self.best_val = -1.0
        self.finished = None
        self.best_path = os.path.join(path, CHECKPOINT_FILE)
        self.last_path = os.path.join(path, LAST_FILE)
        self._lock = FolderLock(path)

    def __enter__(self):
        if not self._lock.acquire():
            raise RunHeld(f"another process is training {self.path}; wait for it or use another --out-dir")
        self.finished, _ = find_finished([os.path.dirname(self.path)], os.path.basename(self.path),
                                         self.config)
        _tidy(self.path, self.finished is not None)
        return self

    def __exit__(self, *exc):
        if self._writer is not None:
            self._writer.close()
        if exc[0] is not None and not os.listdir(self.path):
            os.rmdir(self.path)  # interrupted before its first epoch: no empty folder stays
        self._lock.release()

    def resume(self, model, optimizer, scheduler, generator):
        """Restore an interrupted run from last.pt; returns the epochs it had finished (0 if none)."""
        if not os.path.exists(self.last_path):
            if os.path.exists(self.best_path):
                os.remove(self.best_path)  # a checkpoint of an interrupted earlier start is not this one's
            self._fresh = True  # an earlier start's TensorBoard events are not this run's either
            return 0
        state = self._checked_last()
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.last_path} does not fit this run ({type(e).__name__}); {self._restart}")
        self.record, self.best_val = state["record"], state["best_val"]
        print(f"{self.path}: resuming after epoch {len(self.record['epochs'])}")
        return len(self.record["epochs"])

    _restart = "delete it to restart this run from epoch 0"

    def _checked_last(self):
        """last.pt, refused in one line unless it is this run's, made the way this process runs."""
        remedy = self._restart
        state = load_checkpoint(self.last_path, remedy,
                                keys=("model", "optimizer", "generator", "record", "best_val"))
        saved = state["record"]
        if not isinstance(saved, dict) or saved.get("config") != self.config:
            raise UserError(f"{self.last_path} belongs to a run with other settings; {remedy}")
        problem = resume_problem(saved.get("meta"), self.record["meta"])
        if problem:
            raise UserError(f"{self.last_path} cannot resume here: {problem}; or {remedy}")
        problem = record_problem(saved)
        if problem or not isinstance(state["best_val"], float):
            raise UserError(f"{self.last_path} holds a damaged run record ({problem or 'best_val'}); "
                            f"{remedy}")
        if self._best_is_behind(state):  # killed between the last epoch's last.pt and its best.pt
            epochs = saved["epochs"]
            self._save_best(state["model"], len(epochs), state["best_val"])
        if state["best_val"] >= 0 and not os.path.exists(self.best_path):
            raise UserError(f"{self.best_path} is missing, although this run saved one (validation accuracy "
                            f"{state['best_val']:.4f}): the run cannot be finished without it; delete the "
                            f"run folder {self.path} and rerun to train it again")
        if os.path.exists(self.best_path):
            self._checked_best(state["best_val"])  # refused now, not after the remaining epochs
        return state

    def _best_is_behind(self, state):
        """True if last.pt's last epoch is the run's best but best.pt does not hold it yet (missing,
        or this run's earlier best): the one state a kill between commit_epoch's renames leaves."""
        epochs, best_val = state["record"]["epochs"], state["best_val"]
        if best_val < 0 or not epochs or epochs[-1].get("val_acc") != best_val:
            return False
        if not os.path.exists(self.best_path):
            return True
        remedy = f"delete the run folder {self.path} and rerun to train it again"
        best = load_checkpoint(self.best_path, remedy, keys=("model", "config", "val_acc", "epoch"))
        return (best["config"] == self.config and isinstance(best["val_acc"], float)
                and best["val_acc"] < best_val and best["epoch"] < len(epochs))

    def _checked_best(self, best_val):
        """best.pt, refused in one line unless it is the checkpoint this run saved (its settings,
        and the validation accuracy the run recorded for its best epoch): a best.pt copied in
        from another run would otherwise be tested and recorded as this run's."""
        remedy = f"delete the run folder {self.path} and rerun to train it again"
        best = load_checkpoint(self.best_path, remedy, keys=("model", "config", "val_acc", "epoch"))
        if best["config"] != self.config or best["val_acc"] != best_val:
            raise UserError(f"{self.best_path} is not this run's checkpoint (other settings, or a validation "
                            f"accuracy this run never recorded as its best); {remedy}")
        return best

    def log_epoch(self, metrics, diverged=False):
        """Record an epoch, with the script's own `measures`; `diverged` marks the run so."""
        metrics = {**metrics, **self.measures()}
        self.record["epochs"].append(metrics)
        if diverged:
            self.record["status"] = "diverged"
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))
        if self.tensorboard:
            self._log_scalars(metrics)

    def _log_scalars(self, metrics):
        if self._writer is None:
            if self._fresh and os.path.isdir(self.tensorboard):
                for name in os.listdir(self.tensorboard):
                    if name.startswith(EVENTS_PREFIX):
                        os.remove(os.path.join(self.tensorboard, name))
            self._writer = tensorboard_writer(self.tensorboard)
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(TENSORBOARD_TAGS.get(key, key), value, metrics["epoch"])
        self._writer.flush()

    def commit_epoch(self, model, optimizer, scheduler, generator, epoch, val_acc):
        """End an epoch at one atomic step, the rename of last.pt (weights, optimizer, schedule,
        RNG, the record and the best validation accuracy): from then on the epoch is the run's
        state. If it beat every earlier epoch on validation (and its weights are finite), best.pt
        follows; a kill between the two renames is repaired at resume, since that best epoch's
        weights are then last.pt's own."""
        improved = val_acc > self.best_val and all_finite(model.state_dict())
        if improved:
            self.best_val = val_acc
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler else None,
                     "generator": generator.get_state(), "record": self.record, "best_val": self.best_val},
                    self.last_path)
        if improved:
            self._save_best(model.state_dict(), epoch, val_acc)

    def _save_best(self, state_dict, epoch, val_acc):
        save_atomic({"model": state_dict, "arch": self.arch, "config": self.config, "epoch": epoch,
                     "val_acc": val_acc}, self.best_path)

    def load_best(self, model):
        """Load best.pt's weights into `model`; False if the run never saved one."""
        if not os.path.exists(self.best_path):
            return False
        best = self._checked_best(self.best_val)
        model.load_state_dict(best["model"])
        self.record.update(best_epoch=best["epoch"], best_val_acc=best["val_acc"])
        return True

    def finish(self, test=None, validation_only=False):
        """Close the record (complete, unless diverged) with the test read; last.pt goes. A run
        `validation_only` (a selection's candidate) is complete without a test read, and says so."""
        if self.record["status"] == "running":
            self.record["status"] = "complete"
        if validation_only:
            self.record["validation_only"] = True
        if test is not None:  # a classifier with no loss (k-NN) gives only its accuracy
            self.record.update({f"test_{k}": v for k, v in test.items() if k in ("acc", "loss")})
        write_json_atomic(self.record, os.path.join(self.path, METRICS_FILE))
        if os.path.exists(self.last_path):
            os.remove(self.last_path)  # the run is finished: best.pt and metrics.json are what stays
        return self.record


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard")
    return SummaryWriter


def check_tensorboard(folder):
    """--tensorboard `folder` (if given) can be logged to: the package is there and the folder
    writable, said in one line before any data is read or epoch trained."""
    if folder:
        _summary_writer()
        try:
            folder.encode("utf-8")
        except UnicodeEncodeError:  # TensorBoard writes its event files' names as UTF-8
            name = folder.encode("utf-8", "surrogateescape")
            raise UserError(f"--tensorboard {name!r}: TensorBoard needs a folder whose name is UTF-8 text; "
                            "pass another")
        check_writable(folder)
        # a full disk says so now, not from TensorBoard's writer thread after the first epoch
        probe = os.path.join(folder, f"{EVENTS_PREFIX}probe")
        write_text_atomic("x" * 4096, probe)
        os.remove(probe)


def tensorboard_writer(folder):
    """A TensorBoard SummaryWriter on `folder`; one line if the tensorboard package is missing."""
    return _summary_writer()(folder)


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


def unique(configs):
    """`configs` without repeats (e.g. a depth given twice), in order."""
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def collect(configs, roots, name_fn, fields=None):
    """[(config, record, folder)] of the finished runs of `configs` found in `roots`, each record
    checked against the script's schema `fields` too (see read_record)."""
    found = []
    for c in configs:
        record, folder = find_finished(roots, name_fn(c), c, fields)
        if record is not None:
            found.append((c, record, folder))
    return found


def unfinished(configs, found, name_fn):
    """The run names of `configs` that `found` ([(config, record, folder)], from collect) lacks:
    a caption names the runs it is missing, not only their count."""
    done = {name_fn(c) for c, _, _ in found}
    return [name_fn(c) for c in configs if name_fn(c) not in done]


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
