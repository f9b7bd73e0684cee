#!/usr/bin/env bash
# The GPU evidence of issue 12, in one call of at most 9 minutes:
#   1. CUDA is visible: print the device (device.txt), or stop with one line;
#   2. benchmarks/speed.py on CUDA, float32 and --amp (bf16 autocast), each against its bare floor,
#      and a 3-epoch MNIST LeNet teacher (pretrain.py), float32 and --amp: does bf16 keep its accuracy?
#   3. the paper-settings rows (--methods=ideal_paper: g_steps 30, ngf 64, B 250) of MNIST and
#      FMNIST through benchmarks/compare.py, seeds two at a time, until the time is up;
#   4. everything under benchmarks/results/gpu_evidence_<device>/, summary.md on top.
#
#   bash scripts/gpu_evidence.sh            # on the GPU machine
#   bash scripts/gpu_evidence.sh --smoke    # the same steps, tiny, on the CPU, well under a minute
#
# It installs nothing and reaches no network: the GPU machine has none. It needs there:
# - Python with torch, torchvision, tensorboard, tqdm, matplotlib and numpy: $PYTHON, by default
#   .venv/bin/python if it runs, else python3. The repo's .venv (5.8 GB) cannot travel in the device
#   tool's 64 MiB carry; the lent GPU machines' python3 holds all of these (torch 2.11 there).
# - data/ with MNIST and Fashion-MNIST ($DATA_DIR); git ignores it, so it must be carried. The
#   four .gz IDX files per dataset are enough: about 40 MB, where data/ holds MNIST's uncompressed
#   (84 MB in all). Copy them gzipped into a carried folder and set DATA_DIR to it.
# - the sweep's teachers, runs/compare/teachers/{mnist,fmnist}_lenet.pt ($TEACHERS, carried too),
#   so the GPU rows are distilled from the same teachers as the CPU rows. Without them compare.py
#   trains new ones first, which eats into the 9 minutes.
# At most 8 files come back from the device tool: end its command with
#   tar czf "$OUT/gpu_evidence.tgz" benchmarks/results/gpu_evidence_*
# Knobs: MINUTES (9), SLOTS (4 jobs side by side on the one GPU: LeNet-sized runs leave it mostly
# idle), SEEDS ("2021 2022 2023 2024 2025 2026"), RESULTS (benchmarks/results), SAVE_DIR (run folders).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; elif [[ $# -gt 0 ]]; then
    echo "usage: bash scripts/gpu_evidence.sh [--smoke]" >&2; exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    if .venv/bin/python -c "" 2>/dev/null; then PYTHON=.venv/bin/python; fi
fi
DATA_DIR=${DATA_DIR:-data}
TEACHERS=${TEACHERS:-runs/compare/teachers}
RESULTS=${RESULTS:-benchmarks/results}
deadline=$((SECONDS + ${MINUTES:-9} * 60 - 45))  # 45 s kept for the final report

if ((smoke)); then
    # tiny nets and budgets on the CPU; the --amp step checks the refusal instead
    device=cpu; SLOTS=${SLOTS:-2}; SEEDS=${SEEDS:-1}; teacher_epochs=1
    speed_flags="--pool_sizes=100 --batch_size=20 --g_steps=2 --ngf=4 --repeats=1"
    compare_flags=(--budgets=20 --batch_size=10 --threads=1 --teacher_epochs=1 "--job_flags=--nz=8 --ngf=4 --g_steps=2")
else
    device=cuda:0; SLOTS=${SLOTS:-4}; SEEDS=${SEEDS:-2021 2022 2023 2024 2025 2026}; teacher_epochs=3
    speed_flags=""
    compare_flags=()
fi

# 1. the device: a name for the results folder (first line), then what device.txt keeps
info=$("$PYTHON" - "$device" <<'EOF'
import platform, re, sys, torch
if sys.argv[1] != "cpu" and not torch.cuda.is_available():
    sys.exit(f"error: {sys.executable} sees no CUDA device; for the CPU dry run use --smoke")
if sys.argv[1] != "cpu":
    p = torch.cuda.get_device_properties(0)
    print(re.sub("[^a-z0-9]+", "_", p.name.lower()).strip("_"))
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"compute capability {p.major}.{p.minor}")
else:
    print("smoke_cpu")
    print(f"device: cpu ({platform.machine()}, smoke mode: not evidence)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
EOF
) || exit 2
slug=$(head -n 1 <<<"$info")
out="$RESULTS/gpu_evidence_$slug"
save_dir=${SAVE_DIR:-runs/gpu_evidence_$slug}
mkdir -p "$out" "$save_dir/teachers"
exec > >(tee "$out/log.txt") 2>&1
echo "== 1. device"
tail -n +2 <<<"$info" | tee "$out/device.txt"

