"""Networks rebuilt from checkpoints: the one module of the package that knows the models.

A checkpoint carries the description (`arch`) that rebuilds its network, so no caller needs a
script's `build_model`; the description, the weights and the fields a caller reads are checked.
"""
import torch

from lab.errors import UserError
from lab.files import all_finite, load_checkpoint
from lab.kinds import fields_problem
from lab.runs import check_checkpoint_of_run
from models import build_model

ARCH_FIELDS = {"name": str, "kwargs": dict}  # what models.build_model reads
MAX_ARCH_INT = 100_000  # above any width, depth or class count here: a larger one is damage or a trap


def _shapes_problem(arch, state):
    """Why the weights `state` cannot be the network `arch` describes (None if they can), found
    without allocating it: its integers are bounded, then it is built on the meta device (shapes,
    no memory) and compared key by key, so an arch of width 200000 never reaches the allocator."""
    for key, value in arch["kwargs"].items():
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_ARCH_INT:
            return f"its arch asks for {key} {value}, outside 0..{MAX_ARCH_INT:,}"
    with torch.device("meta"):
        skeleton = build_model(arch)
    if not isinstance(state, dict):
        return "no state dict of weights"
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key in sorted(set(wanted) | set(state)):
        have = tuple(state[key].shape) if isinstance(state.get(key), torch.Tensor) else None
        if have != wanted.get(key):
            found = "missing" if have is None else have  # a scalar's shape () is falsy, not missing
            needs = wanted.get(key, "none")
            return f"its weights do not fit its arch: {key} is {found}, the arch needs {needs}"
    return None

def load_model(path, device, expected, remedy, keys=("model", "arch", "config"), config_fields=None,
               fields=None):
    """(model in eval mode, checkpoint): the network a checkpoint describes, rebuilt and
    loaded. Refused in one line: a checkpoint of anything but an `expected` network, one whose
    `config` lacks `config_fields` or whose top level lacks `fields` (each {key: Number or
    type}, as lab.kinds.fields_problem checks them), weights that are not all finite, and one
    whose config is not that of the run record beside it (lab.runs.check_checkpoint_of_run)."""
    ckpt = load_checkpoint(path, remedy, device, keys=keys)

    def refuse(problem):
        return UserError(f"{path} is not a checkpoint of a {expected.__name__} ({problem}); {remedy}")

    problem = fields_problem(ckpt.get("arch"), ARCH_FIELDS)
    if problem:
        raise refuse(f"its arch has {problem}")
    try:
        problem = _shapes_problem(ckpt["arch"], ckpt["model"])
        model = None if problem else build_model(ckpt["arch"])
    except (ValueError, TypeError, KeyError) as e:
        raise refuse(str(e).splitlines()[0][:80] or type(e).__name__)
    if problem:
        raise refuse(problem)
    if not isinstance(model, expected):
        raise refuse(f"a {type(model).__name__}")
    for what, mapping, wanted in (("config", ckpt.get("config"), config_fields or {}),
                                  ("top level", ckpt, fields or {})):
        problem = fields_problem(mapping, wanted)
        if problem:
            raise refuse(f"its {what} has {problem}")
    try:
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise refuse(str(e).splitlines()[0][:80] or type(e).__name__)
    if not all_finite(model.state_dict()):
        raise refuse("non-finite weights, NaN or inf: a diverged or damaged network")
    check_checkpoint_of_run(path, ckpt, remedy)  # a best.pt swapped between run folders is refused
    return model.to(device).eval(), ckpt


def load_state_dict_file(path, model, remedy):
    """Load a bare state dict (a published weights file) into `model`, read with weights_only=True
    and refused in one line unless every key of the file is one of the model's and every one of
    the model's is in the file, with its shape, and every weight is finite."""
    state = load_checkpoint(path, remedy, keys=())
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors; {remedy}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit a {type(model).__name__} "
                        f"({str(e).splitlines()[1].strip()[:100] if len(str(e).splitlines()) > 1 else e}); "
                        f"{remedy}")
    if not all_finite(model.state_dict()):
        raise UserError(f"{path} holds non-finite weights (NaN or inf); {remedy}")
    return model
