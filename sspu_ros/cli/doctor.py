"""``sspu doctor``: what this installation can do, and the exact fix for what it cannot."""

from __future__ import annotations

import argparse
import ctypes.util
import importlib
import os
import platform
import sys
from collections.abc import Callable

from ..config import data_dir


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None


def run_checks(emit: Callable[[str], None] = print) -> list[str]:
    """Print one line per check; return the list of problems (each with its fix)."""
    problems: list[str] = []

    def check(name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> None:
        mark = "ok  " if ok else ("FAIL" if required else "--  ")
        emit(f"[{mark}] {name}: {detail}" + (f"\n       fix: {fix}" if not ok and fix else ""))
        if not ok and required:
            problems.append(f"{name}: {fix or detail}")

    check("python", sys.version_info >= (3, 10), platform.python_version(),
          "use Python >= 3.10 (3.11 for the ros-* wheels)")
    for mod in ("numpy", "scipy", "yaml", "jsonschema", "rosbags"):
        v = _version(mod)
        check(mod, v is not None, v or "missing", "pip install -e .")
    torch_v = _version("torch")
    if torch_v:
        import torch

        cuda = torch.cuda.is_available()
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
        check("torch", True, f"{torch_v} ({build}; GPU available: {cuda})")
    else:
        check("torch", False, "missing",
              "pip install torch==2.13.0 (CPU) or a CUDA build of your choice, see README")
    rclpy_v = _version("rclpy")
    check("rclpy", rclpy_v is not None,
          f"importable; RMW {os.environ.get('RMW_IMPLEMENTATION', 'default')}" if rclpy_v
          else "missing (needed only for the node)",
          "source /opt/ros/<distro>/setup.bash, or pip install -e '.[ros]'", required=False)
    for mod, why in (("onnxruntime", "ONNX Runtime backend"), ("tensorrt", "TensorRT backend")):
        v = _version(mod)
        check(mod, v is not None, v or f"missing ({why})", required=False)
    if _version("open3d") is None and importlib.util.find_spec("open3d") is not None:
        has_usb = ctypes.util.find_library("usb-1.0") is not None
        check("open3d", False, "installed but fails to import" +
              ("" if has_usb else " (system library libusb-1.0 missing)"),
              "sudo apt-get install -y libusb-1.0-0" if not has_usb else "pip install open3d")
    d = data_dir()
    check("dev data", d.is_dir(), str(d) if d.is_dir() else f"{d} not found (benchmarks and "
          "data tests are skipped)", "clone beside ../shared or set SSPU_DATA", required=False)
    return problems


def cmd_doctor(args: argparse.Namespace) -> int:
    problems = run_checks(print)
    return 1 if problems and args.strict else 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("doctor", help="check the installation (torch, ROS 2, backends, data)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    p.set_defaults(func=cmd_doctor)
