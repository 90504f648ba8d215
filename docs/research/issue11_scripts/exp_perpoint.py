import sys, time, numpy as np, torch
from _score import score
from pathlib import Path
from sspu_ros.io.cloud_files import read_cloud, read_mesh
from sspu_ros.evaluation.metrics import chamfer_hausdorff
from sspu_ros.geometry.mesh_distance import MeshDistance
from sspu_ros.runtime.patch_inference import upsample_with_patches
from sspu_ros.model.checkpoint import load_generator
torch.set_num_threads(1)
D = Path("../shared/data/pugan-dev")
model, _ = load_generator(sys.argv[1])
def pp(x):
    return upsample_with_patches(x, lambda p: model.upsample(p, "per_point"), 4, keep_input=True)
def fps(x):
    return upsample_with_patches(x, model, 4, keep_input=True, candidates=model.copies)
methods = {"per_point": pp, "fps": fps}
score(methods, D)
