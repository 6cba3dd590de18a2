from lab import datafiles
import os

import pytest
import torch

import data
from data import Split, batches, epoch_order, load_mnist, random_crop_flip, split_indices
from lab.errors import DataError
from conftest import MNIST_SIZES


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(100, 10, seed=3)
    again_train, again_val = split_indices(100, 10, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 10 and len(train) == 90
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 10, seed=4)[1], val)


def test_batches_slice_a_seeded_permutation():
    split = Split(torch.arange(10).float()[:, None], torch.arange(10))
    order = epoch_order(10, torch.Generator().manual_seed(0), torch.device("cpu"))
    same = epoch_order(10, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(order, same)
    got = list(batches(split, 4, order))
    assert [len(y) for _, y in got] == [4, 4, 2]
    seen = torch.cat([y for _, y in got])
    assert torch.equal(seen, order)  # every example once, in the permutation's order
    for x, y in got:
        assert torch.equal(x[:, 0].long(), y)  # inputs stay paired with their labels
    assert torch.equal(torch.cat([y for _, y in batches(split, 3)]), split.y)


def test_load_mnist_reads_idx_files_normalizes_and_splits(mnist_dir):
    ds = load_mnist(mnist_dir, torch.device("cpu"), n_val=50)
    assert len(ds.train) == MNIST_SIZES["train"] - 50 and len(ds.val) == 50
    assert len(ds.test) == MNIST_SIZES["t10k"]
    assert ds.train.x.shape[1] == 784 and ds.train.x.dtype == torch.float32
    lo = (0 - data.MNIST_MEAN) / data.MNIST_STD
    hi = (1 - data.MNIST_MEAN) / data.MNIST_STD
    assert ds.train.x.min() >= lo - 1e-5 and ds.train.x.max() <= hi + 1e-5
    again = load_mnist(mnist_dir, torch.device("cpu"), n_val=50)
    assert torch.equal(ds.val.y, again.val.y)


def test_missing_mnist_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(datafiles, "try_download", lambda make, data_dir: None)  # no network
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        load_mnist(str(tmp_path / "nothing"), torch.device("cpu"))
    assert os.path.join("nothing", "MNIST", "raw") in str(e.value)


def test_crop_flip_keeps_shapes_labels_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    # each output is a shifted (and maybe flipped) window of its own padded input
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert not torch.equal(out, x)  # it did augment something
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0)), out)  # seeded


def test_full_size_mnist_files_whose_labels_are_not_mnists_are_recorded_as_such():
    """Shuffled or edited labels train at chance: the run's record must not call that MNIST. (On
    the published label files, e.g. the lab's copy, mnist_source says 'MNIST'.)"""
    from data import mnist_source
    other = (torch.arange(60_000) % 10, torch.arange(10_000) % 10)
    assert mnist_source(*other) == "MNIST-format files whose labels are not MNIST's"
    assert mnist_source(torch.arange(300) % 10, torch.arange(100) % 10) == "MNIST"  # a small test copy
