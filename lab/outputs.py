"""Where tables and figures may go: the README's figures/ and README.md only for the README's
exact commands on the published results; anything else beside its runs or to --fig-dir."""
import base64
import contextlib
import json
import math
import os

import torch

from lab.cli import WHERE_FLAGS, check_writable, count
from lab.errors import UserError
from lab.files import FolderLock, fields_problem, read_json, write_json_atomic, write_text_atomic
from lab.runs import METRICS_FILE, collect


REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FIGURES_DIR = os.path.join(REPO_DIR, "figures")


README = os.path.join(REPO_DIR, "README.md")


def output_dir(fig_dir, publish, scratch_dir):
    """Where tables and figures go: `--fig-dir` if given, else the README's figures/ when
    `publish`, else `scratch_dir` (beside the runs)."""
    if fig_dir:
        return fig_dir
    return FIGURES_DIR if publish else scratch_dir


def destination(args, readme_args, scratch_dir, inputs_published=True, where=()):
    """(folder, publish) for a command's tables and figures, the one rule of every script: the
    README's figures/ (and the README) when the command is the README's (every flag outside
    lab.cli.WHERE_FLAGS and the script's own `where` flags as in `readme_args`, a whole sweep,
    not a shard) and its inputs are the published results; else `--fig-dir` if given, else
    `scratch_dir`. The folder is checked writable here, before any work, so a long computation
    never ends unable to write."""
    ignored = WHERE_FLAGS + tuple(where)
    same = all(getattr(args, k) == getattr(readme_args, k, None) for k in vars(args) if k not in ignored)
    publish = same and inputs_published and not getattr(args, "shard", None)
    folder = output_dir(args.fig_dir, publish, scratch_dir)
    check_writable(folder)
    return folder, publish


def sweep_destination(args, readme_args):
    """destination() of a sweep: its scratch folder is figures/ beside its runs."""
    return destination(args, readme_args, os.path.join(args.out_dir, "figures"))


def sweep_results(configs, roots, name_fn, fig_dir, command, published=None, fields=None):
    """(found, number missing) for the tables and figures of a sweep written to `fig_dir`:
    [(config, record, folder)] of its finished runs in `roots`, an error if there are none
    (naming `published`, the command that draws the README's results, when it is another)."""
    found = collect(configs, roots, name_fn, fields)
    if not found:
        started = sum(any(os.path.exists(os.path.join(root, name_fn(c), METRICS_FILE)) for root in roots)
                      for c in configs)
        if started:
            raise UserError(f"none of the {count(len(configs), 'run')} of these settings has finished yet: "
                            f"{started} started in {' or '.join(roots)} (another process may be training "
                            f"them; else rerun `{command}` to resume)")
        readme = f" (the README's results: `{published}`)" if published else ""
        raise UserError(f"no finished runs of these settings in {' or '.join(roots)}; "
                        f"run `{command}` with the same flags first{readme}")
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
    README's figures/ folder, both under the README's lock: two commands writing one table at
    once leave the README and figures/ agreeing (the last one's). Returns the path written."""
    path = os.path.join(fig_dir, f"{name}.md")
    text = as_data(text)
    readme = publish and os.path.abspath(fig_dir) == FIGURES_DIR
    with FolderLock(os.path.dirname(README)).waiting() if readme else contextlib.nullcontext():
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                change = changed_cells(f.read(), text)
            if change:
                print(f"{path}: {change}")
        write_text_atomic(text, path)
        if readme:
            _put_in_readme(name, text, README)
    return path


def as_data(text):
    """A table's text as data, never markup: what a saved file put into it (a caption) cannot open
    or close a README block, whose markers are HTML comments."""
    return text.replace("<!--", "&lt;!--").replace("-->", "--&gt;")


def _cells(text):
    """The cells of every table row of a markdown text, in order."""
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("|")]
    return [cell.strip() for row in rows for cell in row]


def _number(cell):
    """The number a table cell starts with ('0.826 ± 0.003' -> 0.826), or None."""
    try:
        return float(cell.split()[0].replace(",", "").rstrip("%x"))
    except (ValueError, IndexError):
        return None


def changed_cells(old, new):
    """What rewriting the table `old` as `new` changes, in words ('3 cells of 40 changed, the
    most 1811.09 -> 1801.15 (-0.5%)'), or None if no cell changes: a command that rewrites a
    committed table says how far this machine's numbers are from the committed ones."""
    before, after = _cells(old), _cells(new)
    if len(before) != len(after):
        return f"the table changed shape ({len(before)} cells before, {len(after)} now)"
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    if not changed:
        return None
    numeric = [(_number(a), _number(b), a, b) for a, b in changed]
    relative = sorted((abs(y / x - 1), a, b, y / x - 1) for x, y, a, b in numeric if x and y is not None)
    most = f", the most {relative[-1][1]} -> {relative[-1][2]} ({relative[-1][3]:+.1%})" if relative else ""
    return f"{count(len(changed), 'cell')} of {len(before)} changed{most}"


def update_readme(name, text, readme=README):
    """Put `text` between `<!-- name -->` and `<!-- /name -->` in the README, holding a lock on
    its folder for the read-modify-write, so two scripts updating it at once lose neither table."""
    with FolderLock(os.path.dirname(os.path.abspath(readme))).waiting():
        _put_in_readme(name, text, readme)


