#!/usr/bin/env python3
"""Write the manifest of a shipped model: models/NAME.yaml.

    python scripts/model_manifest.py NAME RUN_DIR --command "..." [--results FILE.json ...]

Reads the run's checkpoint (architecture, ratio, step, training configuration) and its
log; the results are `sspu bench quality ... --json` outputs (one per suite), copied in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
import yaml


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("run", help="training run folder (checkpoint.pt, config.yaml, log.csv)")
    ap.add_argument("--command", action="append", required=True,
                    help="exact command(s) that produced the model, in order")
    ap.add_argument("--results", action="append", default=[],
                    help="JSON output of a benchmark run (sspu bench quality --json)")
    ap.add_argument("--note", default="")
    ap.add_argument("--models", default=str(Path(__file__).resolve().parent.parent / "models"))
    args = ap.parse_args()
    run = Path(args.run)
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = ckpt.get("config") or yaml.safe_load((run / "config.yaml").read_text())
    start = (run / "config.yaml").stat().st_mtime if (run / "config.yaml").exists() else None
    end = (run / "checkpoint.pt").stat().st_mtime
    results = {}
    for path in args.results:
        r = json.loads(Path(path).read_text())
        suite = r.get("suite") or Path(path).stem
        results[suite] = {k: r[k] for k in ("data", "shapes", "frames", "methods")
                          if k in r}
    manifest = {
        "name": args.name,
        "files": {"weights": f"{args.name}.pt", "onnx": f"{args.name}.onnx"},
        "architecture": dict(ckpt["generator"]),
        "ratio": int(ckpt["generator"]["ratio"]),
        "steps": int(ckpt.get("step", 0)),
        "training_config": cfg,
        "commands": args.command,
        "wall_time_s": round(end - start, 1) if start else None,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "gpu": None, "python": sys.version.split()[0],
                    "torch": str(torch.__version__)},
        "note": args.note,
        "results": results,
    }
    out = Path(args.models) / f"{args.name}.yaml"
    out.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
