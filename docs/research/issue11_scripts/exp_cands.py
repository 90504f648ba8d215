import sys, time, numpy as np
from _score import score
from pathlib import Path
from scipy.spatial import cKDTree
from sspu_ros.io.cloud_files import read_cloud, read_mesh
from sspu_ros.evaluation.metrics import chamfer_hausdorff
from sspu_ros.geometry.mesh_distance import MeshDistance
from sspu_ros.evaluation.baselines import fps_extend, _normalize, _drop_self, mls_quadric_project
D = Path("../shared/data/pugan-dev")
def run(x, kind, k=6, proj=False):
    pts = x.astype(np.float64); unit, c, rad = _normalize(pts); n = len(unit)
    _, idx = cKDTree(unit).query(unit, k=k+1); nb = _drop_self(idx, k+1)
    cands = [0.5 * (unit[:, None] + unit[nb]).reshape(-1, 3)]
    if "cen" in kind:  # centroids of (i, nb_a, nb_b) for consecutive-angle pairs ~ use all pairs a<b among first 4
        for a in range(4):
            for b in range(a+1, 4):
                cands.append((unit + unit[nb[:, a]] + unit[nb[:, b]]) / 3)
    if "third" in kind:
        cands.append((2*unit[:, None] + unit[nb[:, :3]]).reshape(-1, 3) / 3)
    cand = np.concatenate(cands)
    if proj: cand = mls_quadric_project(cand, unit)
    ch = cand[fps_extend(unit, cand, 3*n)]
    return np.concatenate([pts, ch*rad + c]).astype(np.float32)
methods = {"mid6": lambda x: run(x, "mid"), "mid6+cen": lambda x: run(x, "cen"),
           "mid6+third": lambda x: run(x, "third"), "mid6+cen proj": lambda x: run(x, "cen", proj=True),
           "mid5": lambda x: run(x, "mid", k=5), "mid7": lambda x: run(x, "mid", k=7)}
score(methods, D)
