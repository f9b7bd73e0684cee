"""Run bookkeeping shared by both scripts: device, seeds, run folders, atomic
writes, and turning user mistakes into one-line errors."""
import contextlib
import functools
import json
import os
import pickle
import random
import re
import shutil
import sys
import zipfile

import numpy as np
import torch

from datasets.common import atomic_open, remove_temp_files


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback."""


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when visible (CUDA_VISIBLE_DEVICES picks which), else CPU.
    Under torchrun (LOCAL_RANK set), 'auto' and 'cuda' mean cuda:LOCAL_RANK:
    one GPU per process."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    elif name.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would take it
        raise UserError(f"--device {name}: under torchrun each process takes cuda:LOCAL_RANK; "
                        "use --device auto or cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta, ...: never tested here, and mostly not built in
        raise UserError(f"--device {name}: only cpu and cuda devices are supported; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is visible; use --device cpu")
    return device


def amp_autocast(device: torch.device, amp: bool):
    """What the forward passes run under: with --amp on CUDA, bf16 autocast
    (no loss scaling: bf16 has float32's range); without it, nothing, so a
    default run is unchanged bit for bit. --amp on the CPU is refused, not
    ignored: the flag is for CUDA (CPU bf16 autocast was never measured here),
    and a flag that silently did nothing would mislabel a run. Returns a
    function making a fresh context per use (one torch.autocast object must not
    be entered twice at once)."""
    if not amp:
        return contextlib.nullcontext
    if device.type != "cuda":
        raise UserError(f"--amp is bf16 autocast for CUDA, and this run is on {device}; drop --amp")
    return functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)


def to_device(module, device):
    """Move a network to `device` in channels_last layout: faster for LeNet's
    forward and IDEAL's generator step on the CPU, and the layout tensor cores
    prefer on CUDA (docs/PERFORMANCE.md). The convolutions then sum in another
    order, so a seeded run is not bit-identical to one in the default layout:
    the differences grow over training, and its final accuracy moved by about a
    point, within the seeds' spread ("Speed changes keep results")."""
    return module.to(device, memory_format=torch.channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict:
    """Every RNG a run draws from, so a resumed run continues the same streams.
    Only tensors, lists and plain numbers: a checkpoint must load under
    torch.load(weights_only=True), which refuses numpy objects."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        # load_checkpoint maps every tensor to the run's device, but CUDA's
        # generators take their state as a CPU byte tensor (a resume on a GPU
        # failed with "RNG state must be a torch.ByteTensor"); a run saved with
        # more GPUs than this machine has restores the ones it has
        states = state["cuda"][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in states])


def save_checkpoint(obj, path: str) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


# What to do about a damaged file, by its name in a run folder (a teacher or anything else: the default).
REMEDIES = {
    "last.pt": "the run cannot resume from it: restore it from a backup, or start a new run",
    "best.pt": "it holds only the best student so far: remove it and resume (best_acc restarts from the resume)",
    "labelled.pt": "it holds the batch labelled after last.pt: remove it and resume; the teacher is asked for "
                   "that batch again, and paid again",
}
DEFAULT_REMEDY = "restore the file, or make it again (a teacher: pretrain.py)"


def remedy(path: str) -> str:
    return REMEDIES.get(os.path.basename(path), DEFAULT_REMEDY)


def check_intact(path: str) -> None:
    """Refuse a damaged checkpoint before torch reads it. torch.save writes a
    zip with a CRC-32 of every entry, which torch.load never checks: a file
    with flipped bits loads silently, with other weights. testzip() checks them."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            legacy = f.read(1) == b"\x80"  # torch.save's format before zips: a pickle
        if not legacy:
            raise UserError(f"not a readable checkpoint (empty, truncated, or another kind of file): {path} is "
                            f"neither a whole torch.save zip nor a pickle; {remedy(path)}")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        damaged = f"its zip directory ({type(err).__name__})"
    if damaged:
        raise UserError(f"damaged checkpoint: {path} fails its checksum at {damaged} (a disk, copy or transfer "
                        f"error); {remedy(path)}")


def load_checkpoint(path: str, device) -> dict:
    """torch.load with weights_only=True: tensors, dicts, lists and numbers only.
    A full unpickle would run whatever code a crafted file names (a teacher
    passed around, a tampered last.pt); this refuses such a file instead.
    Every entry's checksum is checked first (check_intact)."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}" + (" (a folder)" if os.path.isdir(path) else ""))
    check_intact(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL (\S+)", str(err))
        raise UserError(f"not a checkpoint that can be loaded safely: {path} names code to run "
                        f"({named.group(1) if named else 'an object that is not a tensor'}); either it was not "
                        "made by this project, or it is a last.pt from before checkpoints held only tensors "
                        "(start a new run)") from None
    except Exception as err:  # noqa: BLE001 - random bytes reach the unpickler as IndexError, KeyError, ...
        raise UserError(f"not a readable checkpoint (empty, truncated or corrupt): {path} "
                        f"({type(err).__name__}); {remedy(path)}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"not a checkpoint of this project (a {type(ckpt).__name__}, not a dict): {path}")
    return ckpt


def save_json(obj, path: str) -> None:
    with atomic_open(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())


def save_args(args, run_dir: str) -> None:
    """args.json: the resolved arguments, and the torch thread count, on which a
    CPU run's numbers depend (compare.py reports it for runs still under way)."""
    save_json({**vars(args), "threads": torch.get_num_threads()}, os.path.join(run_dir, "args.json"))


def make_run_dir(save_dir: str, kind: str, exp_name: str, resume: bool) -> str:
    """runs/<kind>/<exp_name>. A new run never reuses a folder (it takes
    exp_name-2, -3, ...), so no earlier run is overwritten; --resume needs it,
    and first deletes the temporary files of a write that a kill cut short."""
    base = os.path.join(save_dir, kind, exp_name)
    if resume:
        if not os.path.isfile(os.path.join(base, "last.pt")):
            raise UserError(f"--resume: no run to resume at {base} (no last.pt); check --save_dir/--exp_name")
        remove_temp_files(base)
        return base
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    os.makedirs(path)
    return path


def single_process(script: str) -> None:
    """Refuse to run under torchrun with more than one process: each would
    keep its own query count and ask the teacher for itself, so the run would
    pay N times for one student."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"{script} runs as one process (torchrun started {os.environ['WORLD_SIZE']}): each would "
                        "ask the teacher for itself and pay again; run it with python (torchrun is for pretrain.py)")


def run_cli(entry, errors=()) -> None:
    """Call entry() (argument parsing included); print a user error as one line, exit 2."""
    try:
        entry()
    except (UserError, *errors) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def removed_unless_started(run_dir: str):
    """Delete a run folder again if the run fails before its first last.pt, so
    a failed start leaves no empty folder behind (a started run is kept)."""
    try:
        yield
    except BaseException:
        if not os.path.isfile(os.path.join(run_dir, "last.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
