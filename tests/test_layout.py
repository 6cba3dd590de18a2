"""The code a student reads: the optimizer step a few calls below a script's main, short functions,
small signatures, and the machinery (renames, locks, temporary files, pools) only in lab/."""
import ast
import inspect
import os

import pytest

import training
from conftest import ROOT

MAX_FRAMES_TO_STEP = 4   # project frames from a script's main down to loss.backward()
MAX_FUNCTION_LINES = 50
MAX_PARAMETERS = 8       # self, *args and **kwargs not counted
# the machinery by its system calls, and by lab's own classes for it (a script that took a folder's
# lock by the class would be using it just the same)
MACHINERY = ("os.replace", "os.rename", "tempfile", "fcntl", "flock", "multiprocessing", "FolderLock",
             "save_atomic", "run_jobs")


def project_sources():
    """Every non-test Python file of the repository."""
    for folder in (ROOT, os.path.join(ROOT, "lab")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def functions(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_long_or_takes_many_parameters():
    too_long, too_wide = [], []
    for path in project_sources():
        for fn in functions(path):
            lines = fn.end_lineno - fn.lineno + 1
            args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            params = [a.arg for a in args if a.arg != "self"]
            where = f"{os.path.relpath(path, ROOT)}:{fn.name}"
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{where} ({lines} lines)")
            if len(params) > MAX_PARAMETERS:
                too_wide.append(f"{where} ({len(params)} parameters)")
    assert not too_long and not too_wide, (too_long, too_wide)


def test_only_the_package_renames_locks_or_pools():
    """Atomic renames, file locks, temporary files and process pools live in lab/ (bench.py,
    which times pools of its own, aside)."""
    offenders = []
    for path in project_sources():
        if os.path.dirname(path) != ROOT or os.path.basename(path) == "bench.py":
            continue
        with open(path) as f:
            text = f.read()
        offenders += [f"{os.path.basename(path)}: {m}" for m in MACHINERY if m in text]
    assert not offenders


def test_the_optimizer_step_is_a_few_calls_below_main(mnist_dir, tmp_path, monkeypatch):
    import ex1_mlp
    depth = {}

    def recording(*args, **kwargs):
        frames = [f for f in inspect.stack() if os.path.abspath(f.filename).startswith(ROOT)
                  and "/tests/" not in f.filename]
        names = [f.function for f in frames]
        main = names.index("main")
        depth["frames"] = names[:main][::-1]  # main's callees, outermost first (this wrapper is not one)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_one_epoch", recording)
    argv = ["--depth", "2", "--epochs", "1", "--val-size", "50", "--data-dir", mnist_dir,
            "--out-dir", str(tmp_path), "--device", "cpu"]
    with pytest.raises(KeyboardInterrupt):
        ex1_mlp.main(ex1_mlp.get_args(argv))
    # below main: its own train, fit, train_one_epoch (here the recording wrapper), backward inside it
    assert depth["frames"][:2] == ["train", "fit"], depth["frames"]
    assert len(depth["frames"]) + 1 <= MAX_FRAMES_TO_STEP, depth["frames"]
