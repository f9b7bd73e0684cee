"""Where teachers live on disk, and loading one straight into the black box."""
import os

from models import build_model
from utils.blackbox import BlackBoxTeacher
from utils.run import UserError, load_checkpoint, save_checkpoint, to_device


TEACHER_KEYS = {"dataset", "net", "channels", "size", "classes", "test_acc", "state_dict"}


def default_teacher_path(save_dir: str, dataset: str, net: str) -> str:
    """The one place pretrain.py writes, and ideal.py looks for, a teacher."""
    return os.path.join(save_dir, "teachers", f"{dataset}_{net}.pt")


def save_teacher(model, path: str, dataset: str, net: str, shape: tuple, test_acc: float) -> None:
    channels, size, classes = shape
    save_checkpoint({"dataset": dataset, "net": net, "channels": channels, "size": size,
                     "classes": classes, "test_acc": test_acc, "state_dict": model.state_dict()}, path)


def load_blackbox_teacher(path: str, dataset: str, net: str, mode: str, budget: int, device):
    """Build the teacher from its checkpoint and hand it over only inside a
    BlackBoxTeacher, so no caller can reach the network itself.
    Returns (black box, teacher's test accuracy in % as pretrain.py measured it)."""
    if not os.path.isfile(path):
        raise UserError(f"no teacher at {path}; train one first: "
                        f"python pretrain.py --dataset={dataset} --net={net}")
    ckpt = load_checkpoint(path, device)
    if not TEACHER_KEYS <= ckpt.keys():
        raise UserError(f"{path} is not a teacher written by pretrain.py (it lacks "
                        f"{', '.join(sorted(TEACHER_KEYS - ckpt.keys()))}); pass the teacher file, not a run's last.pt")
    if (ckpt.get("dataset"), ckpt.get("net")) != (dataset, net):
        raise UserError(f"teacher {path} is a {ckpt.get('net')} for {ckpt.get('dataset')}, "
                        f"not a {net} for {dataset}; pass the right --teacher_ckpt")
    model = to_device(build_model(net, ckpt["channels"], ckpt["size"], ckpt["classes"]), device)
    model.load_state_dict(ckpt["state_dict"])
    return BlackBoxTeacher(model, mode=mode, budget=budget), ckpt["test_acc"]
