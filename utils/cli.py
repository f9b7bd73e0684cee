"""The flags every script shares, defined once: which teacher and student,
and where a run lives. Each function adds its flags to an argparse group."""
from datasets import DATASETS
from models import MODELS
from utils.teacher import default_teacher_path


def add_models(group, teacher_help: str = "the teacher's architecture") -> None:
    group.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    group.add_argument("--net", default="lenet", choices=sorted(MODELS), help=teacher_help)
    group.add_argument("--student_net", default=None, choices=sorted(MODELS), help="default: same as --net")


def add_teacher_file(group) -> None:
    group.add_argument("--teacher_ckpt", default=None,
                       help="default: SAVE_DIR/teachers/DATASET_NET.pt from pretrain.py; a torch.export .pt2 or "
                            "TorchScript file needs --trust_teacher_code")
    group.add_argument("--trust_teacher_code", action="store_true",
                       help="allow a .pt2 or TorchScript teacher: loading one can run code the file carries")


def add_run(group, kind: str) -> None:
    """--seed, --data_dir, --save_dir, --exp_name, --device, --resume."""
    group.add_argument("--seed", type=int, default=2021)
    group.add_argument("--data_dir", default="data", help="where the real data is found (or fetched to)")
    group.add_argument("--save_dir", default="runs", help=f"run folders go to SAVE_DIR/{kind}/EXP_NAME")
    group.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET_STUDENT)")
    group.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    group.add_argument("--resume", action="store_true", help=f"continue the run in SAVE_DIR/{kind}/EXP_NAME")


def name_the_run(args) -> None:
    """The defaults that follow from other flags: the student is the teacher's
    architecture, the run folder DATASET_NET_STUDENT, the teacher pretrain.py's."""
    args.student_net = args.student_net or args.net
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}_{args.student_net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
