"""Where tables and figures may go: the README's figures/ and README.md only for the README's
exact commands on the published results; anything else beside its runs or to --fig-dir. And
the one idiom of a result computed from data: saved with what it was computed from, read back
checked (save_analysis, read_analysis, computed_once)."""
import contextlib
import json
import os


from lab.cli import LOCATION_FLAGS, WHERE_FLAGS, check_writable, count
from lab.errors import UserError
from lab.files import (FolderLock, file_sha256, load_checkpoint, read_json, save_atomic, write_json_atomic,
                       write_text_atomic)
from lab.kinds import fields_problem
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


def destination(args, readme_args, scratch_dir=None, inputs_published=True, where=()):
    """(folder, publish) for a command's tables and figures, the one rule of every script: the
    README's figures/ (and the README) when the command is the README's (every flag outside
    lab.cli.WHERE_FLAGS and the script's own `where` flags as in `readme_args`, a whole sweep,
    not a shard) and its inputs are the published results; else `--fig-dir` if given, else
    `scratch_dir` (None: a sweep's, figures/ beside its runs). The folder is checked writable
    here, before any work, so a long computation never ends unable to write."""
    ignored = WHERE_FLAGS + tuple(where)
    same = all(getattr(args, k) == getattr(readme_args, k, None) for k in vars(args) if k not in ignored)
    publish = same and inputs_published and not getattr(args, "shard", None)
    folder = output_dir(args.fig_dir, publish, scratch_dir or os.path.join(args.out_dir, "figures"))
    check_writable(folder)
    return folder, publish


def command_line(prog, positionals, args, defaults):
    """The command that reproduces an output: `python prog`, the positional arguments (their
    names in `args` -> the words to show), and every flag of `args` not at its default, but
    those of LOCATION_FLAGS."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k not in positionals and k not in LOCATION_FLAGS and getattr(defaults, k, None) != v]
    return " ".join([f"python {prog}", *positionals.values(), *flags])


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


# ----------------------------------------------------------------------------- saved results
# The one idiom of a result computed from data (ex2_why's analyses, ex2_cam's maps, ex2_fcn's
# benchmark, ex1_mlp's layer statistics, ex2_finetune's frozen features): computed once, saved with
# what it was computed from (its settings, the SHA-256 of the files it read), read back checked
# whole against the schema its script declares, and drawn from the saved file, never from memory:
# --plot-only then redraws it byte for byte, on a clone without the data. JSON, or a .pt file for
# tensors too large for one (read with weights_only=True).

def analysis_path(name, fig_dir, publish, exercise, reading=False):
    """Where the result `name` is saved: results/<exercise>/ for the README's command writing to
    the README's figures/ (published with the code), else beside its figure in `fig_dir` (a
    README command with --fig-dir elsewhere never replaces a committed result; `reading`, as
    --plot-only does, it reads the committed one)."""
    if publish and (reading or os.path.abspath(fig_dir) == FIGURES_DIR):
        return os.path.join(REPO_DIR, "results", exercise, f"{name}.json")
    return os.path.join(fig_dir, f"{exercise}_{name}.json")


def inputs_of(paths):
    """{what: SHA-256} of the files {what: path} a result is computed from."""
    return {what: file_sha256(path) for what, path in paths.items()}


ANALYSIS_FIELDS = {"name": str, "settings": dict, "inputs": dict, "content": dict}


def _is_torch(path):
    return path.endswith(".pt")


def save_analysis(path, name, settings, inputs, content):
    """Save `content` computed by `name` with `settings` from `inputs` ({what: SHA-256}): JSON, or
    tensors in a .pt `path`. A saved JSON result it replaces with other numbers (computed from
    another copy of the data, on another machine) is named in a line: a committed one changes
    only in plain sight."""
    saved = {"name": name, "settings": settings, "inputs": inputs, "content": content}
    if _is_torch(path):
        save_atomic(saved, path)
        return
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


def read_analysis(path, name, settings, inputs, compute, decode=None, schema=None, remedy=None):
    """decode(the content saved by save_analysis) (the content itself if no `decode`), refused in
    one line unless it was computed by `name` with these `settings` from these very `inputs`,
    its whole content fits `schema` (the fields the script declares, lab.kinds.fields_problem)
    and `decode` finds in it what it reads (a KeyError, TypeError or ValueError of decode's is
    that line); `compute` is the command that makes it, `remedy` what the line says to do."""
    remedy = remedy or f"rerun `{compute}` (without --plot-only, with the data) to compute it again"
    if not _is_torch(path):
        saved = read_json(path, remedy)
    else:
        saved = load_checkpoint(path, remedy, keys=tuple(ANALYSIS_FIELDS)) if os.path.lexists(path) else None
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
        raise UserError(f"{path} was computed from other inputs than {', '.join(inputs) or 'none'} (others, "
                        f"or their SHA-256 differ); {remedy}")
    problem = schema and fields_problem(saved["content"], schema)
    if problem:
        raise UserError(f"{path} is not a saved {name} result of this code ({problem}); {remedy}")
    try:
        return decode(saved["content"]) if decode else saved["content"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a saved {name} result of this code ({type(e).__name__}: "
                        f"{str(e)[:60]}); {remedy}")


def computed_once(path, name, settings, inputs, schema, compute, command, decode=None):
    """The result saved at `path` (read_analysis), computed by compute() and saved first if there is
    none yet: computed once, also when processes ask for it together (the second waits on its
    folder's lock, then reads it). `command` recomputes it once the bad file is deleted."""
    folder = os.path.dirname(os.path.abspath(path))
    with FolderLock(folder).waiting():
        if not os.path.exists(path):
            save_analysis(path, name, settings, inputs, compute())
        return read_analysis(path, name, settings, inputs, command, decode, schema,
                             remedy=f"delete {path} and rerun `{command}` to compute it again")