echo "== 2. speed and a teacher, float32 and bf16 autocast (--amp)"
speed() {
    # shellcheck disable=SC2086  # speed_flags is a list of plain words
    "$PYTHON" benchmarks/speed.py --device="$device" $speed_flags "$@"
}
teacher() {  # NAME [FLAGS]: one line with the teacher's test accuracy, one with the wall time
    local start=$SECONDS name=$1; shift
    "$PYTHON" pretrain.py --dataset=mnist --net=lenet --epochs="$teacher_epochs" --device="$device" \
        --data_dir="$DATA_DIR" --save_dir="$save_dir" --exp_name="$name" --teacher_ckpt="$save_dir/$name.pt" \
        --overwrite "$@" | tail -n 1
    echo "$name: $((SECONDS - start)) s wall, start-up included"
}
speed --json "$out/speed_fp32.json" | tee "$out/speed_fp32.md"
teacher teacher_fp32 | tee "$out/teachers.txt"
if ((smoke)); then  # --amp is for CUDA: here it must be refused
    if speed --amp 2>"$out/speed_amp.txt"; then
        echo "error: --amp ran on the CPU instead of being refused" >&2; exit 1
    fi
    grep -q "^error: --amp is bf16 autocast for CUDA" "$out/speed_amp.txt"
    cat "$out/speed_amp.txt"
else
    speed --amp --json "$out/speed_amp.json" | tee "$out/speed_amp.md"
    teacher teacher_amp --amp | tee -a "$out/teachers.txt"
fi

echo "== 3. paper-settings rows, MNIST and FMNIST"
for dataset in mnist fmnist; do  # the sweep's teachers, so GPU and CPU rows share them
    if [[ -f "$TEACHERS/${dataset}_lenet.pt" ]]; then cp "$TEACHERS/${dataset}_lenet.pt" "$save_dir/teachers/"; fi
done
slots=$(printf "$device,%.0s" $(seq "$SLOTS")); slots=${slots%,}
compare=("$PYTHON" benchmarks/compare.py --methods=ideal_paper --datasets=mnist,fmnist --devices="$slots"
         --save_dir="$save_dir" --data_dir="$DATA_DIR" --out="$out/compare" "${compare_flags[@]}")
set -- $SEEDS
done_seeds="" rounds=0
round_s=60  # a round's length, as last measured; a round that cannot finish is not started
while (($#)); do
    pair="$1${2:+,$2}"; shift; if (($#)); then shift; fi
    left=$((deadline - SECONDS))
    if ((left < round_s)); then echo "time is up: seeds $pair and later not run"; break; fi
    start=$SECONDS
    timeout --kill-after=10 "$left" "${compare[@]}" --seeds="$pair" ||
        echo "compare.py stopped (time or a failure) in seeds $pair"
    round_s=$((SECONDS - start))
    done_seeds="${done_seeds:+$done_seeds,}$pair" rounds=$((rounds + 1))
done
# each round reported its own seeds; with more than one, report them all together
if ((rounds > 1)); then "${compare[@]}" --seeds="$done_seeds" --report_only; fi

echo "== 4. summary"
{
    echo "# GPU evidence ($slug), written by scripts/gpu_evidence.sh$( ((smoke)) && echo ' --smoke')"
    echo; cat "$out/device.txt"; echo
    echo "## speed, float32"; sed '/^{/d' "$out/speed_fp32.md"
    if ((smoke)); then echo "## speed, --amp"; cat "$out/speed_amp.txt"; else
        echo "## speed, bf16 autocast (--amp)"; sed '/^{/d' "$out/speed_amp.md"; fi
    echo; echo "## MNIST LeNet teacher, $teacher_epochs epoch(s)"; cat "$out/teachers.txt"
    echo; cat "$out/compare/compare.md" 2>/dev/null || echo "no paper-settings run finished"
} >"$out/summary.md"
cat "$out/summary.md"
echo "everything is in $out"
