#!/usr/bin/env bash
# Install sspu_ros and everything it needs into .venv/ at the repository root.
#
#   bash scripts/setup.sh            # core + ROS 2 Python wheels + dev tools
#
# Environment:
#   PYTHON=python3.11       interpreter used to create .venv (default: python3)
#   SSPU_TORCH=spec         torch requirement installed first (default: torch==2.13.0, the
#                           CPU build on this project's machines). A torch already present
#                           in .venv (e.g. a CUDA build you installed) is kept.
#   SSPU_TORCH_INDEX=url    extra pip index for torch (PyTorch's CPU or CUDA wheel index)
#   SSPU_EXTRAS=ros,dev     pip extras to install (drop 'ros' on a machine with a ROS 2
#                           install: source /opt/ros/<distro>/setup.bash instead)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${SSPU_EXTRAS:-ros,dev}
TORCH_SPEC=${SSPU_TORCH:-torch==2.13.0}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: $PYTHON is missing or older than 3.10; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [[ ",$EXTRAS," == *",ros,"* ]] && \
   ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: the ros-* wheels (rclpy, messages) are built for CPython 3.11; with another" >&2
  echo "       Python, source a ROS 2 install and run SSPU_EXTRAS=dev bash scripts/setup.sh" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel

# torch first, from an explicit spec, so that the package's `torch>=2.2` is already met
# and pip never resolves it to a multi-GB CUDA build by accident.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${SSPU_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install -q "$TORCH_SPEC" --index-url "$SSPU_TORCH_INDEX"
  else
    "${PIP[@]}" install -q "$TORCH_SPEC"
  fi
fi

echo "setup: installing sspu_ros[$EXTRAS] (editable)"
"${PIP[@]}" install -q -e ".[$EXTRAS]"

# System libraries a dependency needs: report the exact command, install it when root.
need_apt=()
if .venv/bin/python -c 'import importlib.util as u; exit(u.find_spec("open3d") is None)'; then
  ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so' || need_apt+=(libusb-1.0-0)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    echo "setup: missing system libraries; run: sudo apt-get install -y ${need_apt[*]}" >&2
  fi
fi

.venv/bin/sspu doctor
echo "setup: done (.venv ready; activate with: source .venv/bin/activate)"
