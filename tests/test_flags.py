"""Every numeric flag of every script, fed the values at and past its edges: each is refused
with exit code 2 and one line naming the flag, or parses to a finite value in its range."""
import argparse
import importlib
import math

import pytest

from lab.kinds import SHARD, Number

# (module, the words before the flags): ex2_cam's flags live in its two subcommands
SCRIPTS = [("ex1_mlp", []), ("ex1_cnn", []), ("ex2_why", []), ("ex2_fcn", []), ("ex2_cam", ["cifar10"]),
           ("ex2_cam", ["imagenette"]), ("bench", ["mlp"])]
EDGES = ["0", "-1", "nan", "inf", "-inf", "1e30", str(2 ** 64), str(-2 ** 64), "0.5", "1e-300", "ten"]


def actions(parser, words):
    """The parser's actions, those of the subcommand `words` names included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from actions(action.choices[words[0]], words[1:])
        else:
            yield action


def numeric_flags():
    for name, words in SCRIPTS:
        module = importlib.import_module(name)
        for action in actions(module.make_parser(), words):
            if action.option_strings and action.type not in (None, SHARD):  # K/N: test_a_shard_count_...
                yield pytest.param(module, words, action, id=f"{name}{''.join('-' + w for w in words)}"
                                                            f"{action.option_strings[0]}")


def test_every_numeric_flag_goes_through_the_one_check():
    flags = list(numeric_flags())
    assert len(flags) >= 40
    for param in flags:
        _, _, action = param.values
        assert isinstance(action.type, Number), action.option_strings


@pytest.mark.parametrize("module,words,action", list(numeric_flags()))
def test_edge_values_are_refused_in_one_line_or_in_range(module, words, action, capsys):
    check = action.type
    limits = [check.low, check.high, check.low - 1, check.high + 1]
    for value in EDGES + [repr(v) for v in limits]:
        flag = action.option_strings[0]
        try:
            args = module.get_args(words + [flag, value])
        except SystemExit as e:
            err = capsys.readouterr().err
            assert e.code == 2, (flag, value)
            assert err.count("\n") == 1 and flag in err and "Traceback" not in err, (flag, value, err)
            continue
        parsed = getattr(args, action.dest)
        assert isinstance(parsed, check.kind) and math.isfinite(parsed), (flag, value)
        assert check.low <= parsed <= check.high, (flag, value)
        assert not (check.open_low and parsed == check.low), (flag, value)


def test_messages_say_why():
    import ex1_cnn
    import ex2_why
    with pytest.raises(SystemExit):
        ex1_cnn.get_args(["--momentum", "0"])
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(0, 1\).*Nesterov"):
        next(a for a in ex1_cnn.make_parser()._actions if a.dest == "momentum").type("0")
    with pytest.raises(argparse.ArgumentTypeError, match="overflow"):
        next(a for a in ex2_why.make_parser()._actions if a.dest == "span").type("1e30")


def test_a_shard_count_past_any_sweep_is_one_line(capsys):
    import ex1_cnn
    with pytest.raises(SystemExit) as e:
        ex1_cnn.get_args(["--sweep", "--shard", "0/1000000000"])
    assert e.value.code == 2 and "--shard" in capsys.readouterr().err


@pytest.mark.parametrize("cuda,mps,expected",
                         [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_the_default_device_is_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    """Untested on a Mac (we have none): the choice is tested with the availability mocked."""
    import torch
    import utils
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(utils, "mps_available", lambda: mps)
    assert utils.get_device("auto").type == expected


def test_mps_where_there_is_none_is_one_line(monkeypatch):
    import utils
    from lab.errors import UserError
    monkeypatch.setattr(utils, "mps_available", lambda: False)
    with pytest.raises(UserError, match="MPS backend is not available"):
        utils.get_device("mps")
