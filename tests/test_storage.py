import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from lab.files import FolderLock, load_checkpoint, read_json, save_atomic
from lab.errors import UserError


class KilledWhileWriting:
    def __reduce__(self):
        raise KeyboardInterrupt  # stands for a kill in the middle of torch.save


def test_checkpoint_interrupted_mid_write_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "best.pt"
    save_atomic({"epoch": 1, "weights": torch.arange(1000.0)}, path)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2, "weights": torch.zeros(1000), "bad": KilledWhileWriting()}, path)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 1 and torch.equal(saved["weights"], torch.arange(1000.0))
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary file left behind


class RunsCode:
    """What a crafted checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(UserError, match="last.pt is not a checkpoint this code can read safely"):
        load_checkpoint(path, "delete it")
    assert not marker.exists()
    # and the same file loaded without weights_only really would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_corrupt_checkpoints_are_named_with_what_to_do(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="best.pt is not a checkpoint .*; delete the folder"):
        load_checkpoint(path, "delete the folder")
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="lacks model"):
        load_checkpoint(path, "delete the folder")


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 3]", "holds a list"), ('{"status": "compl', "unreadable"),
])
def test_corrupt_json_is_named_with_what_to_do(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(UserError, match=f"{message}.*; delete it"):
        read_json(path, "delete it")
    assert read_json(tmp_path / "missing.json", "delete it") is None


@pytest.mark.slow
def test_a_folder_lock_is_held_by_one_process_and_dies_with_it(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from lab.files import FolderLock; "
        "assert FolderLock(sys.argv[2]).acquire(); print('held', flush=True); time.sleep(60)"),
        ROOT, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FolderLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(folder)
    assert lock.acquire()  # a killed holder leaves no stale lock
    lock.release()


def test_a_temporary_of_another_machine_is_left_to_it_until_it_is_a_day_old(tmp_path):
    """Temporaries carry their machine (host and pid namespace) with their process id: in a folder
    two machines share, a pid alive or dead here says nothing of the other's writer."""
    import time
    from lab import files
    folder = tmp_path
    other = "0" * 8 if files.MACHINE != "0" * 8 else "1" * 8
    fresh, stale = folder / f".tmp-{other}.1-a", folder / f".tmp-{other}.999999-b"
    dead_here = folder / f".tmp-{files.MACHINE}.{2 ** 22 + 1}-c"
    for p in (fresh, stale, dead_here):
        p.write_bytes(b"half")
    old = time.time() - files.FOREIGN_DEBRIS_SECONDS - 60
    os.utime(stale, (old, old))
    files.write_json_atomic({"a": 1}, str(folder / "x.json"))
    assert fresh.exists() and not stale.exists() and not dead_here.exists()
    assert files.temporary_prefix().startswith(f".tmp-{files.MACHINE}.{os.getpid()}-")


def test_a_wait_for_a_lock_held_by_a_stopped_process_says_whose_it_is(tmp_path, capsys):
    """Two commands writing one folder: the second waits, and after a while says which process
    holds the lock and that it is stopped (it would wait for ever without a word)."""
    import signal
    import threading
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        lock = FolderLock(str(tmp_path))
        threading.Timer(1.0, lambda: os.kill(holder.pid, signal.SIGKILL)).start()
        lock.wait(announce_after=0.2, poll=0.05)
        lock.release()
        err = capsys.readouterr().err
        assert f"waiting for process {holder.pid} (state T: stopped)" in err and str(tmp_path) in err
    finally:
        holder.kill()
        holder.wait()
