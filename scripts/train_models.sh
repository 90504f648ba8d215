#!/usr/bin/env bash
# Reproduce the shipped models in models/ (the exact commands behind their manifests).
#   bash scripts/train_models.sh [RUNS_DIR]        (default runs/)
# 2-core CPU: sspu_x4 ~19 min (200 steps of batch 28, shared cores), sspu_x4_lidar 8 min of
# fine-tuning.
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

# sspu_x4_lidar: the PREVIOUS sspu_x4 (interpolating head, 4 copies; models/sspu_x4.pt of
# commit f228169, before issue #11) fine-tuned (no ground truth) on the node's patches of the
# first 5 scans of the KITTI raw drive, thinned to 16 beams as in the kitti-beams benchmark.
git show f228169:models/sspu_x4.pt > "$RUNS/sspu_x4_before_issue11.pt"
$SSPU kitti2bag "$DATA/kitti/raw_2011_09_26_drive_0001" "$RUNS/kitti_raw_bag"
$SSPU finetune --bag "$RUNS/kitti_raw_bag" --topic /kitti/velo \
  --init "$RUNS/sspu_x4_before_issue11.pt" \
  --out "$RUNS/sspu_x4_lidar" --frames 0:5 --beam-stride 4 --minutes 8 --no-progress
ship "$RUNS/sspu_x4_lidar/checkpoint.pt" models/sspu_x4_lidar.pt
$SSPU export --model models/sspu_x4_lidar.pt --onnx models/sspu_x4_lidar.onnx
