#!/usr/bin/env bash
# Do the speed changes keep results? Runs the MNIST CPU preset with the same
# seeds and the same teacher twice: "before" is commit $BEFORE_REF (default
# 846222b, the last commit before this session's changes) with channels_last
# switched off, so it holds none of the speed changes (channels_last layout,
# fused Adam, gather-based crop); "after" is this checkout. Prints a table of
# accuracy, queries and wall time per run. About 11 minutes a run on 2 CPU cores.
#
#   bash benchmarks/before_after.sh               # seeds 2021 2022
#   SEEDS="1 2 3" bash benchmarks/before_after.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$ROOT/.venv/bin/python
BEFORE_REF=${BEFORE_REF:-846222b}
SEEDS=${SEEDS:-"2021 2022"}
TEACHER=$ROOT/runs/teachers/mnist_lenet.pt
PRESET="--dataset=mnist --net=lenet --epochs=100 --batch_size=250 --g_steps=10 --ngf=16 --lr_g=1e-2"

[ -f "$TEACHER" ] || $PY pretrain.py --dataset=mnist --net=lenet --epochs=3

BEFORE_DIR=$(mktemp -d)/before
git worktree add --detach "$BEFORE_DIR" "$BEFORE_REF" >/dev/null
trap 'git worktree remove --force "$BEFORE_DIR"' EXIT
# The one-line revert of channels_last in the before copy (fused Adam and the
# gather crop did not exist there yet).
sed -i 's/module.to(device, memory_format=torch.channels_last)/module.to(device)/' "$BEFORE_DIR/utils/run.py"
grep -q "return module.to(device)$" "$BEFORE_DIR/utils/run.py"

run() {  # run LABEL DIR SEED
  (cd "$2" && $PY ideal.py $PRESET --seed="$3" --exp_name="before_after_$1_seed$3" \
     --save_dir="$ROOT/runs" --data_dir="$ROOT/data" --teacher_ckpt="$TEACHER")
}
for seed in $SEEDS; do
  run before "$BEFORE_DIR" "$seed"
  run after "$ROOT" "$seed"
done

$PY - "$ROOT/runs/ideal" $SEEDS <<'EOF'
import json, os, sys
root, seeds = sys.argv[1], sys.argv[2:]
print("| code | seed | queries | final acc | best acc | teacher acc | wall s | generate s | distill s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for label in ("before", "after"):
    for seed in seeds:
        with open(os.path.join(root, f"before_after_{label}_seed{seed}", "summary.json")) as f:
            s = json.load(f)
        p = s["phase_s"]
        print(f"| {label} | {seed} | {s['queries']:,} | {s['final_acc']:.2f}% | {s['best_acc']:.2f}% | "
              f"{s['teacher_acc']:.2f}% | {s['wall_s']:.0f} | {p['generate']:.0f} | {p['distill']:.0f} |")
EOF
