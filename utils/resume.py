"""What a resume relies on beyond last.pt: no query that a crash interrupted
goes uncounted, and a resume never silently changes what the run is.

A query is paid when the teacher answers, but last.pt is written only at the
end of an epoch. Two small files in the run folder close that gap:
- queries.json, written before every call to the teacher (write-ahead): the
  count a resume starts from, so no answer is ever paid for without being counted;
- labelled.pt, written as soon as a batch is labelled: its images, answers and
  count, and the RNG state after labelling, so a resume takes up the epoch from
  there instead of asking the teacher again.
The settings of the run travel in last.pt (as nanoGPT's config does); a resume
compares the command line with them, and each resume is recorded in resumes.json.
"""
import datetime
import json
import os

from utils.run import UserError, load_checkpoint, rng_state, save_checkpoint, save_json

QUERIES_FILE, LABELLED_FILE, RESUMES_FILE = "queries.json", "labelled.pt", "resumes.json"


class JournaledTeacher:
    """A black box whose count is written to the run folder before each call.
    A kill during the call can then over-count the batch (if the teacher never
    answered it), but never under-count it. `start`: the count the run has
    already paid (0 for a new run); setting it here is the only place the
    count is ever set from outside the black box."""

    def __init__(self, teacher, run_dir: str, start: int = 0):
        self.teacher, self.path = teacher, os.path.join(run_dir, QUERIES_FILE)
        teacher.queries = start

    @property
    def queries(self) -> int:
        return self.teacher.queries

    @property
    def remaining(self) -> float:
        return self.teacher.remaining

    def __getattr__(self, name):  # everything else (mode, budget, ...) is the black box's own
        return getattr(self.teacher, name)

    def __call__(self, images):
        if len(images) <= self.teacher.remaining:  # a refused batch is never paid
            save_json({"queries": self.teacher.queries + len(images), "asking": len(images)}, self.path)
        return self.teacher(images)


