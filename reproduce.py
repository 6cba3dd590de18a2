"""The whole lab in one command: every committed result's command, its cost, and the total.

    python reproduce.py --dry-run              # the plan: each step, its cost, the total
    python reproduce.py ex2_cam                # one exercise's steps (skips those already done)
    python reproduce.py all --data-dir data    # everything, in the order the exercises read each other

The steps run in order (Exercise 2 reads Exercise 1's checkpoints), each as its own command, as the
README gives it. A step that finished is recorded in <state-dir>/done.json and skipped by a later
call; a step cut by Ctrl-C or kill -9 is run again, and its script resumes its runs from their
last finished epoch. The training scripts skip every run whose result is committed in results/:
on a fresh clone they print those results and redraw the figures (remove results/<exercise>/ to
train everything again; that takes the time the plan gives).

Costs come from the committed records (each run's fastest epoch times its epochs, so that other
work on the machine does not inflate it, and feature extractions in process CPU time, over the
processes the script runs side by side); the analyses, which keep no times,
from our measurements, marked so. Both are for our 2-core CPU (x86_64).
"""
import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from lab.files import write_json_atomic
from report import run_seconds

ROOT = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(ROOT, "results")
MEASURED_ON = "our idle 2-core CPU"
PARALLEL = 2  # processes the sweeps run side by side on our 2 cores (one per core)


@dataclass(frozen=True)
class Step:
    exercise: str
    command: str             # as the README gives it, without --data-dir
    records: str = ""        # a glob under results/ of the run folders whose records time it
    selection: object = None  # True / False: only the records of a selection's candidates / of others
    measured: float = 0.0    # else: seconds we measured (analyses keep no times) ...
    note: str = "on our idle 2-core CPU"  # ... and how
    data: bool = True        # False: needs no --data-dir


STEPS = (
    Step("ex1_mlp", "python ex1_mlp.py --sweep", records="ex1_mlp/*"),
    Step("ex1_cnn", "python ex1_cnn.py --sweep --cpu", records="ex1_cnn/*"),
    Step("ex2_why", "python ex2_why.py", measured=18 * 60 + 6),
    Step("ex2_fcn", "python ex2_fcn.py", measured=3 * 60 + 44),
    Step("ex2_cam", "python ex2_cam.py cifar10", measured=15),
    Step("ex2_cam", "python ex2_cam.py cifar10 --evaluate", measured=100),
    Step("ex2_cam", "python ex2_cam.py photos", measured=11 * 60, data=False,
         note="beside four training processes"),
    Step("ex2_finetune", "python ex2_finetune.py", records="ex2_finetune/cifar10_*"),
    Step("ex2_distill", "python ex2_distill.py", records="ex2_distill/kd-res_*_e8_*"),
    Step("ex2_distill", "python ex2_distill.py --student plain", records="ex2_distill/kd-plain_*_e8_*"),
    Step("ex2_distill", "python ex2_distill.py --select", records="ex2_distill/kd-*_e3_*", selection=True),
    Step("ex2_distill", "python ex2_distill.py --short", records="ex2_distill/kd-*_e3_*", selection=False),
)


def record_seconds(path, selection=None):
    """The seconds a run's record accounts for (report.run_seconds; 0 for a record `selection`
    leaves out)."""
    try:
        with open(path) as f:
            record = json.load(f)
        if selection is not None and bool(record["config"].get("selection")) != selection:
            return 0.0
        return run_seconds(record)  # unslowed by other work
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return 0.0  # a damaged record costs nothing here; the script itself names it


def shared_feature_seconds(paths):
    """The feature extractions that two baselines of one input size share, counted once more than
    they were made (each baseline's record carries the extraction it read)."""
    seen, extra = set(), 0.0
    for path in paths:
        try:
            with open(path) as f:
                record = json.load(f)
            key = (record["config"]["size"], record["seconds"]["features"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        extra += key[1] if key in seen else 0.0
        seen.add(key)
    return extra


def cost(step):
    """(seconds of wall time on our machine, how it is known)."""
    if step.records:
        paths = glob.glob(os.path.join(RESULTS, step.records, "metrics.json"))
        seconds = [record_seconds(p, step.selection) for p in paths]
        total = sum(seconds) - shared_feature_seconds(paths)  # an extraction is made once, recorded twice
        runs = sum(s > 0 for s in seconds)
        return total / PARALLEL, f"{runs} committed run records, {PARALLEL} processes side by side"
    return step.measured, f"measured {step.note}"


def duration(seconds):
    """3725 -> '1 h 2 min', 95 -> '2 min', 20 -> '20 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{round(seconds)} s"


def selected(names):
    exercises = {s.exercise for s in STEPS}
    if "all" in names:
        return list(STEPS)
    unknown = sorted(set(names) - exercises)
    if unknown:
        raise SystemExit(f"reproduce.py: error: unknown exercise {', '.join(unknown)} (choose from all, "
                         f"{', '.join(sorted(exercises))})")
    return [s for s in STEPS if s.exercise in names]


def command_of(step, data_dir):
    return step.command + (f" --data-dir {data_dir}" if data_dir and step.data else "")


def read_done(path):
    try:
        with open(path) as f:
            done = json.load(f)
        return done if isinstance(done, dict) else {}
    except (OSError, ValueError):
        return {}


def print_plan(steps, done):
    total = 0.0
    for step in steps:
        seconds, how = cost(step)
        total += 0 if step.command in done else seconds
        state = "done, skipped" if step.command in done else duration(seconds)
        print(f"{step.command:44s} {state:>15s}   ({how})")
    print(f"{'total':44s} {duration(total):>15s}   (on {MEASURED_ON})")
    return total


def run(steps, state_dir, data_dir):
    """Run the steps not yet done, in order, each recorded as done once its command succeeds."""
    path = os.path.join(state_dir, "done.json")
    done = read_done(path)
    left = sum(cost(s)[0] for s in steps if s.command not in done)
    for i, step in enumerate(steps, 1):
        if step.command in done:
            print(f"[{i}/{len(steps)}] {step.command}: done before, skipped")
            continue
        print(f"[{i}/{len(steps)}] {command_of(step, data_dir)} (about {duration(left)} left in all)",
              flush=True)
        started = time.time()
        argv = shlex.split(command_of(step, data_dir))
        code = subprocess.call([sys.executable, *argv[1:]] if argv[0] == "python" else argv, cwd=ROOT)
        if code != 0:
            print(f"reproduce.py: error: `{command_of(step, data_dir)}` failed (exit code {code}); fix what "
                  "it says and rerun: the steps done are skipped", file=sys.stderr)
            return 2
        done[step.command] = {"seconds": round(time.time() - started, 1)}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(done, path)
        left -= cost(step)[0]
    print(f"all {len(steps)} steps done")
    return 0


def get_args(argv=None):
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exercises", nargs="*", default=["all"], metavar="EXERCISE",
                   help=f"all (default), or some of {', '.join(dict.fromkeys(s.exercise for s in STEPS))}")
    p.add_argument("--dry-run", action="store_true", help="print the plan with each step's cost, run nothing")
    p.add_argument("--data-dir", default=None, help="passed to every step that reads a dataset")
    p.add_argument("--state-dir", default=os.path.join("runs", "reproduce"),
                   help="where the steps done are recorded (default: runs/reproduce)")
    return p.parse_args(argv)


def main(args):
    steps = selected(args.exercises)
    done = read_done(os.path.join(args.state_dir, "done.json"))
    if args.dry_run:
        print_plan(steps, done)
        return 0
    return run(steps, args.state_dir, args.data_dir)


if __name__ == "__main__":
    sys.exit(main(get_args()))
