"""Helpers shared by the ``sspu`` command modules: the command's parameter set, point
checks, ``--set`` parsing."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..errors import UsageError


def _load_config(args: argparse.Namespace):
    from ..config import load_config

    overrides = {}
    if getattr(args, "model", None) is not None:
        overrides["model"] = args.model
    if getattr(args, "ratio", None) is not None:
        overrides["ratio"] = args.ratio
    if getattr(args, "backend", None) is not None:
        overrides["backend"] = args.backend
    return load_config(getattr(args, "config", None), overrides)


def _finite_points(xyz: np.ndarray, path: str, min_points: int) -> np.ndarray:
    finite = np.isfinite(xyz).all(axis=1)
    n_bad = int((~finite).sum())
    if n_bad:
        print(f"{path}: dropped {n_bad} point(s) with NaN/Inf coordinates", file=sys.stderr)
        xyz = xyz[finite]
    if xyz.shape[0] == 0:
        raise UsageError(f"{path}: the cloud has no (finite) points")
    if xyz.shape[0] < min_points:
        raise UsageError(
            f"{path}: {xyz.shape[0]} point(s) is too few to upsample (need >= {min_points})"
        )
    return xyz


def _parse_sets(items: list[str] | None) -> dict:
    """``--set a.b=VALUE`` pairs; VALUE is read as YAML (numbers, true/false, lists)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_model_arguments(p: argparse.ArgumentParser, *,
                        model_help: str = "upsampler (default: the config's 'model')") -> None:
    """``--model``, ``--ratio``, ``--config``, ``--backend``: which upsampler runs."""
    p.add_argument("--model", help=model_help)
    p.add_argument("--ratio", type=int, help="upsampling ratio (default: config 'ratio')")
    p.add_argument("--config", help="ROS 2 parameter YAML overriding the defaults")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="what runs a trained model (default: config 'backend')")
