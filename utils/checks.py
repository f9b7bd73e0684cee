"""Checks every script runs on its flags before any work: numbers finite and
in range, names that are names. Each failure is one UserError line naming the
flag. NaN passes every `x < low` test, so each check is written as what a good
value satisfies (`low <= x`), which NaN never does."""
import math
import os
import re

from utils.run import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]{0,127}")  # run and preset names: no path separator, no ..
SEED_MAX = 2 ** 32 - 1  # numpy's seeds stop here


def check_finite(args, name: str, low=None, high=None, low_open=False, high_open=False) -> None:
    """--name must be a finite number in [low, high] (an open end excludes it)."""
    value = getattr(args, name)
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if not (math.isfinite(value) and above and below):
        raise UserError(f"--{name} must be a finite number {describe(low, high, low_open, high_open)}, not {value}")


def describe(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}" if high is not None else ""


def check_range(args, name: str, low: int, high: int) -> None:
    """--name must be an integer in [low, high]."""
    value = getattr(args, name)
    if not low <= value <= high:
        raise UserError(f"--{name} must be {low} to {high}, not {value}")


def check_seed(args) -> None:
    check_range(args, "seed", 0, SEED_MAX)


def check_name(value: str, flag: str) -> str:
    """A run or preset name is a name, not a path: it never leaves its folder."""
    if not NAME.fullmatch(value or ""):
        raise UserError(f"--{flag} {value!r}: a name of letters, digits and . _ + = , - "
                        "(no / and no leading dot), at most 128 characters")
    return value


def check_save_dir(path: str, flag: str = "save_dir") -> None:
    """A folder the run can write in: an existing folder we may write, or one
    that can be made (its nearest existing parent is a writable folder)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"--{flag} {path}: {probe} is a file, not a folder; choose another --{flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--{flag} {path}: cannot write in {probe}; choose a folder you may write in")


def check_memory(what: str, elements: int, limit: int = 1 << 31) -> None:
    """A tensor of `elements` floats that would not fit in memory is refused
    before torch tries (it raises a traceback, or the machine swaps)."""
    if elements > limit:
        raise UserError(f"{what} needs {elements * 4 / 2 ** 30:.0f} GiB for one tensor; choose smaller sizes")