def read_queries_file(run_dir: str) -> dict:
    """queries.json as written by JournaledTeacher ({} if the run never asked);
    a damaged one is refused in one line, since the count is what the run owes."""
    path = os.path.join(run_dir, QUERIES_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            journal = json.load(f)
        int(journal["queries"]), int(journal.get("asking", 0))
    except (OSError, ValueError, TypeError, KeyError):
        raise UserError(f"--resume: {path} is damaged, and it holds the count of queries this run paid for; "
                        'restore it, or write {"queries": N} with N the queries billed so far') from None
    return journal


def paid_queries(run_dir: str) -> int:
    """The write-ahead count of queries.json (0 if the run never asked)."""
    return read_queries_file(run_dir).get("queries", 0)


def settled_queries(run_dir: str) -> int:
    """The write-ahead count less the call it was written for: queries the
    teacher surely answered. The call itself may have died before it was sent."""
    journal = read_queries_file(run_dir)
    return journal.get("queries", 0) - journal.get("asking", 0)


def billed_queries(run_dir: str, provider_run_bill: int) -> int:
    """A remote run's count on resume. The provider's bill for this run id is
    exact when it covers what the run surely paid (the last call billed or not);
    below that, the provider has lost the run (another ledger, another run id),
    and the write-ahead count, the larger, is the count, so the budget holds."""
    if provider_run_bill >= settled_queries(run_dir):
        return provider_run_bill
    return max(provider_run_bill, paid_queries(run_dir))


def save_labelled(run_dir: str, epoch: int, images, answers, g_losses, queries: int,
                  synthesizer=None) -> None:
    """Persist a batch the moment it is labelled. images (B, C, H, W) uint8;
    answers (B,) or (B, classes), or None where relabel mode asks later;
    synthesizer: its state_dict() after making the batch (a warm generator)."""
    save_checkpoint({"epoch": epoch, "images": images, "answers": answers, "g_losses": g_losses,
                     "queries": queries, "rng": rng_state(), "synthesizer": synthesizer},
                    os.path.join(run_dir, LABELLED_FILE))


def load_labelled(run_dir: str, epoch: int, device):
    """The batch labelled in `epoch` by a run killed before last.pt recorded
    that epoch; None if there is none (a stale file belongs to an earlier epoch)."""
    path = os.path.join(run_dir, LABELLED_FILE)
    if not os.path.isfile(path):
        return None
    batch = load_checkpoint(path, device)
    return batch if batch["epoch"] == epoch else None


def saved_settings(ckpt: dict, run_dir: str) -> dict:
    """The run's settings: from last.pt, or from args.json for a run written
    before last.pt carried them."""
    if "config" in ckpt:
        return ckpt["config"]
    with open(os.path.join(run_dir, "args.json")) as f:
        return json.load(f)


def read_run(run_dir: str, device="cpu"):
    """(settings, last.pt) of a run folder of ideal.py, for tools that read a
    finished run without resuming it (its pool, its student)."""
    if not os.path.isfile(os.path.join(run_dir, "args.json")):
        raise UserError(f"{run_dir} is not a run folder of ideal.py (no args.json)")
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
    if not os.path.isfile(os.path.join(run_dir, "summary.json")):
        raise UserError(f"{run_dir} is a run still under way (no summary.json): its last.pt is epoch {ckpt['epoch']}, "
                        "not the run's end; wait for it to finish")
    if ckpt["pool"]["answers"] is None:
        raise UserError(f"{run_dir} cached no teacher answers (--relabel_every_epoch, or an empty pool): "
                        "there is nothing to read without asking the teacher")
    return saved_settings(ckpt, run_dir), ckpt


def as_it_was(key: str, value) -> str:
    """What to type to get `value` back for --key: a switch or a value."""
    if value is True:
        return f"pass --{key}"
    if value is False or value is None:
        return f"leave out --{key}"
    return f"pass --{key}={value}"


def neutral(value) -> bool:
    """The values a setting takes when it is off (before it existed, or after it
    was removed): none, 0, off, the constant schedule, or a count of one (an int:
    a float 1.0 is a real setting)."""
    return value is None or value is False or value == 0 or value == "constant" or (type(value) is int and value == 1)


def refuse_changes(saved: dict, args, defining, before=None) -> None:
    """One line naming the first flag in `defining` whose value differs from the
    run's, and how to continue the run as it was (a default may have moved since).
    A flag the run's settings do not name came after the run began: the run had it
    off, so it may be resumed only with the flag at its neutral value, or at the
    value `before` ({flag: value}) says runs older than the flag had (a flag whose
    default was the old behaviour, as --method=ideal)."""
    before = before or {}
    for key in defining:
        new = getattr(args, key)
        if key not in saved and not neutral(new) and not (key in before and before[key] == new):
            raise UserError(f"--resume: this run began before --{key} existed, so it ran without it; a resume "
                            f"cannot add --{key}={new} (from the command line or a preset): leave it out to "
                            "continue the run as it was, or start a new run")
        if key in saved and saved[key] != new:
            raise UserError(f"--resume: this run has --{key}={saved[key]}, the command line says "
                            f"--{key}={new} (or a default has moved since the run began); a resume cannot "
                            f"change it: {as_it_was(key, saved[key])} to continue the run as it was, or "
                            "start a new run (see the run's args.json)")


def record_resume(run_dir: str, saved: dict, args, **where) -> None:
    """Append this resume to resumes.json: the time, `where` the run stood
    (epoch, queries) and the flags it changed, as {flag: [old, new]}."""
    changed = {k: [saved.get(k), v] for k, v in vars(args).items() if k != "resume" and saved.get(k) != v}
    path = os.path.join(run_dir, RESUMES_FILE)
    history = []
    if os.path.isfile(path):
        try:
            with open(path) as f:
                history = json.load(f)
        except ValueError:
            history = None
        if not isinstance(history, list):  # a record, not a count: kept aside, the run goes on
            os.replace(path, path + ".damaged")
            history = [{"damaged": f"{RESUMES_FILE} could not be read; it is kept as {RESUMES_FILE}.damaged"}]
    history.append({"time": datetime.datetime.now().isoformat(timespec="seconds"), **where, "changed": changed})
    save_json(history, path)
