"""The scoring loop the exploration scripts share: every method on every PU-GAN dev input,
CD / HD (guide conventions), P2F on the shapes with a mesh, median seconds."""
import time
from pathlib import Path

import numpy as np

from sspu_ros.evaluation.metrics import chamfer_hausdorff
from sspu_ros.geometry.mesh_distance import MeshDistance
from sspu_ros.io.cloud_files import read_cloud, read_mesh


def score(methods, data=Path("../shared/data/pugan-dev")):
    """``methods``: name -> fn((N, 3) input) -> (rN, 3); prints one line per method."""
    D = data
    res = {m: [[], [], [], []] for m in methods}
    for p in sorted((D/"input").glob("*.xyz")):
        x = read_cloud(p).xyz; g = read_cloud(D/"gt"/p.name).xyz
        mp = D/"meshes"/f"{p.stem}.off"; mesh = MeshDistance(*read_mesh(mp)) if mp.is_file() else None
        for m, f in methods.items():
            t = time.perf_counter(); y = f(x); res[m][3].append(time.perf_counter()-t)
            cd, hd = chamfer_hausdorff(y, g); res[m][0].append(cd); res[m][1].append(hd)
            if mesh is not None: res[m][2].append(mesh(y))
    for m, (cd, hd, p2f, t) in res.items():
        print(f"{m:16s} CD {1e3*np.mean(cd):.3f} HD {1e3*np.mean(hd):.3f} P2F {1e3*np.concatenate(p2f).mean():.3f} t {np.median(t):.3f}")
