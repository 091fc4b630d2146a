#!/usr/bin/env bash
# Issue 3's GPU run, in one device call of under 8 minutes:
#   1. the Fashion-MNIST rows: Table 4's recipe on Fashion-MNIST (the recipe's 60 epochs) and the
#      best-known BatchNorm recipe, both through `nin reproduce` (results.md);
#   2. a CIFAR-shaped speed check: one epoch of Table 1's recipe (GCN + ZCA, augmentation) on 50,000 random
#      images written in CIFAR-10's real format, and what the recipe's 150 epochs would take.
# Prepare here:  mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
# Device call:   run(command="bash benchmarks/gpu_reproduce.sh 2>&1 | tee $OUT/gpu_reproduce.log", carry=["data"], timeout_s=540)
# Without a GPU: QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_reproduce.sh
source "$(dirname "$0")/gpu_common.sh"
describe_machine
if [ "$QUICK" = 1 ]; then sizes=(--epochs 1 --train-subset 512 --test-subset 256); cifar=200; else sizes=(); cifar=10000; fi

banner "Table 4 on Fashion-MNIST (the stand-in for MNIST)"
timeout 150 $PY -m nin reproduce table4 --dataset fashion-mnist --seeds 1 --device "$DEVICE" "${sizes[@]}" \
    --out "$OUT_DIR/reproduce" || echo "table4: failed or timed out ($?)"
cat "$OUT_DIR/reproduce/results.md" || true

banner "best-known BatchNorm recipe on Fashion-MNIST"
timeout 170 $PY -m nin reproduce fashion-mnist-best-bn --device "$DEVICE" "${sizes[@]}" \
    --out "$OUT_DIR/reproduce-best" || echo "fashion-mnist-best-bn: failed or timed out ($?)"
cat "$OUT_DIR/reproduce-best/results.md" || true

banner "CIFAR-shaped speed check: one epoch of table1-dropout-aug on random CIFAR-10 files"
$PY -c "from pathlib import Path; from throughput import write_cifar10; write_cifar10(Path('$OUT_DIR/cifar'), $cifar)"
started=$(date +%s)
if timeout 120 $PY -m nin reproduce table1-dropout-aug --root "$OUT_DIR/cifar" --epochs 1 --device "$DEVICE" \
        "${sizes[@]}" --out "$OUT_DIR/cifar-run"; then
    $PY - "$OUT_DIR/cifar-run/table1-dropout-aug/seed0/metrics.csv" "$(( $(date +%s) - started ))" <<'PY'
import csv, sys
epoch = float(next(csv.DictReader(open(sys.argv[1])))["seconds"])
total = float(sys.argv[2])
print(f"one training epoch: {epoch:.1f} s; the whole call (start-up, GCN + ZCA fit, evaluation): {total:.0f} s; "
      f"the recipe's 150 epochs: about {(150 * epoch + total - epoch) / 60:.0f} min")
PY
else
    echo "cifar speed check: failed or timed out"
fi
banner "done"
