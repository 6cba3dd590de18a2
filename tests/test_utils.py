import os

import pytest
import torch

from utils import count, save_atomic


class KilledWhileWriting:
    def __reduce__(self):
        raise KeyboardInterrupt  # stands for a kill in the middle of torch.save


def test_checkpoint_interrupted_mid_write_leaves_the_previous_one_whole(tmp_path):
    path = tmp_path / "best.pt"
    save_atomic({"epoch": 1, "weights": torch.arange(1000.0)}, path)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2, "weights": torch.zeros(1000), "bad": KilledWhileWriting()}, path)
    saved = torch.load(path)
    assert saved["epoch"] == 1 and torch.equal(saved["weights"], torch.arange(1000.0))
    assert os.listdir(tmp_path) == ["best.pt"]  # no temporary file left behind


def test_counts_agree_with_their_nouns():
    assert count(1, "run") == "1 run" and count(0, "run") == "0 runs"
    assert count(2, "worker process", "worker processes") == "2 worker processes"
