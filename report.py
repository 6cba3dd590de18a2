"""Tables, figures and the README: results as they are shown, and where they may be written.

The README and `figures/` show the committed results of the README's exact commands.
Anything else (a partial sweep, other settings) writes its tables and figures beside its
runs, or to an explicit `--fig-dir`, and never touches the README.
"""
import math
import os

import torch

from models import CifarResNet
from runs import CHECKPOINT_FILE, METRICS_FILE, collect
from storage import savefig_atomic, write_text_atomic
from utils import UserError, check_writable, count

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
FIGURES_DIR = os.path.join(REPO_DIR, "figures")
README = os.path.join(REPO_DIR, "README.md")
CAPTION_FONTSIZE = 8


def output_dir(fig_dir, publish, scratch_dir):
    """Where tables and figures go: `--fig-dir` if given, else the README's figures/ when
    `publish`, else `scratch_dir` (beside the runs)."""
    if fig_dir:
        return fig_dir
    return FIGURES_DIR if publish else scratch_dir


# flags that say where things are, or how much of a command to run, not what it computes
WHERE_FLAGS = ("data_dir", "out_dir", "fig_dir", "workers", "force", "plot_only", "analyses", "select")


def destination(args, readme_args, scratch_dir, inputs_published=True):
    """(folder, publish) for a command's tables and figures, the one rule of every script: the
    README's figures/ (and the README) when the command is the README's (every flag outside
    WHERE_FLAGS as in `readme_args`, a whole sweep, not a shard) and its inputs are the published
    results; else `--fig-dir` if given, else `scratch_dir`. The folder is checked writable here,
    before any work, so a long computation never ends unable to write."""
    same = all(getattr(args, k) == getattr(readme_args, k, None) for k in vars(args) if k not in WHERE_FLAGS)
    publish = same and inputs_published and not getattr(args, "shard", None)
    folder = output_dir(args.fig_dir, publish, scratch_dir)
    check_writable(folder)
    return folder, publish


def sweep_destination(args, readme_args):
    """destination() of a sweep: its scratch folder is figures/ beside its runs."""
    return destination(args, readme_args, os.path.join(args.out_dir, "figures"))


def sweep_results(configs, roots, name_fn, fig_dir, command):
    """(found, number missing) for the tables and figures of a sweep written to `fig_dir`:
    [(config, record, folder)] of its finished runs in `roots`, an error if there are none."""
    found = collect(configs, roots, name_fn)
    if not found:
        started = sum(any(os.path.exists(os.path.join(root, name_fn(c), METRICS_FILE)) for root in roots)
                      for c in configs)
        if started:
            raise UserError(f"none of the {count(len(configs), 'run')} of these settings has finished yet: "
                            f"{started} started in {' or '.join(roots)} (another process may be training "
                            f"them; else rerun `{command}` to resume)")
        raise UserError(f"no finished runs of these settings in {' or '.join(roots)}; "
                        f"run `{command}` with the same flags first")
    by_root = {}
    for _, _, folder in found:
        by_root[os.path.dirname(folder)] = by_root.get(os.path.dirname(folder), 0) + 1
    print("reading " + ", ".join(f"{count(n, 'finished run')} from {os.path.relpath(root)}"
                                 for root, n in by_root.items()))
    missing = len(configs) - len(found)
    if missing:
        print(f"{count(missing, 'run')} of these settings not finished: the tables and figures show "
              f"{len(found)} of {len(configs)}")
    check_writable(fig_dir)
    return found, missing


def write_table(text, name, fig_dir, publish):
    """Write `name`.md to `fig_dir`; into the README too when `publish` and `fig_dir` is the
    README's figures/ folder. Returns the path written."""
    path = os.path.join(fig_dir, f"{name}.md")
    write_text_atomic(text, path)
    if publish and os.path.abspath(fig_dir) == FIGURES_DIR:
        update_readme(name, text)
    return path


