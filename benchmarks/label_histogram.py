"""How a teacher answers images that are not from its data: the share of each
class in its top-1 answers on uniform noise, on DIP-KD's image priors and on
IDEAL's untrained generator. A baseline that labels such images once can only
teach the classes the teacher names, so this table explains its result.

    python benchmarks/label_histogram.py --dataset=mnist \
        --teachers runs/compare/teachers/mnist_lenet.pt runs/compare/teachers/mnist_resmax.pt2

Every image is asked through the counting black box; the count is printed.
Writes OUT/label_histogram_DATASET.md.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets import DATASETS, get_spec  # noqa: E402
from methods.synthesizers import NoiseSynthesizer, PriorSynthesizer, RandomGeneratorSynthesizer  # noqa: E402
from models import Generator  # noqa: E402
from utils.pool import to_float, to_uint8, top1  # noqa: E402
from utils.run import UserError, pick_device, run_cli, seed_everything, to_device  # noqa: E402
from utils.teacher import load_blackbox_teacher  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--teachers", nargs="+", required=True, help="teacher files (.pt from pretrain.py, or .pt2)")
    p.add_argument("--trust_teacher_code", action="store_true",
                   help="allow .pt2 or TorchScript teachers: loading one can run code the file carries")
    p.add_argument("--images", type=int, default=10_000, help="images per source")
    p.add_argument("--ngf", type=int, default=16,
                   help="the untrained generator's width: 16 is the CPU preset's, "
                        "64 the paper's (ideal_paper, random_generator)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.images < 1:
        raise UserError("--images must be at least 1")
    return args


def sources(spec, n, device, ngf=16):
    """{name: synthesizer} of every zero-query source, each making n images."""
    shape = (spec.channels, spec.size, spec.size)
    generator = to_device(Generator(256, ngf, spec.channels, spec.size), device)
    return {"noise": NoiseSynthesizer(n, shape, device), "prior": PriorSynthesizer(n, shape, device),
            "random_generator": RandomGeneratorSynthesizer(generator, 256, n)}


def shares(teacher, images, classes, batch=1000):
    """% of images the teacher names each class, asked as the pool stores them (uint8)."""
    answers = torch.cat([top1(teacher(to_float(to_uint8(x)))) for x in images.split(batch)])
    return (100.0 * torch.bincount(answers.cpu(), minlength=classes) / len(answers)).tolist()


def main(args):
    device, spec = pick_device(args.device), get_spec(args.dataset)
    seed_everything(args.seed)
    made = {name: s.synthesize(None)[0] for name, s in sources(spec, args.images, device, args.ngf).items()}
    lines = [f"# The teacher's top-1 answers on images not from {args.dataset}", "",
             f"`python benchmarks/label_histogram.py --dataset={args.dataset} --images={args.images} "
             f"--ngf={args.ngf} --seed={args.seed}`; % of images per class; "
             f"{3 * args.images:,} teacher queries per teacher.", "",
             "| teacher | test acc | source | " + " | ".join(map(str, range(spec.classes))) + " | classes over 1% |",
             "|---|---:|---|" + "---:|" * (spec.classes + 1)]
    for path in args.teachers:
        teacher, acc = load_blackbox_teacher(path, args.dataset, None, "hard", 0, device, args.trust_teacher_code)
        for name, images in made.items():
            row = shares(teacher, images, spec.classes)
            lines.append(f"| {os.path.basename(path)} | {acc:.2f} | {name} | "
                         + " | ".join(f"{v:.1f}" for v in row) + f" | {sum(v > 1 for v in row)} |")
        print(f"{path}: {teacher.queries:,} queries")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"label_histogram_{args.dataset}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[4:]) + f"\n-> {out}")


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()))
