"""What a student meets beside the science: the device, the seeds, and what ran the code."""
import os
import platform

import torch

from lab.cli import count
from lab.errors import UserError


def mps_available():
    """True on Apple silicon with PyTorch's Metal backend (never on our Linux machines)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def get_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU; asking for a device the machine does not
    have is an error. (MPS is untested here: we have no Mac.)"""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    if name == "mps" and not mps_available():
        raise UserError("--device mps requested but PyTorch's MPS backend is not available (it needs "
                        "Apple silicon and macOS 12.3 or later)")
    if name == "mps":
        # an op MPS lacks then runs on the CPU, with one warning from PyTorch naming it
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    return torch.device(name)


def machine(device):
    """The processor: a GPU's name, or e.g. 'CPU (x86_64, 2 cores)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU ({platform.machine()}, {count(os.cpu_count(), 'core')})"


def hardware(device):
    """What ran the code, threads included, for figure captions and results."""
    if device.type != "cpu":
        return machine(device)
    return f"{machine(device)[:-1]}, {count(torch.get_num_threads(), 'thread')} per process)"


def run_meta(data, device, **extra):
    """A run record's meta: its data (source and signature), hardware, `extra` and provenance."""
    meta = {"data": data.source, "hardware": hardware(device), **extra, **provenance()}
    if device.type == "cpu":  # a resume must use as many: CPU kernels sum in an order they set
        meta["threads"] = torch.get_num_threads()
    if data.signature:
        meta["data_signature"] = data.signature
    return meta


def provenance():
    """What code made a run, for its record's meta: the git commit (when there is one) and torch."""
    import subprocess
    meta = {"torch": str(torch.__version__)}  # a str subclass that weights_only loading refuses
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__)))
        if commit.returncode == 0:
            meta["commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return meta


def seed_everything(seed):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


