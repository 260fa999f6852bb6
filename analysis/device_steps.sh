#!/usr/bin/env bash
# One step of a lent-GPU session for the cifar10 study (plan and budget: docs/gpu_runbook.md).
# Run from the repository root on the device machine, one step per device call:
#
#   bash analysis/device_steps.sh receive    # copy the carried .transfer/ parts to $WORK/parts
#   bash analysis/device_steps.sh join       # join every part set into $WORK/data (sha256 checked)
#   bash analysis/device_steps.sh train      # train (resumable); checkpoint + metadata -> $OUT/checkpoint
#   bash analysis/device_steps.sh bench      # bench_scores.py fp32 + bf16, b256/b1024, op profiles -> $OUT/bench_*
#   bash analysis/device_steps.sh extract    # extract + benchmark stages (resumable per dataset)
#   bash analysis/device_steps.sh package    # compact cache + tables, split in <= 15 MiB parts -> $OUT/result
#
# $WORK (default /root/ood) survives between calls only while the machine stays warm; everything a
# later session needs leaves through $OUT. PROFILE (default cifar10) and PY (default python3) can be
# overridden, e.g. PROFILE=demo WORK=/tmp/w OUT=/tmp/o bash analysis/device_steps.sh train on a CPU.
set -euo pipefail
step=${1:?usage: device_steps.sh receive|join|train|bench|extract|package}
PROFILE=${PROFILE:-cifar10}
WORK=${WORK:-/root/ood}
PY=${PY:-python3}
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
mkdir -p "$WORK/parts" "$WORK/data" "$OUT"
common=(--profile "$PROFILE" --data-root "$WORK/data" --cache-dir "$WORK/cache" --fig-dir "$WORK/fig")
t0=$(date +%s)

case "$step" in
  receive)
    cp -v .transfer/* "$WORK/parts/"
    ;;
  join)
    for m in "$WORK"/parts/*.parts.json; do "$PY" -m analysis.transfer join "$m" --out "$WORK/data"; done
    ls -la "$WORK/data"
    ;;
  train)
    "$PY" -m analysis.run "${common[@]}" --stages train
    mkdir -p "$OUT/checkpoint"
    cp -v "$WORK/cache/model/model.pt" "$WORK/cache/model/model.pt.json" "$OUT/checkpoint/"
    cp -v "$WORK/cache/logs/train.log" "$OUT/checkpoint/" 2>/dev/null || true
    ;;
  bench)
    ck="$WORK/cache/model/model.pt"
    [ -f "$ck" ] || { echo "no checkpoint at $ck: run the train step first" >&2; exit 2; }
    for dt in fp32 bf16; do
      "$PY" analysis/bench_scores.py --model resnet18_cifar --checkpoint "$ck" --device cuda --dtype "$dt" \
        --batch-size 256,1024 --repeats 5 --warmup 2 --loop-images 64 --profile-ops 15 --out "$OUT/bench_$dt"
    done
    ;;
  extract)
    "$PY" -m analysis.run "${common[@]}" --stages extract benchmark
    mkdir -p "$OUT/logs"
    cp -v "$WORK/cache/analysis/timings.csv" "$WORK/cache/analysis/meta.json" "$OUT/logs/"
    cp -v "$WORK"/cache/logs/*.log "$OUT/logs/" 2>/dev/null || true
    ;;
  package)
    rm -rf "$WORK/result" && mkdir -p "$WORK/result"
    "$PY" -m analysis.compact_cache "$WORK/cache/analysis" "$WORK/result/cache" --max-per-set 2000
    cp -r "$WORK/fig" "$WORK/result/tables"
    tar -C "$WORK" -cf "$WORK/result.tar" result
    "$PY" -m analysis.transfer split "$WORK/result.tar" --out "$OUT/result" --max-mb 15
    ;;
  *)
    echo "unknown step '$step' (receive|join|train|bench|extract|package)" >&2
    exit 2
    ;;
esac
echo "[device_steps] $step done in $(( $(date +%s) - t0 )) s"
