"""Files never half-written, and files read back checked: atomic writes, checked reads, folder locks.

Writes go to a temporary file in the same folder, are fsynced and renamed. Reads of a file
another machine or person may have made check it and name it, in one line, when it is not
what it should be. Checkpoints hold only tensors, numbers, strings, lists and dicts, so
`torch.load(..., weights_only=True)` reads them and no pickle can run code.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
import zipfile

import torch

from lab.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two processes must not share an --out-dir
    fcntl = None


TMP_PREFIX = ".tmp-"  # then the writer's machine and process id (.gitignore: .tmp-*)
# a temporary file of another machine (or pid namespace) sharing the folder: its writer cannot be
# asked whether it lives, so it is removed only once no write could still be going on
FOREIGN_DEBRIS_SECONDS = 24 * 3600


def _machine():
    """8 hex digits naming this machine and pid namespace: a process id means something only there."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.blake2b(f"{socket.gethostname()} {namespace}".encode(), digest_size=4).hexdigest()


MACHINE = _machine()


def temporary_prefix():
    """The start of this process's temporary files: .tmp-<machine>.<pid>-"""
    return f"{TMP_PREFIX}{MACHINE}.{os.getpid()}-"


def _writer_alive(name, folder="."):
    """False if the temporary file `name` is a dead process's: one of this machine whose process id
    no longer runs, one of another machine older than FOREIGN_DEBRIS_SECONDS, or one of no process
    id at all (a write of older code)."""
    writer = name[len(TMP_PREFIX):].split("-")[0]
    machine, _, pid = writer.rpartition(".")
    if machine and machine != MACHINE:
        try:
            return time.time() - os.path.getmtime(os.path.join(folder, name)) < FOREIGN_DEBRIS_SECONDS
        except OSError:
            return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        pass  # another user's live process
    return True


def remove_debris(folder):
    """Delete what killed writes left in `folder` (kill -9 between a temporary file and its
    rename); a live process's temporary file is its own to finish. Every atomic write calls
    this, so the next run that writes a folder (figures/, a run folder, the CIFAR cache's
    folder) clears it."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(TMP_PREFIX) and not _writer_alive(name, folder):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass  # not ours to remove (read-only folder): the write below says what is wrong


class WriteError(UserError):
    """A file could not be written (full disk, file-size limit, read-only folder): the message
    names the file and the reason; the file as it was before is intact."""


def _atomic(path, write):
    """Write to a temporary file in the same folder, then rename: never a half-written file.
    A failed write raises WriteError naming `path` and leaves what was there before."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        remove_debris(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=temporary_prefix())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
        os.replace(tmp, path)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        hint = " (free some space or raise the limit, then rerun)" if e.errno in (errno.ENOSPC, errno.EFBIG,
                                                                                  errno.EDQUOT) else ""
        raise WriteError(f"cannot write {path}: {reason}{hint}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj, path):
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def write_text_atomic(text, path):
    _atomic(path, lambda f: f.write(text.encode()))


def save_atomic(obj, path):
    """torch.save, atomically. Serialized in memory first: torch's own writer turns a full disk
    into a RuntimeError without its errno, a plain write keeps it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic(path, lambda f: f.write(buffer.getbuffer()))


def savefig_atomic(fig, path, **kwargs):
    """A matplotlib figure written like every other result: whole, or not at all. A failed write
    (full disk, file-size limit) leaves the figure that was there before."""
    fmt = os.path.splitext(path)[1][1:] or "png"
    _atomic(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


MAX_JSON_BYTES = 64 * 2 ** 20  # far more than any record or table this code writes


def check_regular_file(path, remedy):
    """Refuse, before opening it, a path that is there but is no regular file (a FIFO would block
    the read for ever, a device or a folder is no result)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{path} is not a regular file (a folder, FIFO or device); {remedy}")


def read_json(path, remedy):
    """The JSON object in `path`, None if there is no such file; a one-line error naming the
    file and `remedy` (what to do) if it is unreadable, too large or deep, or not a JSON object."""
    check_regular_file(path, remedy)
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise UserError(f"{path} is larger than any file this code writes; {remedy}")
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # no such file, or a file where a folder belongs
        return None
    except RecursionError:
        raise UserError(f"{path} is nested deeper than any file this code writes; {remedy}")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}); {remedy}")
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a JSON object; {remedy}")
    return obj


def _damaged_member(path):
    """The first member of a torch.save zip archive whose bytes fail their CRC-32 (torch.load does
    not check them: a flipped bit in a weight loads silently), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a zip archive (or unreadable): torch.load says what it is


def load_checkpoint(path, remedy, map_location="cpu", keys=("model",)):
    """torch.load with weights_only=True: a file that is corrupt, empty, of another format or
    would run code is refused with a one-line error naming it and `remedy`."""
    check_regular_file(path, remedy)
    damaged = _damaged_member(path)
    if damaged:
        raise UserError(f"{path} is damaged ({damaged} fails its CRC check: a changed byte); {remedy}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} not found; {remedy}")
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint this code can read safely "
                        f"({type(e).__name__}); {remedy}")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; {remedy}")
    return state


def file_sha256(path):
    """The SHA-256 of a file's bytes, hex: which file a saved result was computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


LOCK_ANNOUNCE_SECONDS = 10  # a wait for a folder's lock is announced after this long
LOCK_POLL_SECONDS = 0.5


class FolderLock:
    """An exclusive advisory lock on a folder, held while a process writes it.

    `acquire()` returns False at once if another process holds it; the lock goes with its
    process, so a killed run leaves nothing stale behind.
    """

    def __init__(self, folder):
        self.folder = folder
        self.fd = None

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        self.fd = os.open(self.folder, os.O_RDONLY)
        if fcntl is None:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def wait(self, announce_after=LOCK_ANNOUNCE_SECONDS, poll=LOCK_POLL_SECONDS):
        """Acquire, waiting for the process that holds the lock; after `announce_after` seconds
        say once, on stderr, which process it is and its state (a stopped one waits for ever)."""
        started, announced = time.monotonic(), False
        while not self.acquire():
            if not announced and time.monotonic() - started > announce_after:
                print(f"waiting for {self.holder()}, which holds the lock of {self.folder}", file=sys.stderr,
                      flush=True)
                announced = True
            time.sleep(poll)

    @contextlib.contextmanager
    def waiting(self):
        """`with lock.waiting():` holds the lock for the block, waiting for it first (wait)."""
        self.wait()
        try:
            yield
        finally:
            self.release()

    def holder(self):
        """'process 1234 (state T: stopped)', from /proc/locks, or 'another process' elsewhere."""
        try:
            st = os.stat(self.folder)
            inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
            with open("/proc/locks") as f:
                pids = [line.split()[4] for line in f if "FLOCK" in line and line.split()[5] == inode]
            with open(f"/proc/{pids[0]}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            words = {"T": "stopped", "t": "stopped", "R": "running", "S": "sleeping", "D": "waiting on disk",
                     "Z": "a zombie"}
            return f"process {pids[0]} (state {state}: {words.get(state, 'unknown')})"
        except (OSError, IndexError, ValueError):
            return "another process"

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def all_finite(state_dict):
    """True if every floating-point tensor of a state dict is finite (no NaN, no inf)."""
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())
