"""The run machinery that ideal.py and dfme.py share: one object per run.

A Run picks the device, refuses a --resume that would change what the run is
(before any work), seeds the RNGs, owns the run folder and the one query count
(a write-ahead journal around the teacher), writes last.pt / best.pt with the
run's settings inside (as nanoGPT's checkpoints carry their config), restores
them on --resume, and writes args.json, the TensorBoard events and
summary.json. A script keeps only its method: what to build and the loop.
"""
import os
import time

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from utils.resume import (JournaledTeacher, billed_queries, neutral, paid_queries, record_resume, refuse_changes,
                          saved_settings)
from utils.run import (UserError, amp_autocast, load_checkpoint, make_run_dir, pick_device, rng_state, save_args,
                       save_checkpoint, save_json, seed_everything, set_rng_state, single_process)


def refuse_unknown(saved: dict, args) -> None:
    """Refuse a run whose settings name a flag this version no longer has, set
    to anything but its neutral value: resuming it here would silently drop it."""
    for key, value in saved.items():
        if not hasattr(args, key) and key != "threads" and not neutral(value):
            raise UserError(f"--resume: this run was made with --{key}={value}, a setting this version no longer "
                            "has (docs/RESULTS.md, levers removed); resume it with the commit that made it, or start "
                            "a new run")


class Run:
    """kind: the folder kind and script name (SAVE_DIR/KIND/EXP_NAME, KIND.py);
    args: the resolved flags (device, seed, save_dir, exp_name, resume, and
    amp if the script has it); defining: the flags a resume may not change;
    check(args, saved settings, last.pt, queries paid): the script's own
    resume rules, run before any work; before: {flag: value} for flags added
    after some runs began, the value those runs had (see refuse_changes)."""

    def __init__(self, kind: str, args, defining, check=None, before=None):
        single_process(f"{kind}.py")
        self.kind, self.args = kind, args
        self.device = pick_device(args.device)
        self.autocast = amp_autocast(self.device, getattr(args, "amp", False))  # --amp on the CPU: refused here
        self.dir, self.ckpt, self.saved, self.paid, self.writer, self.bar = None, None, None, 0, None, None
        if args.resume:  # a changed run is refused before any work
            self.dir = make_run_dir(args.save_dir, kind, args.exp_name, resume=True)
            self.ckpt = load_checkpoint(os.path.join(self.dir, "last.pt"), self.device)
            self.saved = saved_settings(self.ckpt, self.dir)
            self.paid = max(self.ckpt.pop("queries"), paid_queries(self.dir))  # the write-ahead count covers a kill
            refuse_changes(self.saved, args, defining, before)
            refuse_unknown(self.saved, args)
            if check is not None:
                check(args, self.saved, self.ckpt, self.paid)
        seed_everything(args.seed)

    @property
    def resumed(self) -> bool:
        return self.ckpt is not None

    def journal(self, teacher, at_least: int = 0):
        """The teacher as the run asks it: its count written ahead of every call
        into the run folder (made here for a new run). This is where the count
        is set, once: 0 for a new run; on a resume the larger of last.pt's and
        the journal's (and `at_least`, a batch paid for after last.pt), or for
        a served teacher the provider's bill for this run."""
        self.dir = self.dir or make_run_dir(self.args.save_dir, self.kind, self.args.exp_name, resume=False)
        if hasattr(teacher, "bind_run"):  # served: the same request ids after a resume, never billed twice
            teacher.bind_run(self.dir)
        start = 0
        if self.resumed:
            start = max(self.paid, at_least)
            if hasattr(teacher, "usage"):  # its bill, unless it lost the run: then the journal's count
                start = billed_queries(self.dir, teacher.usage()["run_used"])
        self.teacher = JournaledTeacher(teacher, self.dir, start)
        return self.teacher

    def restore(self, parts: dict, state: dict) -> dict:
        """A new run saves `parts` ({name: object with state_dict()}) at once,
        so a kill in its first epoch does not make it pay again in a new folder;
        a resumed one loads them and the RNGs from last.pt. Then args.json and
        the TensorBoard writer. Returns the run's state (`state`'s keys)."""
        if self.resumed:
            for name, part in parts.items():
                part.load_state_dict(self.ckpt[name])
            set_rng_state(self.ckpt["rng"])
            state = {key: self.ckpt.get(key, value) for key, value in state.items()}
            best = os.path.join(self.dir, "best.pt")
            if os.path.isfile(best):  # written before last.pt: never behind it
                state["best_acc"] = load_checkpoint(best, self.device)["test_acc"]
            record_resume(self.dir, self.saved, self.args, from_epoch=state["epoch"], queries=self.teacher.queries)
        # the run's clock, set here for new and resumed runs alike: loading the teacher and data is not its time
        self.t0 = time.time() - state["wall_s"]
        if not self.resumed:
            self.save(state, parts)
        save_args(self.args, self.dir)
        self.writer = SummaryWriter(self.dir)
        return state

    def save(self, state: dict, parts: dict, best=None) -> None:
        """last.pt: everything a resume needs, the settings included. best, a
        module (the student with the best accuracy so far, selected on the
        evaluation split), goes to best.pt first: a kill between the two files
        leaves best.pt ahead of last.pt, never behind."""
        state["wall_s"] = time.time() - self.t0
        if best is not None:
            save_checkpoint({"student": best.state_dict(), "epoch": state["epoch"], "test_acc": state["final_acc"]},
                            os.path.join(self.dir, "best.pt"))
        ckpt = {name: part.state_dict() for name, part in parts.items()}
        save_checkpoint({**ckpt, "config": vars(self.args), "queries": self.teacher.queries, "rng": rng_state(),
                         **state}, os.path.join(self.dir, "last.pt"))

    def progress(self, state: dict, total: int, key: str = "epoch"):
        """The steps still to run, state[key] + 1 .. total, under a progress bar (self.bar)."""
        self.bar = tqdm(range(state[key] + 1, total + 1), desc=self.kind, initial=state[key], total=total)
        return self.bar

    def finish(self, summary: dict) -> dict:
        """summary.json, and the writer closed."""
        self.writer.close()
        save_json(summary, os.path.join(self.dir, "summary.json"))
        return summary
