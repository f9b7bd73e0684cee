"""Where teachers live on disk, and loading one straight into the black box.

A teacher file comes in one of three formats, told apart by what its zip holds
(a TorchScript file often ends in .pt, like a checkpoint):
- checkpoint: pretrain.py's weights for a registry net, loaded with
  weights_only=True (data only: no code from the file runs);
- export: a torch.export ExportedProgram (.pt2) of any architecture;
- torchscript: a torch.jit file of any architecture (deprecated by torch).
Loading either of the last two can run code that the file carries (README,
"What a user must trust"; tests/test_serve.py shows it happening), so they
load only with trust_code=True. Their input shape, class count and test
accuracy come from the file's extra meta.json:
{"input_shape": [C, H, W], "classes": K, "test_acc": percent}.
"""
import contextlib
import hashlib
import json
import math
import os
import zipfile
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from datasets import get_spec
from models import build_model
from utils.blackbox import BlackBoxTeacher
from utils.run import UserError, check_intact, load_checkpoint, save_checkpoint, to_device


TEACHER_KEYS = {"dataset", "net", "channels", "size", "classes", "test_acc", "state_dict"}
PROGRAMS = {"export": "a torch.export program", "torchscript": "a TorchScript file"}
META_FILE = "meta.json"


class TeacherInfo(NamedTuple):
    """What a teacher file says about its network; None where it does not say."""
    input_shape: Optional[tuple]  # (C, H, W)
    classes: Optional[int]
    test_acc: Optional[float]  # % on the real test set, as whoever trained it measured it
    dataset: Optional[str]  # dataset and registry net: pretrain.py's checkpoints only
    net: Optional[str]


def file_sha256(path: str):
    """The file's SHA-256 in hex, or None if there is no such file."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_teacher_path(save_dir: str, dataset: str, net: str) -> str:
    """The one place pretrain.py writes, and ideal.py looks for, a teacher."""
    return os.path.join(save_dir, "teachers", f"{dataset}_{net}.pt")


def save_teacher(model, path: str, dataset: str, net: str, shape: tuple, test_acc: float) -> None:
    channels, size, classes = shape
    save_checkpoint({"dataset": dataset, "net": net, "channels": channels, "size": size,
                     "classes": classes, "test_acc": test_acc, "state_dict": model.state_dict()}, path)


def teacher_format(path: str) -> str:
    """'checkpoint', 'export' or 'torchscript', from the names inside the file."""
    if not zipfile.is_zipfile(path):
        return "checkpoint"  # torch.save's legacy format; load_checkpoint judges it
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "checkpoint"


def read_meta(path: str) -> dict:
    """The file's extra meta.json, read straight from the zip (nothing of the
    model is loaded); {} if it has none."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")]
        text = archive.read(names[0]) if names else b"{}"
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not valid_meta(meta):
        raise UserError(f"{path}: extra/{META_FILE} must be a JSON object like "
                        '{"input_shape": [C, H, W], "classes": K, "test_acc": 99.2}')
    return meta


def valid_meta(meta) -> bool:
    """input_shape [C, H, W] and classes positive ints, test_acc a number; each may be left out."""
    if not isinstance(meta, dict):
        return False
    shape = meta.get("input_shape", [1, 1, 1])
    sizes = [*shape, meta.get("classes", 1)] if isinstance(shape, list) and len(shape) == 3 else [0]
    return (all(isinstance(v, int) and v > 0 for v in sizes)
            and isinstance(meta.get("test_acc", 0.0), (int, float)))


class ExportedTeacher(nn.Module):
    """An ExportedProgram as a module that the black box can call. The
    program's own module refuses train() and eval() (its mode was fixed when it
    was exported), so it is kept out of the module tree."""

    def __init__(self, program_module):
        super().__init__()
        object.__setattr__(self, "program", program_module)  # not registered as a child module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def check_dynamic_batch(path: str, program) -> None:
    """The program must take one image batch whose size was left free at export."""
    names = set(program.graph_signature.user_inputs)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(inputs) != 1 or not isinstance(inputs[0].meta["val"].shape[0], torch.SymInt):
        raise UserError(f"{path}: the program must take one image batch of any size; export it with "
                        "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}")


