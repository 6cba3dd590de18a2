"""Command-line plumbing of every script: argparse with one-line errors, checked numeric flags, run_cli."""
import argparse
import errno
import math
import os
import signal
import sys

from lab.errors import DataError, UserError


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


# The limits of numeric flags: beyond them a run cannot be what the user meant (or fit in memory)
SEED_MAX = 2 ** 32 - 1   # the seed range every library here accepts (numpy's is the smallest)


MAX_IMAGES = 10 ** 7     # more than any dataset these scripts read


MAX_EPOCHS = 10 ** 4


MAX_BATCH = 2 ** 16


MAX_SEEDS = 100


MAX_WORKERS = 256


MAX_LR = 1e30            # far past divergence, which a run records (status "diverged")


class Number:
    """An argparse `type`: the one place a numeric flag is checked. `kind` (int or float),
    finite, in [low, high] (an end excluded if `open_low` / `open_high`); `why` says why, in
    the one-line error a flag out of range gives (exit code 2)."""

    def __init__(self, kind, low, high, open_low=False, open_high=False, why="", finite=True):
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high
        self.why = why
        # False: NaN and an infinite end of the range are values too (read from a file: a precision
        # with nothing detected, an exploded gradient)
        self.finite = finite
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type in errors

    def describe(self):
        if self.kind is int and not self.open_low and not self.open_high:
            return f"an integer from {self.low} to {self.high}"
        return (f"{'an integer' if self.kind is int else 'a number'} in {'(' if self.open_low else '['}"
                f"{self.low:g}, {self.high:g}{')' if self.open_high else ']'}")

    def problem(self, value):
        """Why `value` (already a number, e.g. read from a file) is not one of these, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and not isinstance(value, int)):
            return f"{value!r} is not {self.describe()}"
        if not self.finite and (math.isnan(value) or value in (self.low, self.high)):
            return None
        if not math.isfinite(value) or value < self.low or value > self.high \
                or (self.open_low and value == self.low) or (self.open_high and value == self.high):
            why = f" ({self.why})" if self.why else ""
            return f"must be {self.describe()}{why}, got {value}"
        return None

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes {self.describe()}, got {text!r}")
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem if problem.startswith("must") else f"must be "
                                             f"{self.describe()}, got {text}")
        return value


def count_flag(high, low=1):
    """An integer flag from `low` (1: a positive count) to `high`."""
    return Number(int, low, high)


SEED = Number(int, 0, SEED_MAX)


LR = Number(float, 0, MAX_LR, open_low=True)


FRACTION = Number(float, 0, 1)  # an accuracy


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


def add_run_flags(parser, exercise):
    """The flags of where a script's runs, tables and figures go, the same in every script."""
    parser.add_argument("--out-dir", default=os.path.join("runs", exercise),
                        help="one folder per run below this")
    parser.add_argument("--fig-dir", default=None,
                        help="where tables and figures go (default: figures/ for the README's sweep, "
                             "else <out-dir>/figures)")
    parser.add_argument("--force", action="store_true",
                        help="retrain a finished single run (its result is deleted)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="train only the K-th (0-based) of N disjoint parts of the sweep")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw a sweep's tables and figures from saved runs")
    add_tensorboard_flag(parser)


# The flags the scripts share, declared once: lab reads no other flag of a script (each script
# passes what else it needs). Those that say where files are, not what a result is (a caption that
# named them would put one machine's paths into the committed tables and the README):
LOCATION_FLAGS = ("data_dir", "out_dir", "fig_dir")
# those that say where things are or how much of a command to run, not what it computes:
WHERE_FLAGS = LOCATION_FLAGS + ("workers", "force", "plot_only")
SHARED_FLAGS = WHERE_FLAGS + ("device", "shard", "tensorboard")


def command_line(prog, positionals, args, defaults):
    """The command that reproduces an output: `python prog`, the positional arguments (their
    names in `args` -> the words to show), and every flag of `args` not at its default, but
    those of LOCATION_FLAGS."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k not in positionals and k not in LOCATION_FLAGS and getattr(defaults, k, None) != v]
    return " ".join([f"python {prog}", *positionals.values(), *flags])


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


DEVICES = ("auto", "cpu", "cuda", "mps")


def add_tensorboard_flag(parser):
    """--tensorboard, the same in every training script (lab.runs.RunFolder logs to it)."""
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also log each run's per-epoch losses, accuracies and learning rate for "
                             "TensorBoard, in DIR/<run folder name>/ (watch: tensorboard --logdir DIR)")


def add_device_flag(parser):
    """--device, the same in every script (utils.get_device reads it)."""
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: CUDA if available, else Apple MPS, else the CPU")
