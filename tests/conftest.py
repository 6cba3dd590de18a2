"""Tiny synthetic datasets in the real on-disk formats, so the real loaders run in tests."""
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MNIST_SIZES = {"train": 300, "t10k": 100}  # tests pass --val-size 50


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
