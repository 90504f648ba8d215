#!/usr/bin/env python3
"""Strip a range-interpolator training checkpoint to weights + metadata, set its emit
threshold, and export it to ONNX beside it.

    python scripts/strip_range_checkpoint.py RUN/checkpoint.pt OUT.pt --threshold 0.88 \
        --threshold-no-veto 0.924 --note "..."
"""

from __future__ import annotations

import argparse
import warnings

from sspu_ros.model.range_interpolator import (
    export_range_interpolator,
    load_range_interpolator,
    save_range_interpolator,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--threshold", type=float, required=True,
                   help="emit threshold with the bridge veto on (lidar.veto_bridges, default)")
    p.add_argument("--threshold-no-veto", type=float, default=None,
                   help="emit threshold without the veto (default: --threshold)")
    p.add_argument("--note", default="", help="how the threshold was chosen")
    a = p.parse_args()
    model, ck = load_range_interpolator(a.checkpoint)
    keep = {k: ck[k] for k in ("trained_on", "mode", "train_config", "step") if k in ck}
    no_veto = a.threshold if a.threshold_no_veto is None else a.threshold_no_veto
    save_range_interpolator(a.out, model, threshold=a.threshold, threshold_no_veto=no_veto,
                            threshold_note=a.note,
                            **keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_range_interpolator(model, a.out.rsplit(".", 1)[0] + ".onnx",
                                  threshold=a.threshold, threshold_no_veto=no_veto)
    print(a.out, "step", ck.get("step"), "threshold", a.threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
