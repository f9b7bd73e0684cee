"""Checks every script runs on its flags before any work: numbers finite and
in range, names that are names. Each failure is one UserError line naming the
flag. NaN passes every `x < low` test, so each check is written as what a good
value satisfies (`low <= x`), which NaN never does."""
import json
import math
import os
import re
import tempfile

import torch

from utils.run import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]{0,127}")  # run and preset names: no path separator, no ..
SEED_MAX = 2 ** 32 - 1  # numpy's seeds stop here


def check_positive(args, *names) -> None:
    """Each --name must be a finite number above 0."""
    for name in names:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name} must be a finite number > 0, not {value}")


def check_seed(args) -> None:
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed must be 0 to {SEED_MAX}, not {args.seed}")


def check_name(value: str, flag: str) -> str:
    """A run or preset name is a name, not a path: it never leaves its folder."""
    if not NAME.fullmatch(value or ""):
        raise UserError(f"--{flag} {value!r}: a name of letters, digits and . _ + = , - "
                        "(no / and no leading dot), at most 128 characters")
    return value


def check_save_dir(path: str, flag: str = "save_dir") -> None:
    """A folder the run can write in, made now if need be, so that a file in
    its place or a folder without write permission is one line before any work."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=path)
    except OSError as err:
        raise UserError(f"--{flag} {path}: cannot write there ({err.strerror or err}); "
                        f"choose a folder you may write in") from None
    probe.close()


def memory_bytes() -> int:
    """This machine's memory (RAM; a GPU's own is checked by torch when used)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(sizes: dict, share: float = 0.5) -> None:
    """sizes: {what, in flag terms: float elements of one tensor}. A tensor
    over `share` of the machine's memory is refused before torch tries to make
    it (a traceback, or a machine lost to swapping)."""
    limit = share * memory_bytes()
    for what, elements in sizes.items():
        if 4 * elements > limit:
            raise UserError(f"{what} needs {4 * elements / 2 ** 30:,.1f} GiB for one tensor, more than half of "
                            f"this machine's {memory_bytes() / 2 ** 30:.0f} GiB; choose smaller sizes")


def check_all_finite(args) -> None:
    """Every float flag (and every float in a list flag) is a finite number:
    nan or inf in any of them runs a whole budget into NaN weights."""
    for name, value in sorted(vars(args).items()):
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f"--{name} must be a finite number, not {value}")


def check_common(args) -> None:
    """What every training script checks the same way: float flags finite, the
    seed in numpy's range, the run name a name, the save folder writable."""
    check_all_finite(args)
    if hasattr(args, "seed"):
        check_seed(args)
    if getattr(args, "exp_name", None) is not None:
        check_name(args.exp_name, "exp_name")
    if hasattr(args, "save_dir"):
        check_save_dir(args.save_dir)


def read_json_object(path: str, what: str) -> dict:
    """A JSON object from `path`, or one line saying where it is broken."""
    try:
        with open(path) as f:
            value = json.load(f)
    except ValueError as err:
        raise UserError(f"{what} {path} is not valid JSON ({err}); fix or remove it") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must be a JSON object of flags")
    return value


def check_preset_types(parser, values: dict, path: str) -> None:
    """Each preset value has the type its flag takes on the command line
    (an int flag takes no 1.5, a switch takes true or false, a choice one of its choices)."""
    actions = {a.dest: a for a in parser._actions}
    for name, value in values.items():
        action = actions[name]
        if action.nargs == 0:  # a switch
            ok = isinstance(value, bool)
        elif action.type is int:
            ok = type(value) is int
        elif action.type is float:
            ok = type(value) in (int, float)
        else:
            ok = value is None or isinstance(value, str)
        if ok and action.choices is not None and value is not None:
            ok = value in action.choices
        if not ok:
            raise UserError(f"preset {path}: {name} = {value!r} is not a value --{name} takes")


def check_diverged(losses: dict, modules, where: str, advice: str) -> None:
    """Stop a run whose losses or weights are no longer finite, before it saves
    them: last.pt keeps the last good state. One line, with `advice`."""
    bad = [name for name, value in (losses or {}).items() if not math.isfinite(value)]
    bad += [type(m).__name__ + " weights" for m in modules if not all_finite(m)]
    if bad:
        raise UserError(f"the run diverged at {where} ({', '.join(bad)} not finite); last.pt keeps the last good "
                        f"state, which a resume would only repeat: {advice}")


def all_finite(module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def generator_sizes(nz: int, ngf: int, size: int, batch: int) -> dict:
    """The largest tensors of models.Generator for these flags: its first
    layer's weight and its widest activation (see the generator's layers)."""
    return {"--nz and --ngf": nz * 2 * ngf * (size // 4) ** 2,
            "--batch_size and --ngf": batch * 2 * ngf * size ** 2}


def check_ranges(args, at_least_one=(), positive=(), non_negative=()) -> None:
    """One UserError line for the first flag out of its range (positive ones
    through check_positive). `not x >= 0` refuses NaN as well as the values below."""
    for name in at_least_one:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    check_positive(args, *positive)
    for name in non_negative:
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name} must be a finite number >= 0, not {getattr(args, name)}")


def check_flags(args, generator_batch: int) -> None:
    """What ideal.py and dfme.py check alike before any work: check_common;
    both nets fit the dataset's image size; the generator's largest tensors at
    `generator_batch` images fit in memory."""
    from datasets import get_spec
    from models.registry import check_fits
    check_common(args)
    size = get_spec(args.dataset).size
    for net in (args.net, args.student_net):
        check_fits(net, size)
    check_memory(generator_sizes(args.nz, args.ngf, size, generator_batch))
