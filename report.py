"""Tables and figures from saved results: the numbers as every table shows them, and captions.

Where they may be written (the README's figures/ or beside the runs) is lab.outputs' rule.
"""
import glob
import math
import os

import torch

from models import CifarResNet
from training import CNN_CPU_EPOCHS
from lab.errors import UserError
from lab.files import savefig_atomic
from lab.runs import CHECKPOINT_FILE, METRICS_FILE, config_digest, published_dir, read_record

CAPTION_FONTSIZE = 8


def save_figure(fig, caption, path, caption_lines=1, top_inches=0.0, layout=True, tight_box=False):
    """Every figure says what made it: the caption goes at the bottom, then the file is written.
    `top_inches` keeps room above the axes (for a figure-wide legend); `layout=False` keeps the
    layout the caller made (e.g. around a colour bar of its own), which `tight_box` crops to what
    is drawn."""
    import matplotlib.pyplot as plt
    fig.text(0.01, 0.005, caption, fontsize=CAPTION_FONTSIZE, wrap=True, va="bottom")
    height = fig.get_size_inches()[1]
    if layout:
        fig.tight_layout(rect=(0, (0.03 + 0.16 * caption_lines) / height, 1, 1 - top_inches / height))
    try:
        savefig_atomic(fig, path, dpi=110, **({"bbox_inches": "tight"} if tight_box else {}))
    finally:
        plt.close(fig)


def cnn_name(residual, blocks):
    """'plain-20', 'residual-56': a CIFAR network as every table and figure names it."""
    return f"{'residual' if residual else 'plain'}-{CifarResNet.depth_of(blocks)}"


# every CNN figure draws a network in the colour of its depth and the line of its kind
DEPTH_COLOURS = {1: "tab:blue", 3: "tab:orange", 5: "tab:green", 9: "tab:red"}  # blocks per stage -> colour
KIND_LINES = {False: "--", True: "-"}  # plain dashed, residual solid


def cnn_style(residual, blocks):
    """The colour and line style of a CIFAR network in every figure: one colour per depth, dashed
    plain, solid residual."""
    return {"color": DEPTH_COLOURS.get(blocks, "tab:gray"), "ls": KIND_LINES[residual]}


def published_cnn_run(residual, blocks, seed):
    """(record, folder) of the published Exercise 1.3 run of these settings at the CPU preset."""
    root = published_dir("ex1_cnn")
    prefix = f"{'res' if residual else 'plain'}_n{blocks}_e{CNN_CPU_EPOCHS}_s{seed}_"
    for path in sorted(glob.glob(os.path.join(root, prefix + "*", METRICS_FILE))):
        folder = os.path.dirname(path)
        record = read_record(folder)
        is_its_own = record is not None and folder.endswith(config_digest(record["config"]))
        if is_its_own and record["status"] == "complete":
            return record, folder
    raise UserError(f"no published run {prefix}* in {root} (is the checkout complete?)")


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


def run_seconds(record):
    """What a run cost, in seconds: a baseline's feature extraction and fit; a training's epochs in
    process CPU time (which other work on the machine does not inflate), or, for a record made
    before its epochs carried that, its fastest epoch's wall time times its epochs (0 if none)."""
    if isinstance(record.get("seconds"), dict):
        return float(sum(record["seconds"].values()))
    epochs = record["epochs"]
    if epochs and all("cpu_seconds" in e for e in epochs):
        return float(sum(e["cpu_seconds"] for e in epochs))
    fastest = fastest_epoch_seconds(record)
    return 0.0 if fastest is None else float(fastest * len(epochs))


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
    """The end of a single run: what it reached and where its checkpoint is; returns `record`."""
    if record["status"] == "diverged":
        print(f"diverged (non-finite loss) at epoch {len(record['epochs'])}")
    if record.get("test_acc") is not None:
        checkpoint = os.path.join(run_dir, CHECKPOINT_FILE)
        kept = (f"checkpoint {checkpoint}" if os.path.exists(checkpoint) else
                "its checkpoint is not kept (--force trains the run again, with one, into --out-dir)")
        print(f"best validation accuracy {record['best_val_acc']:.4f} at epoch {record['best_epoch']}; "
              f"test accuracy {record['test_acc']:.4f}; {kept}")
    seconds = epoch_seconds(record)
    if seconds is not None:
        print(f"{seconds:.3g} s per epoch (training and validation)")
    return record


def t_quantile(p, df):
    """Student's t quantile: the x with P(T <= x) = p for `df` degrees of freedom (p >= 0.5), by
    integrating the density (trapezoids) and bisecting; 4 digits, as a statistics table."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x, steps=4000):
        h = x / steps
        density = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h * (sum(density) - (density[0] + density[-1]) / 2)
    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(a, b, key):
    """`key` of the runs `a` minus that of the runs `b` seed by seed (the same initialization and
    batches): (mean difference, half-width of its 95% t interval (None for one seed), {seed:
    difference}). Seeds without a finite value on both sides are left out."""
    values = [{r["config"]["seed"]: key(r) for r in runs if key(r) is not None and math.isfinite(key(r))}
              for runs in (a, b)]
    per_seed = {s: values[0][s] - values[1][s] for s in sorted(values[0].keys() & values[1].keys())}
    if not per_seed:
        return None
    mean, std = mean_std(list(per_seed.values()))
    n = len(per_seed)
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    return mean, half, per_seed


def format_interval(diff, digits=3):
    """A table cell of `paired_difference`: '+0.012 [-0.003, +0.027]' (its 95% interval)."""
    if diff is None:
        return "-"
    mean, half, _ = diff
    if half is None:
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]"
