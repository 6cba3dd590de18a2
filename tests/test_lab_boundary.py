"""lab/ is machinery that knows no exercise: it imports no science module (the checkpoint builder
excepted), reads no flag of a script but those lab.cli declares as shared, and names no field a
script adds to its records; and each training script's `main` calls its own `train` by name."""
import argparse
import ast
import importlib
import os
import re

import torch

from conftest import ROOT
from lab.cli import SHARED_FLAGS
from lab.runs import EPOCH_FIELDS, RECORD_FIELDS, SUMMARY_FIELDS
from test_imports import project_modules

LAB = os.path.join(ROOT, "lab")
SCRIPTS = ("ex1_mlp", "ex1_cnn", "ex2_why", "ex2_fcn", "ex2_cam", "ex2_finetune", "ex2_distill", "bench")
TRAINING_SCRIPTS = ("ex1_mlp", "ex1_cnn", "ex2_fcn", "ex2_finetune", "ex2_distill")
CHECKPOINT_BUILDER = "checkpoints.py"  # rebuilds a network from a checkpoint's description: models
# config keys every run has, which lab's run folder names carry ('res_n3_e8_s0_<digest>'), the
# record's own schema (lab.runs) and the meta utils.run_meta writes: not a script's
RUN_CONTRACT = ({"epochs", "seed", "config", "hardware", "data", "threads"} | set(RECORD_FIELDS)
                | set(SUMMARY_FIELDS) | set(EPOCH_FIELDS))
# words lab uses in their own sense: a device type (not ex1_cnn's --cpu), a progress bar's name
OWN_WORDS = {"cpu", "sweep"}


def lab_trees():
    for name in sorted(os.listdir(LAB)):
        if name.endswith(".py"):
            with open(os.path.join(LAB, name)) as f:
                yield name, ast.parse(f.read())


def parser_dests(parser):
    dests = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                dests |= parser_dests(sub)
        elif action.dest != "help":
            dests.add(action.dest)
    return dests


def script_flags():
    """{dest: script} of the flags a script declares that lab.cli does not declare as shared."""
    out = {}
    for script in SCRIPTS:
        for dest in parser_dests(importlib.import_module(script).make_parser()) - set(SHARED_FLAGS):
            out.setdefault(dest, script)
    return out


def script_metrics():
    """The fields scripts add to their records: the schemas they declare (*_FIELDS) and the
    distillation's per-epoch measures."""
    import ex2_distill
    fields = set(ex2_distill.Distillation(torch.nn.Identity(), 2.0, 0.5).epoch_metrics())
    for script in SCRIPTS:
        module = importlib.import_module(script)
        for name, value in vars(module).items():
            if name.endswith("_FIELDS") and isinstance(value, dict):
                fields |= set(value)
    return fields - RUN_CONTRACT


def test_lab_imports_no_science_module_but_the_checkpoint_builder():
    science = set(project_modules())
    found = {}
    for name, tree in lab_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = {node.module.split(".")[0]}
            else:
                continue
            if modules & science:
                found.setdefault(name, set()).update(modules & science)
    assert found == {CHECKPOINT_BUILDER: {"models"}}


def test_lab_names_no_flag_or_metric_of_a_script():
    flags, metrics = script_flags(), script_metrics()
    assert {"analyses", "select", "blocks", "depth"} <= set(flags)  # the test sees scripts' own flags
    assert {"train_ce", "teacher_seconds"} <= metrics
    named = []
    for name, tree in lab_trees():
        for node in ast.walk(tree):
            reads_args = isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "args"
            if reads_args and node.attr not in SHARED_FLAGS:
                named.append(f"{name}: args.{node.attr}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words = set(re.findall(r"--([a-z][a-z0-9-]*)", node.value))
                for dest in {w.replace("-", "_") for w in words} & set(flags):
                    named.append(f"{name}: --{dest} of {flags[dest]}")
                if node.value in set(flags) - RUN_CONTRACT - OWN_WORDS or node.value in metrics:
                    named.append(f"{name}: {node.value!r}")
    assert not named


COMMANDS = SCRIPTS + ("reproduce",)
MAX_FACE_NAMES = 12


def lab_imports(tree):
    """[(module, name)] of a module's imports from lab."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lab":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "*") for a in node.names if a.name.split(".")[0] == "lab"]
    return out


def test_lab_has_a_small_face_and_the_scripts_import_only_it():
    """lab/__init__.py lists its public face; each exercise script imports those names and no
    other of lab, and no command imports more than MAX_FACE_NAMES names from lab."""
    import lab
    assert 8 <= len(lab.__all__) <= MAX_FACE_NAMES + 2 and all(hasattr(lab, n) for n in lab.__all__)
    for script in COMMANDS:
        with open(os.path.join(ROOT, script + ".py")) as f:
            imports = lab_imports(ast.parse(f.read()))
        assert len(imports) <= MAX_FACE_NAMES, (script, imports)
        if script in SCRIPTS:
            below = [f"{m}.{n}" for m, n in imports if m != "lab" or n not in lab.__all__]
            assert not below, f"{script} imports from below lab's face: {below}"


def test_each_training_script_main_calls_its_own_train_by_name():
    """No callback record between `main` and the loop: a reader follows main -> train -> fit.
    (A sweep hands `train` itself to its worker processes, named in main.)"""
    for script in TRAINING_SCRIPTS:
        with open(os.path.join(ROOT, script + ".py")) as f:
            tree = ast.parse(f.read())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "train" in functions, script
        names = {n.id for n in ast.walk(functions["main"]) if isinstance(n, ast.Name)}
        assert "train" in names, f"{script}: main does not name train"
