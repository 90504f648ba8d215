#!/usr/bin/env bash
# Reproduce the shipped models in models/ (the exact commands behind their manifests).
#   bash scripts/train_models.sh [RUNS_DIR]        (default runs/)
# 2-core CPU: sspu_x4 ~19 min (200 steps of batch 28, shared cores), sspu_lidar_x4 ~14 min.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
DATA=${SSPU_DATA:-../shared/data}
SSPU=.venv/bin/sspu

ship() {  # checkpoint -> models/NAME.pt without the optimizer state (inference needs only
          # the weights and the architecture)
  .venv/bin/python - "$1" "$2" <<'PY'
import sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
c.pop("optimizer", None)
torch.save(c, sys.argv[2])
PY
}

# sspu_x4: light generator, over-complete interpolating head (issue #11): 7 candidates per
# point (the point and the midpoints to its 6 nearest neighbours, fixed mixing), Phong
# tessellation (0.75) and a learned shift along the local normal (bounded by 0.5 spacing);
# inference keeps the inputs plus farthest point sampling of the candidates. Self-supervised
# on points sampled from the 15 object meshes of $DATA/meshes/objects (no PU-GAN shape, no
# ground truth): paper loss weights 100/30/10/25 plus the zoom-out term (weight 1e5).
$SSPU train --data "$DATA/meshes/objects" --out "$RUNS/sspu_x4" --steps 200 \
  --set model.preset=light --set model.coord_base=interpolate --set model.offsets=false \
  --set model.candidates=7 --set model.normal_shift=0.5 --set model.learn_mix=false \
  --set model.phong=0.75 --set loss.zoom=100000 --set run.checkpoint_every=50 --no-progress
ship "$RUNS/sspu_x4/checkpoint.pt" models/sspu_x4.pt
$SSPU export --model models/sspu_x4.pt --onnx models/sspu_x4.onnx

# sspu_lidar_x4 (issue #10): the range-image beam interpolator, self-supervised from the
# first 5 scans of the KITTI raw drive thinned to 16 beams (thinned again to 8 / 4 beams,
# the dropped 16-beam rows are the targets; no 64-beam row is used for training); 5000
# steps of batch 16 on one thread (~14 min). The emit threshold 0.65 was chosen on those
# same training scans (docs/research/issue10_lidar_range_interpolator.md).
OMP_NUM_THREADS=1 .venv/bin/python scripts/train_range_interpolator.py --steps 5000 \
  --batch 16 --smooth-gate 0.05 --out "$RUNS/sspu_lidar_x4"
.venv/bin/python scripts/strip_range_checkpoint.py "$RUNS/sspu_lidar_x4/checkpoint.pt" \
  models/sspu_lidar_x4.pt --threshold 0.65 \
  --note "largest completeness with front accuracy <= range-image interpolation's on the training scans"
