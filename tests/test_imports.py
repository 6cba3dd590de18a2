"""The project's modules import in one direction: no circle, no script importing a script."""
import ast
import os
import sys

from conftest import ROOT

SCRIPTS = {"ex1_mlp", "ex1_cnn", "ex2_cam", "ex2_distill", "ex2_fcn", "ex2_finetune", "ex2_why", "bench"}
LEAVES = {"data", "models"}  # import nothing of the project


def project_modules():
    return sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))


def imports_of(module):
    """The project modules that `module` imports, at the top or inside functions."""
    with open(os.path.join(ROOT, module + ".py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(project_modules())


def test_no_script_is_imported_and_leaves_import_nothing_of_the_project():
    graph = {m: imports_of(m) for m in project_modules()}
    for module, deps in graph.items():
        assert not deps & SCRIPTS, f"{module} imports the script(s) {deps & SCRIPTS}"
        if module in LEAVES:
            assert not deps, f"{module} imports {deps}"


def test_the_import_graph_has_no_circle():
    graph = {m: imports_of(m) for m in project_modules()}
    done, visiting = set(), []

    def visit(m):
        assert m not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(m):] + [m])}"
        if m in done:
            return
        visiting.append(m)
        for d in graph[m]:
            visit(d)
        visiting.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_help_loads_neither_torchvision_nor_matplotlib():
    """--help and flag errors answer after importing torch alone: every script's module and its
    parser, in one fresh interpreter, leave torchvision and matplotlib unloaded."""
    import subprocess
    code = ("import contextlib, io, sys\n"
            f"for name in {sorted(SCRIPTS)!r}:\n"
            "    module = __import__(name)\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        module.make_parser().parse_args(['--help'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'matplotlib'}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_torchvision_that_does_not_load_is_one_line_naming_both_versions(monkeypatch, capsys):
    """A CPU torch beside a CUDA torchvision fails in torchvision's operator registration; every
    script says so first, in one line, with the versions and the fix."""
    import builtins

    import pytest
    from conftest import assert_one_line_error
    from lab.cli import run_cli
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda args: None, None, "ex1_mlp.py")
    monkeypatch.undo()
    stderr = capsys.readouterr().err
    assert_one_line_error(exit_info.value.code, stderr, "torchvision::nms does not exist")
    assert "torch 2." in stderr and "torchvision 0." in stderr and "pip install -r requirements.txt" in stderr
