#!/usr/bin/env bash
# Issue 6's GPU check, in one device call of under 8 minutes:
#   1. benchmarks/throughput.py on CUDA: the seed-style loop (a) against nin's path (b), training and inference;
#   2. nin's compiled path (torch.compile + bf16 autocast + channels_last) trains and evaluates;
#   3. Fashion-MNIST time to 94%: nin against the seed's own script in the same time.
# Prepare here:  mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
# Device call:   run(command="bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log", carry=["data"], timeout_s=540)
# Without a GPU: QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
source "$(dirname "$0")/gpu_common.sh"
describe_machine

banner "throughput: (a) seed-style loop vs (b) nin, NIN-CIFAR, batch 128"
if [ "$QUICK" = 1 ]; then sizes=(--rounds 1 --steps 2 --images 500 --workers 0); else sizes=(--rounds 3 --steps 40 --workers 8); fi
timeout 150 $PY benchmarks/throughput.py --device "$DEVICE" "${sizes[@]}" || echo "throughput: failed or timed out ($?)"

banner "compiled path: torch.compile + bf16 autocast + channels_last"
if [ "$QUICK" = 1 ]; then sizes=(--train-subset 256 --test-subset 256); else sizes=(--train-subset 20000); fi
timeout 150 $PY -m nin train --recipe fashion-mnist --epochs 1 --compile --device "$DEVICE" "${sizes[@]}" \
    --no-progress --out "$OUT_DIR/compiled" || echo "compiled path: failed or timed out ($?)"

banner "Fashion-MNIST: time to 94% test accuracy"
if [ "$QUICK" = 1 ]; then sizes=(--quick --workers 0); else sizes=(--epochs 30 --workers 8); fi
timeout 170 $PY benchmarks/time_to_accuracy.py --device "$DEVICE" --target 0.94 --recipe fashion-mnist-best-bn \
    "${sizes[@]}" --out "$OUT_DIR/time-to-94" || echo "time to accuracy: failed or timed out ($?)"
banner "done"
