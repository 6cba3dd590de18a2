"""Tiny synthetic datasets in the real on-disk formats, so the real loaders run in tests."""
import os
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the tests' models are tiny: threads would only wait for each other (see bench.py mlp)
torch.set_num_threads(1)

MNIST_SIZES = {"train": 300, "t10k": 100}  # tests pass --val-size 50


def assert_one_line_error(code, stderr, message):
    """Exit code 2, the error in one line (the last; progress bars may come before), no traceback."""
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], stderr
    assert stderr.rstrip().endswith(errors[0])
    assert "Traceback" not in stderr


def cli_in_process(module, argv, capsys):
    """What `python <script> argv` does, without starting an interpreter: (exit code, stderr).

    An exception that is not turned into a one-line error propagates and fails the test.
    """
    from lab.cli import run_cli
    with pytest.raises(SystemExit) as exit_:
        run_cli(module.main, module.get_args(argv), module.PROG,
                *([module.INTERRUPTED] if hasattr(module, "INTERRUPTED") else []))
    return exit_.value.code, capsys.readouterr().err


def cli_subprocess(script, argv):
    """The real thing, once per script: (exit code, stderr); downloads fail fast, as offline."""
    import subprocess
    env = dict(os.environ, https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc.returncode, proc.stderr + proc.stdout


def write_idx(path, array):
    """Write a uint8 array in the idx format of the MNIST files (magic 0x08 = ubyte)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def make_mnist(root, seed=0):
    """A learnable tiny MNIST: each class lights up its own block of pixels."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in MNIST_SIZES.items():
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c:2 * c + 6, 4:24] = 255
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return make_mnist(str(tmp_path_factory.mktemp("mnist")))


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")
CIFAR_PER_CLASS = {"train": 4, "test": 2}


def cifar_images(n, seed):
    """n learnable 32x32 RGB images and labels: class c is a bright band at rows 3c..3c+2."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 80, (n, 32, 32, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 3 * c:3 * c + 3] = 250
    return images, labels


def make_cifar_folder(root, ext="png"):
    """A tiny CIFAR-10 copy in ImageFolder layout: root/{train,test}/<class>/<n>.<ext>."""
    from PIL import Image
    for split, per_class in CIFAR_PER_CLASS.items():
        images, labels = cifar_images(10 * per_class, seed=len(split))
        for i, (img, c) in enumerate(zip(images, labels)):
            folder = os.path.join(root, split, CIFAR_CLASSES[c])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.{ext}"))
    return root


def make_cifar_official(root):
    """A tiny CIFAR-10 in torchvision's own format (cifar-10-batches-py pickles)."""
    import pickle
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        images, labels = cifar_images(20, seed=i)
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                 "labels": labels.tolist()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": list(CIFAR_CLASSES)}, f)
    return root


def assert_resumes_to_the_uninterrupted_run(train, config, data, tmp_path, monkeypatch, epochs=2):
    """train(config, data, device, out_dir, progress) of `epochs` epochs, killed in its last epoch
    and rerun, ends with the epochs (times aside) and test accuracy of an uninterrupted run."""
    device = torch.device("cpu")
    _, whole = train(config, data, device, str(tmp_path / "whole"), progress=False)
    kill_in_epoch(monkeypatch, epochs)
    with pytest.raises(KeyboardInterrupt):
        train(config, data, device, str(tmp_path / "cut"), progress=False)
    monkeypatch.undo()
    _, resumed = train(config, data, device, str(tmp_path / "cut"), progress=False)
    untimed = [[{k: v for k, v in e.items() if not k.endswith("seconds")} for e in r["epochs"]]
               for r in (whole, resumed)]
    assert len(untimed[0]) == epochs and untimed[0] == untimed[1]
    assert whole["test_acc"] == resumed["test_acc"]


def kill_in_epoch(monkeypatch, n):
    """Make training.train_one_epoch raise KeyboardInterrupt in its n-th call: it stands for kill -9,
    nothing after that point runs (monkeypatch.undo() restores it)."""
    import training
    real, calls = training.train_one_epoch, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", killed)


@pytest.fixture
def cifar_folder(tmp_path):
    return make_cifar_folder(str(tmp_path / "cifar"))


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "slow: starts interpreters or processes (pytest -m 'not slow' skips them)")
    from lab.cli import torchvision_problem
    problem = torchvision_problem()
    if problem:  # one line, not a collection error per test file
        pytest.exit(problem, returncode=2)
