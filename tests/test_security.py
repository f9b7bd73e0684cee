"""Checkpoints load with weights_only=True: a crafted file cannot run code."""
import os

import numpy as np
import pytest
import torch

from utils import run
from utils.teacher import load_blackbox_teacher


class RunsCommand:
    """Unpickling this calls os.system: what an attacker puts in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path, marker, base=None):
    """A checkpoint that looks right but carries one extra, code-running entry.
    torch.save pickles it like any object; only a full unpickle would run it."""
    torch.save({**(base or {}), "extra": RunsCommand(marker)}, path)


def test_malicious_teacher_does_not_run(tmp_path):
    marker, path = tmp_path / "pwned", str(tmp_path / "teacher.pt")
    write_malicious(path, marker, {"dataset": "mnist", "net": "lenet", "channels": 1, "size": 28,
                                   "classes": 10, "test_acc": 99.0, "state_dict": {}})
    with pytest.raises(run.UserError, match=r"not a checkpoint that can be loaded safely: .* names code to run "
                                            r"\(posix.system\)"):
        load_blackbox_teacher(path, "mnist", "lenet", "hard", 0, "cpu")
    assert not marker.exists()


def test_an_old_numpy_rng_state_is_named_as_such(tmp_path):
    """A last.pt from before checkpoints held only tensors (its numpy RNG state
    was a pickled array): the refusal says what it is and what to do."""
    path = str(tmp_path / "last.pt")
    torch.save({"rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(run.UserError, match=r"names code to run \(numpy.* before checkpoints held only tensors "
                                            r"\(start a new run\)"):
        run.load_checkpoint(path, "cpu")


def test_plain_torch_load_would_have_run_it(tmp_path):
    """The guard above is real: the same file does run its command when fully unpickled."""
    marker, path = tmp_path / "pwned", str(tmp_path / "teacher.pt")
    write_malicious(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", os.urandom(4096)],
                         ids=["empty", "truncated", "random"])
def test_unreadable_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "teacher.pt"
    path.write_bytes(content)
    with pytest.raises(run.UserError, match="not a readable checkpoint|not a checkpoint that can"):
        run.load_checkpoint(str(path), "cpu")


def test_truncated_real_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "last.pt"
    run.save_checkpoint({"w": torch.randn(1000)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(run.UserError, match="not a readable checkpoint"):
        run.load_checkpoint(str(path), "cpu")


def test_run_checkpoint_as_teacher_is_refused(tmp_path):
    path = str(tmp_path / "last.pt")
    run.save_checkpoint({"model": {}, "epoch": 3}, path)
    with pytest.raises(run.UserError, match="not a teacher written by pretrain.py"):
        load_blackbox_teacher(path, "mnist", "lenet", "hard", 0, "cpu")


def test_rng_state_loads_safely(tmp_path):
    """Every RNG stream, numpy's included, survives a weights_only round trip."""
    import random

    import numpy as np
    path = str(tmp_path / "rng.pt")
    run.save_checkpoint({"rng": run.rng_state()}, path)
    first = (torch.rand(3), random.random(), np.random.rand(2))
    run.set_rng_state(torch.load(path, weights_only=True)["rng"])
    second = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert np.array_equal(first[2], second[2])
