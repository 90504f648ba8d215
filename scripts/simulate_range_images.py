#!/usr/bin/env python3
"""Simulated 64-beam range images for pre-training the range interpolator (issue #10).

Writes OUT/sim_NNNN.npy, each a (64, 2048) float32 range image (NaN where empty) of one
ray-cast scan (:func:`sspu_ros.simulation.lidar_sim.simulate_scan`), binned like the
KITTI scans (0.18° azimuth step, ~2000 returns per ring, into 2048 columns). Train on them
with ``scripts/train_range_interpolator.py --mode full64 --scans OUT/*.npy``.

Scenes (``--scenes``, mixed at random per scan):
  street:     a straight street (random width, heading, lateral sensor offset): 15 cm
              kerbs / sidewalks, buildings (the dev meshes and plain boxes) along both sides,
              parked and moving vehicles, trees, lamp posts, poles, barriers, pedestrians;
  vehicles:   :func:`vehicle_scene` (vehicles scattered on open ground);
  procedural: :func:`procedural_scene` (boxes, cylinders, simple cars).
Per scan, at random: sensor height 1.55-1.95 m, range noise 1-3 cm, dropout 0-8 %.
Beam elevations (``--elevations``): ``kitti16`` = the 16 kept beams' elevations of the
KITTI 16-beam input (every 4th HDL-64E ring, upper block ~1.4° apart, lower ~2°) with 3
evenly spaced rows between (what the densifier assumes for its virtual rows) and a
±0.02° jitter; ``even`` = the simulator's HDL-64E default (+2° to -24.8°, 0.43° apart).

    python scripts/simulate_range_images.py --out out/sim64 --count 200
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from sspu_ros.geometry.beams import range_image
from sspu_ros.io.cloud_files import read_mesh
from sspu_ros.simulation.lidar_sim import (
    Scene,
    SceneObject,
    box_mesh,
    cylinder_mesh,
    hdl64_elevations,
    procedural_scene,
    simulate_scan,
    vehicle_scene,
)

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes" / \
    "vehicles_scene"
# Elevations (deg) of the 16 beams the benchmark keeps (rings 0, 4, ..., 60 of a KITTI
# HDL-64E scan; the 16-beam input's own cones, as the densifier fits them at test time).
KITTI16 = np.array([1.94, 0.58, -0.80, -2.21, -3.54, -4.91, -6.33, -7.68, -9.03, -10.96,
                    -13.04, -15.19, -17.19, -19.32, -21.32, -23.32])
VEHICLES = ("car_", "bus", "truck_", "van_")


def kitti16_elevations(rng: np.random.Generator) -> np.ndarray:
    """(64,) elevations: KITTI16 at rows 0, 4, .., 60, linear between, last gap repeated
    below, plus a ±0.02° jitter (still strictly decreasing)."""
    rows = np.arange(64)
    ext = np.append(KITTI16, KITTI16[-1] + (KITTI16[-1] - KITTI16[-2]))
    el = np.interp(rows, np.arange(17) * 4, ext)
    return el + rng.uniform(-0.02, 0.02, 64)


def _obj(name, mesh, x, y, z, yaw):
    return SceneObject(name, mesh[0], mesh[1], np.array([x, y, z]), float(yaw))


def street_scene(rng: np.random.Generator, meshes: dict, ground: float) -> Scene:
    """A street along a random heading (see the module doc); ``ground`` = ground z."""
    names = sorted(meshes)
    veh = [n for n in names if n.startswith(VEHICLES)]
    bld = [n for n in names if n.startswith("building")]
    side = [n for n in names if n.startswith(("tree", "lamp", "stop", "jersey", "pedestrian"))]
    half = rng.uniform(3.5, 9.0)  # road half-width
    off = rng.uniform(-0.6, 0.6) * half  # sensor's lateral offset on the road
    kerb = rng.uniform(0.1, 0.18)
    objs: list[SceneObject] = []
    for s in (-1, 1):
        walk = rng.uniform(1.5, 4.0)
        for x0 in np.arange(-80, 80, 20.0):  # sidewalk slabs (tighter triangles)
            objs.append(_obj("sidewalk", box_mesh((20.0, walk, kerb)), x0 + 10,
                             s * (half + walk / 2), ground, 0.0))
        x = rng.uniform(-80, -60)
        while x < 80:  # buildings
            if rng.random() < 0.4 and bld:
                n = bld[rng.integers(len(bld))]
                m = meshes[n]
                ln = float(np.ptp(m[0][:, 0]))
                yaw = rng.choice([0.0, np.pi]) + rng.normal(0, 0.03)
            else:
                n, ln = "block", rng.uniform(6, 30)
                m = box_mesh((ln, rng.uniform(6, 15), rng.uniform(3, 20)))
                yaw = rng.normal(0, 0.03)
            depth = float(np.ptp(m[0][:, 1]))
            if rng.random() < 0.85:
                objs.append(_obj(n, m, x + ln / 2, s * (half + walk + rng.uniform(0, 6)
                                                       + depth / 2), ground + kerb, yaw))
            x += ln + rng.exponential(3.0)
        for x in np.arange(-60, 60, rng.uniform(5.5, 8.0)):  # parked vehicles
            if rng.random() < 0.55:
                n = veh[rng.integers(len(veh))]
                w = float(np.ptp(meshes[n][0][:, 1]))
                objs.append(_obj(n, meshes[n], x + rng.normal(0, 0.8),
                                 s * (half - w / 2 - rng.uniform(0.1, 0.5)), ground,
                                 rng.choice([0.0, np.pi]) + rng.normal(0, 0.06)))
        for x in np.arange(-60, 60, rng.uniform(6.0, 15.0)):  # street furniture, trees
            if rng.random() < 0.6:
                if rng.random() < 0.3:
                    n, m = "pole", cylinder_mesh(rng.uniform(0.05, 0.2), rng.uniform(2, 6), 12)
                else:
                    n = side[rng.integers(len(side))]
                    m = meshes[n]
                objs.append(_obj(n, m, x + rng.normal(0, 1.0),
                                 s * (half + rng.uniform(0.4, walk)), ground + kerb,
                                 rng.uniform(-np.pi, np.pi)))
    for _ in range(rng.integers(0, 5)):  # traffic in the lanes
        n = veh[rng.integers(len(veh))]
        objs.append(_obj(n, meshes[n], rng.uniform(-50, 50),
                         rng.choice([-1, 1]) * rng.uniform(1.2, max(1.3, half - 2.0)), ground,
                         rng.choice([0.0, np.pi]) + rng.normal(0, 0.05)))
    objs = [o for o in objs if _clear(o, np.array([0.0, off]), 1.5)]
    # Sensor at (0, off): shift the street by -off, then turn it to a random heading.
    heading = rng.uniform(-np.pi, np.pi)
    c, s_ = math.cos(heading), math.sin(heading)
    for o in objs:
        px, py = o.position[0], o.position[1] - off
        o.position = np.array([c * px - s_ * py, s_ * px + c * py, o.position[2]])
        o.yaw += heading
    return Scene(objs, ground_z=ground)


def _clear(o: SceneObject, xy: np.ndarray, margin: float) -> bool:
    """True when the point ``xy`` is more than ``margin`` outside the object's footprint
    box (its own frame): no object over or around the sensor."""
    c, s = math.cos(o.yaw), math.sin(o.yaw)
    d = xy - o.position[:2]
    local = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]])
    lo, hi = o.vertices[:, :2].min(axis=0), o.vertices[:, :2].max(axis=0)
    return bool(np.any(local < lo - margin) or np.any(local > hi + margin))


def _lower(scene: Scene, ground: float) -> Scene:
    """A library scene (built on z = -1.73) moved onto the ground plane z = ground."""
    for o in scene.objects:
        o.position = o.position + [0.0, 0.0, ground - scene.ground_z]
    scene.ground_z = ground
    return scene


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", default="street:0.7,vehicles:0.15,procedural:0.15",
                   help="scene kinds with weights")
    p.add_argument("--elevations", choices=["kitti16", "even"], default="kitti16")
    a = p.parse_args()
    kinds = [(k, float(w)) for k, w in (s.split(":") for s in a.scenes.split(","))]
    prob = np.array([w for _, w in kinds]) / sum(w for _, w in kinds)
    meshes = {f.stem: read_mesh(f) for f in sorted(MESHES.glob("*.ply"))}
    vehicles = {k: v for k, v in meshes.items() if k.startswith(VEHICLES)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(a.count):
        path = out / f"sim_{a.seed:03d}_{i:04d}.npy"
        if path.exists():
            continue
        t0 = time.time()
        rng = np.random.default_rng([a.seed, i])
        ground = -rng.uniform(1.55, 1.95)
        kind = kinds[rng.choice(len(kinds), p=prob)][0]
        seed = int(rng.integers(1 << 31))
        if kind == "street":
            scene = street_scene(rng, meshes, ground)
        elif kind == "vehicles":
            scene = _lower(vehicle_scene(seed, meshes=vehicles,
                                         n_vehicles=int(rng.integers(6, 25))), ground)
        else:
            scene = _lower(procedural_scene(seed, n_objects=int(rng.integers(8, 40))), ground)
        elev = kitti16_elevations(rng) if a.elevations == "kitti16" else hdl64_elevations()
        scan = simulate_scan(scene, elevations_deg=elev, range_noise=rng.uniform(0.01, 0.03),
                             dropout=rng.uniform(0.0, 0.08), seed=seed)
        img = range_image(scan.xyz, scan.ring, 64, 2048).range.astype(np.float32)
        np.save(path, img)
        print(f"{path.name} {kind} {len(scene.objects)} objects, {len(scan)} returns, "
              f"valid {np.isfinite(img).mean():.2f}, {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
