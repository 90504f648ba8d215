#!/usr/bin/env bash
# Score learned range-image interpolators beside the baselines (issue #10), one thread.
#   scripts/bench_range_interpolator.sh CHECKPOINT[@THRESHOLD] ...
# Prints the kitti-beams table on the five dev object frames and on raw drive 0001 scans
# 5-9 (front region only: no labels), each in ONE run with the baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-$PWD}
[ $# -ge 1 ] || { echo "usage: $0 CHECKPOINT[@THRESHOLD] ..." >&2; exit 2; }
models=()
for m in "$@"; do models+=(--model "range:$m"); done
KITTI=${KITTI:-../shared/data/kitti}
"$PY" -m sspu_ros bench quality --suite kitti-beams --data "$KITTI" "${models[@]}"
"$PY" -m sspu_ros bench quality --suite kitti-beams \
    --data "$KITTI/raw_2011_09_26_drive_0001" --frames 5: "${models[@]}"
