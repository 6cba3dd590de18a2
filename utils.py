"""Command-line plumbing shared by the scripts: one-line errors, device, threads, seeds."""
import argparse
import os
import platform
import signal
import sys

import torch

from data import DataError


class UserError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file): one line, exit code 2."""


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


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a cluster scheduler's stop) ends like Ctrl-C


def run_cli(main, args, prog, interrupted="finished runs are saved; rerun the command to resume"):
    """Call main(args); user-facing errors become one line on stderr with exit code 2.

    Ctrl-C and SIGTERM print one line (`interrupted`) and exit with 130.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(args)
    except (UserError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a folder that cannot be written, a full disk: the user's to fix
        print(f"{prog}: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
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
    parser.add_argument("--plot-only", action="store_true", help="with --sweep: redraw from saved runs")


def check_positive(parser, args, *names):
    """parser.error (one line, exit 2) for the first of `names` that is not > 0 (NaN included)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


def command_line(prog, positionals, args, defaults):
    """The command that reproduces an output: `python prog`, the positional arguments (their
    names in `args` -> the words to show), and every flag of `args` not at its default."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k not in positionals and getattr(defaults, k, None) != v]
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


def get_device(name="auto"):
    """'auto' picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def set_threads(device, threads):
    """Use `threads` CPU threads (None: all of them). CUDA runs ignore it.

    Measured here (bench.py): width-16 MLP steps run 5-10x faster on 1 thread than on 2,
    since the matrix products are too small to share; CNN sweeps run fastest as one
    single-thread process per core. Single CNN runs use every core.
    """
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)


def machine(device):
    """The processor: a GPU's name, or e.g. 'CPU (x86_64, 2 cores)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {count(os.cpu_count(), 'core')})"


def hardware(device):
    """What ran the code, threads included, for figure captions and results."""
    if device.type == "cuda":
        return machine(device)
    return f"{machine(device)[:-1]}, {count(torch.get_num_threads(), 'thread')} per process)"


def seed_everything(seed):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def count(n, noun, plural=None):
    """'1 run', '2 runs': numbers the user reads, in words that agree with them."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