def load_program(path: str, fmt: str, device, trust_code: bool) -> nn.Module:
    """A torch.export or TorchScript teacher on `device`; only when trusted."""
    if not trust_code:
        raise UserError(f"{path} is {PROGRAMS[fmt]}: loading it can run code that the file carries; "
                        "pass --trust_teacher_code only if you trust whoever made it")
    try:
        if fmt == "torchscript":
            return torch.jit.load(path, map_location=device)
        program = torch.export.load(path)
    except Exception as err:  # noqa: BLE001 - a damaged program reaches torch's deserialiser as TypeError, ...
        raise UserError(f"not a loadable {PROGRAMS[fmt]}: {path} ({type(err).__name__})") from None
    check_dynamic_batch(path, program)
    return ExportedTeacher(program.module().to(device))


def read_teacher_checkpoint(path: str, device) -> dict:
    ckpt = load_checkpoint(path, device)
    if not TEACHER_KEYS <= ckpt.keys():
        raise UserError(f"{path} is not a teacher written by pretrain.py (it lacks "
                        f"{', '.join(sorted(TEACHER_KEYS - ckpt.keys()))}); pass the teacher file, not a run's last.pt")
    return ckpt


def load_teacher(path: str, device, trust_code: bool = False):
    """Any teacher file -> (network on `device`, TeacherInfo). Callers hand
    the network over only inside a BlackBoxTeacher."""
    fmt = teacher_format(path)
    if fmt != "checkpoint":
        check_intact(path)  # torch.export.load and torch.jit.load check no CRC: flipped bits load as other weights
        meta = read_meta(path)
        model = load_program(path, fmt, device, trust_code)
        shape = tuple(meta["input_shape"]) if "input_shape" in meta else None
        return model, TeacherInfo(shape, meta.get("classes"), meta.get("test_acc"), None, None)
    ckpt = read_teacher_checkpoint(path, device)
    model = to_device(build_model(ckpt["net"], ckpt["channels"], ckpt["size"], ckpt["classes"]), device)
    model.load_state_dict(ckpt["state_dict"])
    info = TeacherInfo((ckpt["channels"], ckpt["size"], ckpt["size"]), ckpt["classes"], ckpt["test_acc"],
                       ckpt["dataset"], ckpt["net"])
    return model, info


def check_teacher_fits(path: str, info: TeacherInfo, dataset: str) -> None:
    """A teacher that declares its input shape or class count must match the dataset's."""
    spec = get_spec(dataset)
    want = (spec.channels, spec.size, spec.size)
    if info.input_shape not in (None, want) or info.classes not in (None, spec.classes):
        raise UserError(f"teacher {path} takes {info.input_shape} images and answers {info.classes} classes; "
                        f"{dataset} has {want} images and {spec.classes} classes")


def load_blackbox_teacher(path: str, dataset: str, net: str, mode: str, budget: int, device,
                          trust_code: bool = False, autocast=contextlib.nullcontext):
    """Build the teacher from its file and hand it over only inside a
    BlackBoxTeacher, so no caller can reach the network itself. For a
    torch.export or TorchScript teacher, `net` names no teacher (only the
    student's default); net=None takes whatever net a checkpoint holds.
    `autocast`: what the teacher's forward passes run under
    (utils.run.amp_autocast). Returns (black box, teacher's test
    accuracy in % as its trainer measured it; NaN if the file does not say)."""
    if os.path.isdir(path):
        raise UserError(f"--teacher_ckpt {path} is a folder; pass the teacher's file (pretrain.py writes "
                        f"{default_teacher_path('SAVE_DIR', dataset, net)})")
    if not os.path.isfile(path):
        raise UserError(f"no teacher at {path}; train one first: "
                        f"python pretrain.py --dataset={dataset} --net={net or 'lenet'}")
    model, info = load_teacher(path, device, trust_code)
    if info.net is not None and (info.dataset != dataset or net not in (None, info.net)):
        raise UserError(f"teacher {path} is a {info.net} for {info.dataset}, "
                        f"not a {net or 'net'} for {dataset}; pass the right --teacher_ckpt")
    check_teacher_fits(path, info, dataset)
    return (BlackBoxTeacher(model, mode=mode, budget=budget, autocast=autocast),
            math.nan if info.test_acc is None else info.test_acc)