def update_readme(name, text, readme=README):
    """Put `text` between `<!-- name -->` and `<!-- /name -->` in the README."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    try:
        with open(readme) as f:
            content = f.read()
    except OSError:
        return
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        write_text_atomic(head + begin + "\n" + text + rest[rest.index(end):], readme)


def save_figure(fig, caption, path, caption_lines=1, top_inches=0.0, layout=True):
    """Every figure says what made it: the caption goes at the bottom, then the file is written.
    `top_inches` keeps room above the axes (for a figure-wide legend); `layout=False` keeps the
    layout the caller made (e.g. around a colour bar of its own)."""
    import matplotlib.pyplot as plt
    fig.text(0.01, 0.005, caption, fontsize=CAPTION_FONTSIZE, wrap=True, va="bottom")
    height = fig.get_size_inches()[1]
    if layout:
        fig.tight_layout(rect=(0, (0.03 + 0.16 * caption_lines) / height, 1, 1 - top_inches / height))
    try:
        savefig_atomic(fig, path, dpi=110)
    finally:
        plt.close(fig)


def remove_stale(paths):
    """Delete figures a run could not draw this time, so none from an earlier run stays."""
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def cnn_name(residual, blocks):
    """'plain-20', 'residual-56': a CIFAR network as every table and figure names it."""
    return f"{'residual' if residual else 'plain'}-{CifarResNet.depth_of(blocks)}"


def run_result(record):
    """A run's result: the test accuracy of its best-validation checkpoint (None if it has none)."""
    return record.get("test_acc")


def epoch_times(record):
    """The wall time of each epoch of a run that recorded it (training and validation), in s."""
    return [e["seconds"] for e in record["epochs"] if "seconds" in e]


def epoch_seconds(record):
    """A run's mean wall time per epoch (training and validation), None if it was not recorded."""
    seconds = epoch_times(record)
    return sum(seconds) / len(seconds) if seconds else None


def fastest_epoch_seconds(record):
    """A run's quickest epoch: its cost with the least slowdown from other work on the machine."""
    return min(epoch_times(record), default=None)


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
    """'mean ± std' of `values`, as every table of the repository shows a result; a single value
    alone (a std of one value is not 0, it is unknown)."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def mean_std(values):
    """(mean, std) with the sample std (n-1); std is 0 for a single value."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def depth_gap(deep, shallow, key):
    """How much `key` changes from the runs `shallow` to the runs `deep` (two lists of records
    of different networks): (difference of the means, its standard error, {seed: difference
    on that seed}). The standard error is sqrt(s1^2/n1 + s2^2/n2), the seeds taken as
    independent draws (None with fewer than 2 runs in a group); runs without a finite value
    are left out, as in `finished_results`."""
    values = [{r["config"]["seed"]: key(r) for r in records if key(r) is not None and math.isfinite(key(r))}
              for records in (deep, shallow)]
    if not all(values):
        return None
    (m_deep, s_deep), (m_shallow, s_shallow) = (mean_std(list(v.values())) for v in values)
    n_deep, n_shallow = (len(v) for v in values)
    se = math.sqrt(s_deep ** 2 / n_deep + s_shallow ** 2 / n_shallow) if min(n_deep, n_shallow) > 1 else None
    per_seed = {seed: values[0][seed] - values[1][seed]
                for seed in sorted(values[0].keys() & values[1].keys())}
    return m_deep - m_shallow, se, per_seed


def format_gap(gap, digits=3):
    """A table cell of `depth_gap`: '+0.012 ± 0.004' (difference ± standard error)."""
    if gap is None:
        return "-"
    diff, se, _ = gap
    return f"{diff:+.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def print_result(record, run_dir):
    """The end of a single run: what it reached and where its checkpoint is."""
    if record["status"] == "diverged":
        print(f"diverged (non-finite loss) at epoch {len(record['epochs'])}")
    if record.get("test_acc") is not None:
        print(f"best validation accuracy {record['best_val_acc']:.4f} at epoch {record['best_epoch']}; "
              f"test accuracy {record['test_acc']:.4f}; checkpoint {os.path.join(run_dir, CHECKPOINT_FILE)}")
    seconds = epoch_seconds(record)
    if seconds is not None:
        print(f"{seconds:.3g} s per epoch (training and validation)")
