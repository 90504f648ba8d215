"""CPU time (process_time, 1 thread) of upsampling each 2048-point dev shape x4: on an idle
core the wall time of a 1-thread run is about this; median over the 18 dev shapes."""
import sys, time, numpy as np, torch
from pathlib import Path
from sspu_ros.io.cloud_files import read_cloud
from sspu_ros.runtime.loading import load_upsampler
from sspu_ros.evaluation.baselines import mls_upsample
torch.set_num_threads(1)
shapes = [read_cloud(p).xyz for p in sorted(Path("../shared/data/pugan-dev/input").glob("*.xyz"))]
fns = {"mls quadric + fps": mls_upsample}
for backend in ("torch", "onnxruntime"):
    fns[f"{sys.argv[1]} ({backend})"] = load_upsampler(sys.argv[1], 4, backend).upsample
for name, fn in fns.items():
    fn(shapes[0])
    cpu, wall = [], []
    for x in shapes:
        c, w = time.process_time(), time.perf_counter(); fn(x)
        cpu.append(time.process_time() - c); wall.append(time.perf_counter() - w)
    print(f"{name:28s} cpu median {np.median(cpu):.3f} s  wall median {np.median(wall):.3f} s")