def _put_in_readme(name, text, readme):
    """The read-modify-write of update_readme; its caller holds the README folder's lock."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    try:
        with open(readme, encoding="utf-8") as f:
            content = f.read()
        if begin in content and end in content:
            head, rest = content.split(begin, 1)
            write_text_atomic(head + begin + "\n" + text + rest[rest.index(end):], readme)
    except OSError:
        return



def remove_stale(paths):
    """Delete figures a run could not draw this time, so none from an earlier run stays beside
    its runs; the committed figures/ are replaced only by complete new ones, never deleted."""
    for path in paths:
        if os.path.exists(path) and os.path.dirname(os.path.abspath(path)) != FIGURES_DIR:
            os.remove(path)


# ----------------------------------------------------------------------------- saved analyses
# A table or figure computed from data (ex2_why's analyses, ex2_cam's maps) is drawn from a saved
# file of what was computed, never from memory: --plot-only then redraws it byte for byte, on a
# clone without the data. The file names what it was computed from, and is refused otherwise.

def analysis_path(name, fig_dir, publish, exercise, reading=False):
    """Where the result `name` is saved: results/<exercise>/ for the README's command writing to
    the README's figures/ (published with the code), else beside its figure in `fig_dir` (a
    README command with --fig-dir elsewhere never replaces a committed result; `reading`, as
    --plot-only does, it reads the committed one)."""
    if publish and (reading or os.path.abspath(fig_dir) == FIGURES_DIR):
        return os.path.join(REPO_DIR, "results", exercise, f"{name}.json")
    return os.path.join(fig_dir, f"{exercise}_{name}.json")


ANALYSIS_FIELDS = {"name": str, "settings": dict, "inputs": dict, "content": dict}


def save_analysis(path, name, settings, inputs, content):
    """Save `content` (JSON) computed by `name` with `settings` from `inputs` ({what: SHA-256}).
    A saved result it replaces with other numbers (computed from another copy of the data, on
    another machine) is named in a line: a committed one changes only in plain sight."""
    saved = {"name": name, "settings": settings, "inputs": inputs, "content": content}
    try:
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = None
    write_json_atomic(saved, path)
    if before is not None and json.dumps(before, sort_keys=True) != json.dumps(saved, sort_keys=True):
        print(f"{path}: replaced by this computation, whose numbers differ from those saved there (other "
              "data, machine or code); `git diff --stat` shows a committed result changed, `git checkout -- "
              "<file>` restores it")


def read_analysis(path, name, settings, inputs, compute, decode, schema=None):
    """decode(the content saved by save_analysis), refused in one line unless it was computed by
    `name` with these `settings` from these very `inputs`, its whole content fits `schema` (the
    fields the script declares, lab.files.fields_problem) and `decode` finds in it what it
    reads (a KeyError, TypeError or ValueError of decode's is that line); `compute` is the
    command that makes it."""
    remedy = f"rerun `{compute}` (without --plot-only, with the data) to compute it again"
    saved = read_json(path, remedy)
    if saved is None:
        raise UserError(f"no saved results at {path}; compute them with `{compute}` (with the data), then "
                        "--plot-only redraws them")
    problem = fields_problem(saved, ANALYSIS_FIELDS)
    if problem:
        raise UserError(f"{path} is not a saved result of this code ({problem}); {remedy}")
    if saved["name"] != name or saved["settings"] != settings:
        raise UserError(f"{path} holds {saved['name']} results of other settings ({saved['settings']}); "
                        f"{remedy}")
    if saved["inputs"] != inputs:
        raise UserError(f"{path} was computed from other inputs than {', '.join(inputs)} (others, or their "
                        f"SHA-256 differ); {remedy}")
    problem = schema and fields_problem(saved["content"], schema)
    if problem:
        raise UserError(f"{path} is not a saved {name} result of this code ({problem}); {remedy}")
    try:
        return decode(saved["content"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a saved {name} result of this code ({type(e).__name__}: "
                        f"{str(e)[:60]}); {remedy}")


PACKED_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def packed(tensor):
    """A uint8 or float32 tensor as JSON, exactly and compactly: its dtype, shape and base64 bytes
    (a saved figure's images and maps would be a number per line)."""
    t = tensor.detach().cpu().contiguous()
    dtype = next(name for name, d in PACKED_DTYPES.items() if d == t.dtype)
    return {"dtype": dtype, "shape": list(t.shape), "base64": base64.b64encode(t.numpy().tobytes()).decode()}


class Packed:
    """A schema (lab.files.fields_problem) for a tensor saved by `packed`: its dtype, its shape
    (an int per dimension, None for any length) and the range of its values (finite unless
    `finite` is False)."""

    def __init__(self, dtype, shape, low=-math.inf, high=math.inf, finite=True):
        self.dtype, self.shape, self.low, self.high, self.finite = dtype, shape, low, high, finite

    def problem(self, value):
        try:
            t = unpacked(value)
        except (ValueError, TypeError) as e:
            return str(e)
        if value["dtype"] != self.dtype or t.dim() != len(self.shape) or any(
                n is not None and n != m for n, m in zip(self.shape, t.shape)):
            want = "x".join("N" if n is None else str(n) for n in self.shape)
            return f"a {value['dtype']} tensor of shape {list(t.shape)}, not {self.dtype} {want}"
        values = t.double()
        if self.finite and not torch.isfinite(values).all():
            return "a tensor with values that are not finite"
        finite = values[torch.isfinite(values)]
        if finite.numel() and (finite.min() < self.low or finite.max() > self.high):
            return f"a tensor with values outside [{self.low:g}, {self.high:g}]"
        return None


def unpacked(value):
    """The tensor `packed` saved; ValueError unless its bytes are the dtype and shape it claims."""
    if not isinstance(value, dict) or value.get("dtype") not in PACKED_DTYPES:
        raise ValueError("not a packed tensor")
    shape, dtype = value.get("shape"), PACKED_DTYPES[value["dtype"]]
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError("a packed tensor without a shape")
    data = bytearray(base64.b64decode(str(value.get("base64")), validate=True))
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError("a packed tensor whose bytes are not its shape")
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.zeros(shape, dtype=dtype)
