"""Speed of IDEAL's phases against bare floors, on whatever device runs it.

    python benchmarks/speed.py                  # MNIST LeNet, B=250, g_steps=30
    python benchmarks/speed.py --json out.json  # also write the figures as JSON
    python benchmarks/speed.py --amp            # bf16 autocast on CUDA, ours and the floors alike

Phases measured with the real functions of ideal.py:
  generate  one generator step of IdealSynthesizer.synthesize() (aug + G + S + loss + Adam step),
            against the floor of a bare forward+backward of S(G(z)) at the same batch;
  label     one black-box call on a batch of B quantised images;
  distill   one distill() pass over pools of 2.5k/12.5k/25k uint8 images (shuffle,
            uint8->float, augmentation, forward, backward, SGD step), against a bare
            forward+backward+SGD-step loop over the same images already in float.
Random weights and random pool images: speed does not depend on what they show.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import get_spec  # noqa: E402
from methods import IdealSynthesizer, distill, frozen, sync  # noqa: E402
from models import Generator, build_model  # noqa: E402
from utils.augment import build_augment  # noqa: E402
from utils.blackbox import BlackBoxTeacher  # noqa: E402
from utils.pool import SyntheticPool, to_float, to_uint8  # noqa: E402
from utils.run import amp_autocast, pick_device, run_cli, to_device  # noqa: E402

SHAPES = {"mnist": (1, 28, 10), "cifar10": (3, 32, 10)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(SHAPES))
    p.add_argument("--net", default="lenet")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--g_steps", type=int, default=30)
    p.add_argument("--nz", type=int, default=256)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--pool_sizes", default="2500,12500,25000")
    p.add_argument("--repeats", type=int, default=3, help="best of N timings")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for every forward pass, ours and the floors' (CUDA only)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args()


def best_times(fns, repeats, device):
    """Fastest of `repeats` timed calls of each function, after one warm-up call
    each (seconds). The functions take turns, so a slow spell of a shared machine
    hits ours and its floor alike instead of skewing their ratio."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def bare_generator_steps(generator, student, z, targets, steps, autocast):
    """Floor: `steps` forward and backward passes of S(G(z)) with nothing else
    (no augmentation, no information loss, no optimizer step)."""
    with frozen(student):
        for _ in range(steps):
            with autocast():
                loss = F.cross_entropy(student(generator(z)), targets)
            loss.backward()
            generator.zero_grad(set_to_none=True)


def bare_distill_pass(student, optimizer, images, labels, batch_size, autocast):
    """Floor: forward+backward+step over float tensors, fixed order, no augmentation."""
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        with autocast():
            loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(args, device, autocast):
    channels, size, classes = SHAPES[args.dataset]
    b = args.batch_size
    student = to_device(build_model(args.net, channels, size, classes), device)
    teacher = BlackBoxTeacher(to_device(build_model(args.net, channels, size, classes), device), autocast=autocast)
    generator = to_device(Generator(args.nz, args.ngf, channels, size), device)
    synthesizer = IdealSynthesizer(generator, args.nz, b, classes, args.g_steps, lr_g=1e-3, lambda_info=5.0,
                                   autocast=autocast)
    rows = []
    z = torch.randn(b, args.nz, device=device)
    targets = torch.arange(b, device=device) % classes

    gen, floor = best_times([lambda: synthesizer.synthesize(student),
                             lambda: bare_generator_steps(generator, student, z, targets, args.g_steps, autocast)],
                            args.repeats, device)
    gen, floor = gen / args.g_steps, floor / args.g_steps
    rows.append(("generator step", b / gen, b / floor))
    x = to_uint8(torch.rand(b, channels, size, size, device=device))
    label, = best_times([lambda: teacher(to_float(x))], args.repeats, device)
    rows.append(("label a batch", b / label, None))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    augment = build_augment(get_spec(args.dataset).label_safe_augment)
    for n in (int(s) for s in args.pool_sizes.split(",")):
        pool = SyntheticPool(n)
        pool.add(to_uint8(torch.rand(n, channels, size, size, device=device)),
                 torch.randint(0, classes, (n,), device=device))
        images, labels = to_float(pool.images), pool.answers
        ours, bare = best_times([lambda: distill(student, optimizer, pool, augment, b, autocast=autocast),
                                 lambda: bare_distill_pass(student, optimizer, images, labels, b, autocast)],
                                args.repeats, device)
        rows.append((f"distill pass, pool {n:,}", n / ours, n / bare))
    return rows


def describe(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def main():
    args = parse_args()
    device = pick_device(args.device)
    autocast = amp_autocast(device, args.amp)
    torch.manual_seed(0)
    rows = measure(args, device, autocast)
    print(f"{args.dataset} {args.net}, B={args.batch_size}, g_steps={args.g_steps}, ngf={args.ngf}, "
          f"{'bf16 autocast' if args.amp else 'float32'}, torch {torch.__version__}, {device}: {describe(device)}\n")
    print("| phase | ours (images/s) | bare floor (images/s) | floor / ours |")
    print("|---|---:|---:|---:|")
    for name, ours, floor in rows:
        ratio = f"{floor / ours:.2f}x" if floor else "-"
        print(f"| {name} | {ours:,.0f} | {f'{floor:,.0f}' if floor else '-'} | {ratio} |")
    result = {"config": vars(args), "device": str(device), "machine": describe(device),
              "torch": torch.__version__,
              "rows": [{"phase": n, "ours_img_s": o, "floor_img_s": f} for n, o, f in rows]}
    print("\n" + json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    run_cli(main)
