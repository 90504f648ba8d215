#!/usr/bin/env bash
# Paper Table 3 style ablations on the PU-GAN dev inputs (self-supervised: inputs only),
# light preset, the same seed and step count for every variant, then one quality table.
#   bash scripts/ablation.sh [STEPS] [OUT]      (default 150 steps, out/ablation)
# ~4 min per variant on a 2-core CPU at 150 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-150}
OUT=${2:-out/ablation}
DATA=${SSPU_DATA:-../shared/data}/pugan-dev
SSPU=.venv/bin/sspu
common=(--data "$DATA/input" --steps "$STEPS" --no-progress --set model.preset=light
        --set run.log_every=10)
declare -A variants=(
  [full]=""
  [no-sc]="--ablation no-sc"
  [no-ic]="--ablation no-ic"
  [no-neu]="--ablation no-neu"
  [paper-triangles]="--set render.triangle=paper"
)
models=()
for name in full no-sc no-ic no-neu paper-triangles; do
  if [ ! -f "$OUT/$name/checkpoint.pt" ] || \
     [ "$(.venv/bin/python -c "import torch;print(torch.load('$OUT/$name/checkpoint.pt',weights_only=False)['step'])")" != "$STEPS" ]; then
    # shellcheck disable=SC2086
    $SSPU train "${common[@]}" --out "$OUT/$name" ${variants[$name]}
  fi
  models+=(--model "$OUT/$name/checkpoint.pt")
done
$SSPU train "${common[@]}" --out "$OUT/untrained" --steps 0
$SSPU bench quality --data "$DATA" --model "$OUT/untrained/checkpoint.pt" "${models[@]}" \
  | tee "$OUT/quality.txt"
