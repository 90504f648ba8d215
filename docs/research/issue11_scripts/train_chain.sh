#!/usr/bin/env bash
# train in chunks, keeping a copy of every snapshot: train_chain.sh OUT "STEPS..." EXTRA_SETS...
set -e
OUT=$1; shift; STEPS=$1; shift
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # run from the repository root
first=1
for s in $STEPS; do
  if [ $first = 1 ] && [ ! -f $OUT/checkpoint.pt ]; then R=""; else R="--resume"; fi
  first=0
  .venv/bin/python -m sspu_ros train --data ../shared/data/meshes/objects --out $OUT --steps $s $R --no-progress "$@"
  cp $OUT/checkpoint.pt $OUT/step$s.pt
  date
done
