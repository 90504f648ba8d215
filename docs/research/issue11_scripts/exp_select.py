import sys, time, numpy as np
from _score import score
from pathlib import Path
from scipy.spatial import cKDTree
from sspu_ros.io.cloud_files import read_cloud, read_mesh
from sspu_ros.evaluation.metrics import chamfer_hausdorff
from sspu_ros.geometry.mesh_distance import MeshDistance
from sspu_ros.evaluation.baselines import fps_extend, mls_upsample, _normalize, _drop_self, mls_quadric_project

D = Path("../shared/data/pugan-dev")
def mid_fps(x, k=6, proj=False):
    pts = x.astype(np.float64); unit, c, rad = _normalize(pts); n = len(unit)
    _, idx = cKDTree(unit).query(unit, k=k+1); nb = _drop_self(idx, k+1)
    cand = 0.5 * (unit[:, None] + unit[nb]).reshape(-1, 3)
    if proj: cand = mls_quadric_project(cand, unit)
    ch = cand[fps_extend(unit, cand, 3*n)]
    return np.concatenate([pts, ch*rad + c]).astype(np.float32)

def roundrobin(x, k=6):
    pts = x.astype(np.float64); unit, c, rad = _normalize(pts); n = len(unit)
    _, idx = cKDTree(unit).query(unit, k=k+1); nb = _drop_self(idx, k+1)
    cand = 0.5 * (unit[:, None] + unit[nb])  # (n,k,3)
    flat = cand.reshape(-1, 3)
    d2 = cKDTree(unit).query(flat)[0]**2
    d2 = d2.reshape(n, k)
    out = []
    for t in range(3):
        for i in range(n):
            j = int(d2[i].argmax()); p = cand[i, j]; out.append(p)
            # update: only candidates near p matter; brute force
            dd = ((cand - p)**2).sum(-1); np.minimum(d2, dd, out=d2); d2[i, j] = -1
    ch = np.array(out)
    return np.concatenate([pts, ch*rad + c]).astype(np.float32)

methods = {"mid6+fps": mid_fps, "mid6proj+fps": lambda x: mid_fps(x, proj=True), "mls": mls_upsample,
           "mid4+fps": lambda x: mid_fps(x, k=4), "mid8+fps": lambda x: mid_fps(x, k=8)}
if "rr" in sys.argv: methods["roundrobin6"] = roundrobin
score(methods, D)
