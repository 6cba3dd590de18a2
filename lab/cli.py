"""Command-line plumbing of every script: argparse with one-line errors, checked numeric flags, run_cli."""
import argparse
import errno
import os
import signal
import sys

from lab.errors import DataError, UserError
from lab.kinds import MAX_WORKERS, SHARD, count_flag


DEVICES = ("auto", "cpu", "cuda", "mps")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each real default once and keeps the usage examples of a script's docstring."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help  # a switch, or a help text that explains its default itself
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`prog: error: message`, exit code 2) and defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    # the flags every script shares, declared once (SHARED_FLAGS below names them)
    def add_device_flag(self):
        """--device (utils.get_device reads it)."""
        self.add_argument("--device", default="auto", choices=DEVICES,
                          help="auto: CUDA if available, else Apple MPS, else the CPU")

    def add_tensorboard_flag(self):
        """--tensorboard (lab.runs.RunFolder logs to it)."""
        self.add_argument("--tensorboard", default=None, metavar="DIR",
                          help="also log each run's per-epoch losses, accuracies and learning rate for "
                               "TensorBoard, in DIR/<run folder name>/ (watch: tensorboard --logdir DIR)")

    def add_output_flags(self, exercise):
        """Where runs, tables and figures go, and --plot-only, which redraws them."""
        self.add_argument("--out-dir", default=os.path.join("runs", exercise),
                          help="one folder per run below this")
        self.add_argument("--fig-dir", default=None,
                          help="where tables and figures go (default: figures/ for the README's settings, "
                               "else <out-dir>/figures)")
        self.add_argument("--plot-only", action="store_true",
                          help="redraw the tables and figures from saved runs")

    def add_workers_flag(self):
        """--workers: the processes of a sweep (lab.sweeps.default_workers reads 0)."""
        self.add_argument("--workers", type=count_flag(MAX_WORKERS, low=0), default=0,
                          help="processes (0: one single-thread process per core on a CPU, 1 on a GPU)")

    def add_run_flags(self, exercise):
        """The flags of a script of single runs and sweeps: add_output_flags, --force, --shard,
        --workers and --tensorboard."""
        self.add_output_flags(exercise)
        self.add_argument("--force", action="store_true",
                          help="retrain a finished single run (its result is deleted)")
        self.add_argument("--shard", type=SHARD, default=None, metavar="K/N",
                          help="train only the K-th (0-based) of N disjoint parts of the sweep")
        self.add_workers_flag()
        self.add_tensorboard_flag()


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a cluster scheduler's stop) ends like Ctrl-C


def torchvision_problem():
    """None if torchvision loads beside this torch, else one line naming both versions and the fix.

    A CPU torch beside a CUDA torchvision, or a pair from two pip resolutions, fails inside
    torchvision's operator registration (`operator torchvision::nms does not exist`), far from
    its cause; every script and the tests check it first."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # RuntimeError of the registration, ImportError, a broken install
        from importlib import metadata
        versions = []
        for package in ("torch", "torchvision"):
            try:
                versions.append(f"{package} {metadata.version(package)}")
            except metadata.PackageNotFoundError:
                versions.append(f"no {package}")
        reason = (str(e).splitlines() or [type(e).__name__])[0][:80]
        return (f"{' and '.join(versions)} do not work together ({reason}); install both from one "
                "resolution: pip install -r requirements.txt in a fresh virtual environment")
    return None


# what PyTorch's allocators say when memory runs out (the CPU's, CUDA's, Apple's MPS)
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Out of memory", "MPS backend out of memory")


def _usable_streams():
    """Output that never fails the command: a closed stderr (`2>&-`) is replaced by stdout, so
    errors and progress are still said; a character the terminal's encoding lacks (LC_ALL=C)
    is written escaped (the files this code writes are UTF-8 whatever the locale)."""
    if sys.stderr is None:
        sys.stderr = sys.stdout or open(os.devnull, "w")
    if sys.stdout is None:
        sys.stdout = sys.stderr
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_cli(main, args, prog, interrupted="every finished epoch is saved; rerun the command to resume"):
    """Call main(args); user-facing errors become one line on stderr with exit code 2.

    Ctrl-C and SIGTERM print one line (`interrupted`) and exit with 130.
    """
    signal.signal(signal.SIGTERM, _terminate)
    _usable_streams()
    try:
        problem = torchvision_problem()
        if problem:
            raise UserError(problem)
        return main(args)
    except (UserError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # the reader of the output went away (`| head`): stop, say so where it can
        sys.stdout = open(os.devnull, "w")  # nothing more to that pipe, not even at exit
        print(f"{prog}: stopped: its output pipe was closed; {interrupted}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a folder that cannot be written, a full disk: the user's to fix
        where = f": {e.filename}" if e.filename else (
            " (free some space or raise the limit, then rerun)" if e.errno in (errno.ENOSPC, errno.EFBIG)
            else "")
        print(f"{prog}: error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:
        # PyTorch's allocators raise RuntimeError (torch.cuda.OutOfMemoryError is one) when the
        # memory runs out; any other RuntimeError is a bug, and its traceback is the report
        if not isinstance(e, MemoryError) and not any(m in str(e) for m in OUT_OF_MEMORY):
            raise
        print(f"{prog}: error: out of memory; use smaller sizes (width, batch, images) or a larger "
              f"machine{'' if isinstance(e, MemoryError) else f' ({str(e)[:80]})'}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        sys.exit(130)


# The flags the scripts share, declared once: lab reads no other flag of a script (each script
# passes what else it needs). Those that say where files are, not what a result is (a caption that
# named them would put one machine's paths into the committed tables and the README):
LOCATION_FLAGS = ("data_dir", "out_dir", "fig_dir")
# those that say where things are or how much of a command to run, not what it computes:
WHERE_FLAGS = LOCATION_FLAGS + ("workers", "force", "plot_only")
SHARED_FLAGS = WHERE_FLAGS + ("device", "shard", "tensorboard")


def check_writable(*folders):
    """Fail before any training if an output folder cannot be created or written."""
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {folder}: {e.strerror or e}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"the output folder {folder} is not writable; pass another one")


def count(n, noun, plural=None):
    """'1 run', '2 runs': numbers the user reads, in words that agree with them."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"

