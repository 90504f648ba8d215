#!/usr/bin/env bash
# Reproduce the shipped models in models/ (the exact commands behind their manifests).
#   bash scripts/train_models.sh [RUNS_DIR]        (default runs/)
# 2-core CPU: sspu_x4 ~10 min (100 steps of batch 28), sspu_x4_lidar 8 min of fine-tuning.
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

# sspu_x4: light generator, interpolating coordinate head (every output point is a learned
# convex combination of a point and its 3 nearest neighbours), self-supervised on points
# sampled from the 15 object meshes of $DATA/meshes/objects (no PU-GAN shape, no ground
# truth). Paper loss weights 100/30/10/25.
$SSPU train --data "$DATA/meshes/objects" --out "$RUNS/sspu_x4" --steps 100 \
  --set model.preset=light --set model.coord_base=interpolate --set model.offsets=false \
  --set run.checkpoint_every=50 --no-progress
ship "$RUNS/sspu_x4/checkpoint.pt" models/sspu_x4.pt
$SSPU export --model models/sspu_x4.pt --onnx models/sspu_x4.onnx

# sspu_x4_lidar: sspu_x4 fine-tuned (no ground truth) on the node's patches of the first
# 5 scans of the KITTI raw drive, thinned to 16 beams as in the kitti-beams benchmark.
$SSPU kitti2bag "$DATA/kitti/raw_2011_09_26_drive_0001" "$RUNS/kitti_raw_bag"
$SSPU finetune --bag "$RUNS/kitti_raw_bag" --topic /kitti/velo --init models/sspu_x4.pt \
  --out "$RUNS/sspu_x4_lidar" --frames 0:5 --beam-stride 4 --minutes 8 --no-progress
ship "$RUNS/sspu_x4_lidar/checkpoint.pt" models/sspu_x4_lidar.pt
$SSPU export --model models/sspu_x4_lidar.pt --onnx models/sspu_x4_lidar.onnx
