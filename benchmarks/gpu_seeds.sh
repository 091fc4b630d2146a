#!/usr/bin/env bash
# Issue 11's best recipe on a GPU: its seeds trained side by side, one process each, on the one card (a
# NIN for 28-pixel images leaves most of a large GPU idle, so three runs should take little longer than
# one: not yet measured), in one device call. Each run keeps its checkpoint (the weights to ship) and
# metrics.csv under $OUT; the last lines are a table of the seeds and their mean.
# Prepare here:  mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
# Device call:   run(command="bash benchmarks/gpu_seeds.sh 2>&1 | tee $OUT/gpu_seeds.log", carry=["data"], timeout_s=560)
# Choose first:  SPLIT=val FLAGS="--erase 0.5" bash benchmarks/gpu_seeds.sh   (the validation split; the test
#                split is looked at once, with the flags chosen)
# Without a GPU: QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_seeds.sh
# Settings (environment): RECIPE (fashion-mnist-best-bn), SEEDS ("0 1 2"), SPLIT (test), FLAGS (extra
# nin train flags), LIMIT (seconds each run may take: 500; a run cut off keeps its last epoch's checkpoint,
# and `nin train --resume DIR` continues it).
source "$(dirname "$0")/gpu_common.sh"
describe_machine
RECIPE=${RECIPE:-fashion-mnist-best-bn}
SEEDS=${SEEDS:-0 1 2}
SPLIT=${SPLIT:-test}
FLAGS=${FLAGS:-}
LIMIT=${LIMIT:-500}
if [ "$QUICK" = 1 ]; then sizes=(--epochs 1 --train-subset 512 --test-subset 256); else sizes=(); fi

banner "$RECIPE, seeds $SEEDS side by side, $SPLIT split${FLAGS:+, $FLAGS}"
runs=() pids=()
for seed in $SEEDS; do
    run="$OUT_DIR/seeds/$RECIPE-$SPLIT-seed$seed"
    runs+=("$run")
    mkdir -p "$(dirname "$run")"
    # shellcheck disable=SC2086  # FLAGS holds several words
    timeout "$LIMIT" $PY -m nin train --recipe "$RECIPE" --seed "$seed" --eval-split "$SPLIT" --device "$DEVICE" \
        --no-progress "${sizes[@]}" $FLAGS --out "$run" > "$run.log" 2>&1 &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
for run in "${runs[@]}"; do grep -E "^(epoch|test accuracy|nin: )" "$run.log" | tail -n 2; done
[ "$failed" = 0 ] || echo "$failed run(s) failed or were cut off at ${LIMIT}s: their logs are under $OUT_DIR/seeds"
$PY benchmarks/seeds_table.py "${runs[@]}"
banner "done"
