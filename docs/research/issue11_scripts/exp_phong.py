import sys, time, numpy as np
from _score import score
from pathlib import Path
from scipy.spatial import cKDTree
from sspu_ros.io.cloud_files import read_cloud, read_mesh
from sspu_ros.evaluation.metrics import chamfer_hausdorff
from sspu_ros.geometry.mesh_distance import MeshDistance
from sspu_ros.evaluation.baselines import fps_extend, _normalize, _drop_self, _local_frames
D = Path("../shared/data/pugan-dev")
def normals(unit, k=16):
    _, idx = cKDTree(unit).query(unit, k=k)
    _, fr = _local_frames(unit[idx], np.ones(idx.shape)); return fr[:, :, 2]
def run(x, alpha=1.0, k=6, nk=16, sel="fps"):
    pts = x.astype(np.float64); unit, c, rad = _normalize(pts); n = len(unit)
    _, idx = cKDTree(unit).query(unit, k=k+1); nb = _drop_self(idx, k+1)
    nr = normals(unit, nk)
    m = 0.5 * (unit[:, None] + unit[nb])  # (n,k,3)
    pi_i = m - ((m - unit[:, None]) * nr[:, None]).sum(-1, keepdims=True) * nr[:, None]
    nj = nr[nb]
    pi_j = m - ((m - unit[nb]) * nj).sum(-1, keepdims=True) * nj
    ph = 0.5 * (pi_i + pi_j)
    cand = ((1 - alpha) * m + alpha * ph).reshape(-1, 3)
    ch = cand[fps_extend(unit, cand, 3*n)]
    return np.concatenate([pts, ch*rad + c]).astype(np.float32)
methods = {"phong a=1": lambda x: run(x), "phong a=.75": lambda x: run(x, .75), "phong a=.5": lambda x: run(x, .5),
           "phong a=1 nk10": lambda x: run(x, nk=10), "phong a=1 k5": lambda x: run(x, k=5)}
score(methods, D)
